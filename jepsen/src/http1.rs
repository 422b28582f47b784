//! One HTTP/1.1 request on a fresh connection, keeping every header of the
//! answer.
//!
//! `dotkv-client` gives back a body and the causal token only; the register
//! workload also needs `X-Dotkv-Hlc`, the order key of the write made or the
//! value read. The exchange is deliberately small: `Connection: close`, a
//! JSON body, and the answer read to its `Content-Length`, its chunked end,
//! or the end of the connection.

use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest answer read, headers included: register values are small.
const MAX_ANSWER: usize = 1 << 20;

/// An answer.
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    /// The first header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Why no answer came.
#[derive(Debug)]
pub enum Error {
    /// The connection was refused: the request was certainly not received.
    Refused(String),
    /// Anything else (timeout, reset, an unreadable answer): the request may
    /// have been received.
    Other(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Refused(m) | Error::Other(m) => f.write_str(m),
        }
    }
}

/// Bounds of one exchange.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    pub connect: Duration,
    /// The whole exchange, connecting included.
    pub total: Duration,
}

/// Sends `method path` to the node at `base_url` (`http://host:port`, with an
/// optional path prefix) with the given headers and JSON body, and reads the
/// whole answer.
pub async fn exchange(
    base_url: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
    timeouts: Timeouts,
) -> Result<Answer, Error> {
    let url = format!("{base_url}{path}");
    let rest = base_url
        .strip_prefix("http://")
        .ok_or_else(|| Error::Refused(format!("{url}: only http:// URLs are supported")))?;
    let (authority, prefix) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let run = async {
        let mut stream =
            match tokio::time::timeout(timeouts.connect, TcpStream::connect(authority)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    return Err(Error::Refused(format!(
                        "{method} {url}: Connection refused ({e})"
                    )))
                }
                Ok(Err(e)) => return Err(Error::Other(format!("{method} {url}: connect: {e}"))),
                Err(_) => {
                    return Err(Error::Other(format!(
                        "{method} {url}: connect timed out after {:?}",
                        timeouts.connect
                    )))
                }
            };
        let mut req = format!(
            "{method} {prefix}{path} HTTP/1.1\r\nhost: {authority}\r\nconnection: close\r\naccept: application/json\r\n"
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if let Some(b) = body {
            req.push_str(&format!(
                "content-type: application/json\r\ncontent-length: {}\r\n",
                b.len()
            ));
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body.unwrap_or_default());
        let io = |e: std::io::Error| Error::Other(format!("{method} {url}: {e}"));
        stream.write_all(&bytes).await.map_err(io)?;
        let mut raw = Vec::new();
        (&mut stream)
            .take(MAX_ANSWER as u64 + 1)
            .read_to_end(&mut raw)
            .await
            .map_err(io)?;
        if raw.len() > MAX_ANSWER {
            return Err(Error::Other(format!(
                "{method} {url}: answer over {MAX_ANSWER} bytes"
            )));
        }
        parse(&raw).map_err(|e| Error::Other(format!("{method} {url}: {e}")))
    };
    match tokio::time::timeout(timeouts.total, run).await {
        Ok(r) => r,
        Err(_) => Err(Error::Other(format!(
            "{method} {url}: no answer within {:?}",
            timeouts.total
        ))),
    }
}

/// Parses a whole HTTP/1.1 answer.
fn parse(raw: &[u8]) -> Result<Answer, String> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("the answer ended inside its headers")?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| "headers are not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut answer = Answer {
        status,
        headers,
        body: Vec::new(),
    };
    let rest = &raw[end + 4..];
    answer.body = if answer
        .header("transfer-encoding")
        .is_some_and(|t| t.eq_ignore_ascii_case("chunked"))
    {
        dechunk(rest)?
    } else if let Some(len) = answer.header("content-length") {
        let len: usize = len
            .parse()
            .map_err(|_| format!("bad content-length {len:?}"))?;
        if rest.len() < len {
            return Err(format!(
                "the body ended after {} of {len} bytes",
                rest.len()
            ));
        }
        rest[..len].to_vec()
    } else {
        rest.to_vec()
    };
    Ok(answer)
}

fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let eol = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("a chunk size line was cut short")?;
        let size_text = std::str::from_utf8(&rest[..eol]).map_err(|_| "bad chunk size")?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("bad chunk size {size_text:?}"))?;
        rest = &rest[eol + 2..];
        if size == 0 {
            return Ok(body);
        }
        if rest.len() < size + 2 {
            return Err("a chunk was cut short".into());
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_answers() {
        let a = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-Dotkv-Hlc: 7.0000000000000001\r\n\r\nabcdef")
            .unwrap();
        assert_eq!(a.status, 200);
        assert_eq!(a.body, b"abc");
        assert_eq!(a.header("x-dotkv-hlc"), Some("7.0000000000000001"));
        let a = parse(b"HTTP/1.1 404 Not Found\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2;x\r\nde\r\n0\r\n\r\n")
            .unwrap();
        assert_eq!((a.status, a.body.as_slice()), (404, &b"abcde"[..]));
        let a = parse(b"HTTP/1.1 200 OK\r\n\r\nrest").unwrap();
        assert_eq!(a.body, b"rest");
        assert!(parse(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nabc").is_err());
        assert!(parse(b"HTTP/1.1 200 OK\r\n").is_err());
        assert!(parse(b"garbage\r\n\r\n").is_err());
    }
}
