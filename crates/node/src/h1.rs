//! The node's own HTTP/1.1 connection loop, for the plain requests that every
//! workload is made of; hyper serves everything else.
//!
//! Every HTTP connection starts here. A request head is parsed with
//! `httparse`, the parser hyper itself uses, with the same settings. The
//! request is served here when it is plain:
//!
//! - HTTP/1.1, not `CONNECT`;
//! - a head of at most [`MAX_HEAD`] bytes with at most [`MAX_HEADERS`] headers;
//! - no body, or one framed by a single `Content-Length` of at most
//!   [`MAX_BODY`] bytes and at most `limits.max_body_bytes`;
//! - no `Transfer-Encoding`, `Expect` or `Upgrade`.
//!
//! The first request that is not plain (HTTP/2's connection preface,
//! HTTP/1.0, a chunked body, a head hyper would refuse) hands the connection
//! to hyper together with every byte read so far, and hyper serves the rest
//! of the connection. So a malformed request is answered as when hyper
//! serves every connection (`http.direct_http1 = false`): hyper's empty 400,
//! 414 or 431, or the API's 413 for a declared body over the limit, refused
//! before it is read.
//!
//! The service is the same [`Api`] on both paths: routing, the in-flight
//! bound, authentication, the request timeout, metrics and tokens are not
//! repeated here. What this loop saves is most of hyper's connection
//! machinery: a set add over 50 connections took 34,100 instructions in the
//! node rather than 39,200 (callgrind, docs/PERFORMANCE.md).
//!
//! Timing follows hyper's: from the moment the connection waits for a
//! request, the whole head must arrive within `header_timeout`, or the
//! connection is closed without an answer. A head that arrived in time whose
//! body is still missing then goes to hyper, which reads the body within the
//! request timeout. On shutdown a connection that is idle, or still sending
//! a request, is closed at once, and a request being served is answered
//! with `Connection: close`.

use std::cell::RefCell;
use std::io;
use std::ops::Range;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::http::{self, header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use bytes::{Buf, BytesMut};
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;
use tower::Service;

use crate::http::Api;

/// Longest request head served here.
pub const MAX_HEAD: usize = 16 * 1024;
/// Most headers in a request served here (hyper's own bound is 100).
pub const MAX_HEADERS: usize = 32;
/// Longest request body served here.
pub const MAX_BODY: usize = 64 * 1024;
/// What one read asks for at least.
const READ_CHUNK: usize = 8 * 1024;
/// An answer buffer grown past this is not kept between requests.
const KEEP_OUT: usize = 64 * 1024;

/// How a connection served here ended.
pub enum End {
    /// Closed: by the client, after `Connection: close`, on shutdown, or
    /// after `header_timeout` without a whole request head.
    Closed,
    /// hyper serves the rest, starting with the bytes already read.
    HandOff(Rewind),
}

/// Where a header's name and value are in the head.
#[derive(Clone, Default)]
struct Span {
    name: Range<usize>,
    value: Range<usize>,
}

/// A plain request, whole in the buffer.
struct Plain {
    head_len: usize,
    body_len: usize,
    /// The client asked to close after this request.
    close: bool,
    method: Method,
    target: Range<usize>,
    headers: usize,
}

/// What the start of the buffer holds.
enum Found {
    /// Not a whole request yet; `head` when the head is whole and only body
    /// bytes are missing.
    Partial {
        head: bool,
    },
    Plain(Plain),
    /// Anything else, for hyper.
    Other,
}

/// Where `part`, a slice of `base`, starts in it.
fn offset(base: &[u8], part: &[u8]) -> usize {
    part.as_ptr() as usize - base.as_ptr() as usize
}

/// A `Content-Length` value: decimal digits, optional surrounding spaces.
/// Anything else (a sign, a list, an overflow) is left to hyper.
fn content_length(v: &[u8]) -> Option<usize> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0usize, |n, d| n * 10 + usize::from(d - b'0')))
}

/// Read the request at the start of `buf`, noting its headers in `spans`.
fn find(buf: &[u8], body_limit: usize, spans: &mut [Span; MAX_HEADERS]) -> Found {
    if buf.is_empty() {
        return Found::Partial { head: false };
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() <= MAX_HEAD => {
            return Found::Partial { head: false }
        }
        // Too long, too many headers, or not HTTP/1 (HTTP/2's preface).
        _ => return Found::Other,
    };
    let (Some(method), Some(path), Some(1)) = (req.method, req.path, req.version) else {
        return Found::Other;
    };
    if head_len > MAX_HEAD || method == "CONNECT" {
        return Found::Other;
    }
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Found::Other;
    };
    let mut body_len = None;
    let mut close = false;
    for (h, span) in req.headers.iter().zip(spans.iter_mut()) {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            match (body_len, content_length(h.value)) {
                (None, Some(n)) if n <= body_limit => body_len = Some(n),
                // A second length, or one that is not plain digits or is
                // over the limit: hyper decides (400, or 413 unread).
                _ => return Found::Other,
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding")
            || name.eq_ignore_ascii_case(b"expect")
            || name.eq_ignore_ascii_case(b"upgrade")
        {
            return Found::Other;
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in h.value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"upgrade") {
                    return Found::Other;
                }
            }
        }
        let at = offset(buf, name);
        let v = offset(buf, h.value);
        *span = Span {
            name: at..at + name.len(),
            value: v..v + h.value.len(),
        };
    }
    let body_len = body_len.unwrap_or(0);
    if buf.len() - head_len < body_len {
        return Found::Partial { head: true };
    }
    let t = offset(buf, path.as_bytes());
    Found::Plain(Plain {
        head_len,
        body_len,
        close,
        method,
        target: t..t + path.len(),
        headers: req.headers.len(),
    })
}

/// The request `p` as the service takes it; `None` when its target or a
/// header does not parse as `http` types, which hyper then answers.
fn request(
    p: &Plain,
    head: &Bytes,
    body: Bytes,
    spans: &[Span],
) -> Option<http::Request<Full<Bytes>>> {
    let uri = Uri::from_maybe_shared(head.slice(p.target.clone())).ok()?;
    let mut headers = HeaderMap::with_capacity(p.headers);
    for s in &spans[..p.headers] {
        let name = HeaderName::from_bytes(&head[s.name.clone()]).ok()?;
        let value = HeaderValue::from_maybe_shared(head.slice(s.value.clone())).ok()?;
        headers.append(name, value);
    }
    let mut req = http::Request::new(Full::new(body));
    *req.method_mut() = p.method.clone();
    *req.uri_mut() = uri;
    *req.headers_mut() = headers;
    Some(req)
}

/// Serve `stream` until it closes or hyper must take it over.
pub async fn serve(
    mut stream: TcpStream,
    mut api: Api,
    header_timeout: Duration,
    max_body_bytes: usize,
    stop: &mut watch::Receiver<()>,
) -> io::Result<End> {
    let body_limit = max_body_bytes.min(MAX_BODY);
    // A year is as good as never, and keeps the deadline arithmetic far
    // from any overflow.
    let header_timeout = header_timeout.min(Duration::from_secs(365 * 86_400));
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut out = Vec::with_capacity(512);
    let mut spans: [Span; MAX_HEADERS] = Default::default();
    // One timer for the connection's life, moved on lazily: when it fires
    // before the current deadline it is set again, so a request does not
    // arm and disarm a timer of its own.
    let mut deadline = Instant::now() + header_timeout;
    let timer = tokio::time::sleep_until(deadline);
    let mut timer = std::pin::pin!(timer);
    // Likewise one wait for shutdown, rather than one per request (each
    // would join and leave the channel's list of waiters, under its lock).
    let seen = stop.clone();
    let stopped = stop.changed();
    let mut stopped = std::pin::pin!(stopped);
    loop {
        let plain = loop {
            let head = match find(&buf, body_limit, &mut spans) {
                Found::Plain(p) => break p,
                Found::Other => return Ok(End::HandOff(Rewind::new(buf.freeze(), stream))),
                Found::Partial { head } => head,
            };
            if buf.capacity() - buf.len() < READ_CHUNK / 2 {
                buf.reserve(READ_CHUNK);
            }
            tokio::select! {
                biased;
                read = stream.read_buf(&mut buf) => match read? {
                    0 => return Ok(End::Closed),
                    _ => continue,
                },
                _ = timer.as_mut() => {
                    if Instant::now() < deadline {
                        timer.as_mut().reset(deadline);
                    } else if head {
                        // A slow body: hyper reads it within the request
                        // timeout, as when it serves the connection.
                        return Ok(End::HandOff(Rewind::new(buf.freeze(), stream)));
                    } else {
                        return Ok(End::Closed);
                    }
                }
                _ = stopped.as_mut() => return Ok(End::Closed),
            }
        };
        let head = buf.split_to(plain.head_len).freeze();
        let body = buf.split_to(plain.body_len).freeze();
        let Some(req) = request(&plain, &head, body.clone(), &spans) else {
            let mut all = BytesMut::with_capacity(head.len() + body.len() + buf.len());
            all.extend_from_slice(&head);
            all.extend_from_slice(&body);
            all.extend_from_slice(&buf);
            return Ok(End::HandOff(Rewind::new(all.freeze(), stream)));
        };
        drop((head, body));
        // `Api` is always ready (it takes its in-flight bound per request),
        // so it is called without asking.
        let Ok(resp) = api.call(req).await;
        let close = plain.close || seen.has_changed().unwrap_or(true);
        let (parts, body) = resp.into_parts();
        let body = match body.collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                // The API's bodies are whole buffers; this cannot happen
                // short of a bug, and the client sees a closed connection.
                tracing::error!(error = %e, "an HTTP answer's body failed");
                return Ok(End::Closed);
            }
        };
        out.clear();
        answer(&mut out, &parts, &body, plain.method == Method::HEAD, close);
        stream.write_all(&out).await?;
        if close {
            let _ = stream.shutdown().await;
            return Ok(End::Closed);
        }
        if out.capacity() > KEEP_OUT {
            out = Vec::with_capacity(512);
        }
        if buf.is_empty() && buf.capacity() > 2 * READ_CHUNK {
            buf = BytesMut::with_capacity(READ_CHUNK);
        }
        deadline = Instant::now() + header_timeout;
    }
}

/// The answer on the wire: status line, headers, framing and body.
fn answer(out: &mut Vec<u8>, parts: &http::response::Parts, body: &Bytes, head: bool, close: bool) {
    let status = parts.status;
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes());
    out.extend_from_slice(b"\r\n");
    // RFC 9112, section 6.3: these never have a body.
    let bodiless = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let mut length_given = false;
    for (name, value) in &parts.headers {
        if *name == header::CONTENT_LENGTH {
            // A HEAD answer says what GET's length would be; any other
            // answer's length is its body's, written below.
            if !head || bodiless {
                continue;
            }
            length_given = true;
        } else if *name == header::CONNECTION || *name == header::TRANSFER_ENCODING {
            continue;
        }
        header_line(out, name.as_str().as_bytes(), value.as_bytes());
    }
    if !bodiless && !length_given {
        let mut digits = [0u8; 20];
        header_line(out, b"content-length", decimal(body.len(), &mut digits));
    }
    if close {
        header_line(out, b"connection", b"close");
    }
    DATE.with(|d| {
        let mut d = d.borrow_mut();
        header_line(out, b"date", d.now());
    });
    out.extend_from_slice(b"\r\n");
    if !head && !bodiless {
        out.extend_from_slice(body);
    }
}

fn header_line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// `n` in decimal, in the end of `digits`.
fn decimal(mut n: usize, digits: &mut [u8; 20]) -> &[u8] {
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &digits[i..];
        }
    }
}

/// The `Date` header's text (RFC 9110, section 6.6.1), made once a second
/// per thread.
struct Date {
    second: u64,
    text: String,
}

impl Date {
    fn now(&mut self) -> &[u8] {
        let now = SystemTime::now();
        let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if second != self.second || self.text.is_empty() {
            self.second = second;
            self.text = httpdate::fmt_http_date(now);
        }
        self.text.as_bytes()
    }
}

thread_local! {
    static DATE: RefCell<Date> = const {
        RefCell::new(Date {
            second: 0,
            text: String::new(),
        })
    };
}

/// A connection handed to hyper: the bytes already read come first.
pub struct Rewind {
    read: Bytes,
    io: TcpStream,
}

impl Rewind {
    pub fn new(read: Bytes, io: TcpStream) -> Rewind {
        Rewind { read, io }
    }

    /// A connection nothing has been read from.
    pub fn fresh(io: TcpStream) -> Rewind {
        Rewind::new(Bytes::new(), io)
    }
}

impl AsyncRead for Rewind {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.read.is_empty() {
            return Pin::new(&mut self.io).poll_read(cx, buf);
        }
        let n = self.read.len().min(buf.remaining());
        buf.put_slice(&self.read[..n]);
        self.read.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::HttpBody;

    fn found(raw: &[u8], limit: usize) -> Found {
        let mut spans: [Span; MAX_HEADERS] = Default::default();
        find(raw, limit, &mut spans)
    }

    fn plain(raw: &[u8]) -> Plain {
        match found(raw, MAX_BODY) {
            Found::Plain(p) => p,
            Found::Partial { head } => panic!("partial (head whole: {head})"),
            Found::Other => panic!("left to hyper"),
        }
    }

    fn other(raw: &[u8]) -> bool {
        matches!(found(raw, MAX_BODY), Found::Other)
    }

    #[test]
    fn plain_requests_are_found_with_their_bodies() {
        let raw = b"PUT /v1/register/k HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloGET / HTTP/1.1\r\n";
        let p = plain(raw);
        assert_eq!(p.method, Method::PUT);
        assert_eq!(&raw[p.target.clone()], b"/v1/register/k");
        assert_eq!(&raw[p.head_len..p.head_len + p.body_len], b"hello");
        assert_eq!((p.headers, p.close), (2, false));
        let p = plain(b"GET /health HTTP/1.1\r\nConnection: keep-alive, Close\r\n\r\n");
        assert_eq!((p.body_len, p.close), (0, true));
    }

    #[test]
    fn incomplete_requests_wait_and_say_whether_the_head_is_whole() {
        for raw in [
            &b""[..],
            b"GET /health HT",
            b"GET / HTTP/1.1\r\nhost: x\r\n",
        ] {
            assert!(matches!(
                found(raw, MAX_BODY),
                Found::Partial { head: false }
            ));
        }
        let raw = b"POST /v1/batch HTTP/1.1\r\ncontent-length: 10\r\n\r\n12345";
        assert!(matches!(
            found(raw, MAX_BODY),
            Found::Partial { head: true }
        ));
    }

    #[test]
    fn anything_not_plain_is_left_to_hyper() {
        assert!(other(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"));
        assert!(other(b"GET / HTTP/1.0\r\n\r\n"));
        assert!(other(b"CONNECT x:1 HTTP/1.1\r\n\r\n"));
        assert!(other(
            b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n"
        ));
        assert!(other(
            b"POST / HTTP/1.1\r\nexpect: 100-continue\r\ncontent-length: 1\r\n\r\n"
        ));
        assert!(other(b"GET / HTTP/1.1\r\nconnection: upgrade\r\n\r\n"));
        assert!(other(b"GET / HTTP/1.1\r\nupgrade: h2c\r\n\r\n"));
        assert!(other(
            b"POST / HTTP/1.1\r\ncontent-length: 1\r\ncontent-length: 1\r\n\r\nx"
        ));
        assert!(other(b"POST / HTTP/1.1\r\ncontent-length: +1\r\n\r\nx"));
        assert!(other(
            b"POST / HTTP/1.1\r\ncontent-length: 99999999999999999999\r\n\r\n"
        ));
        assert!(other(b"GET / HTTP/1.1\r\nbad header\r\n\r\n"));
        assert!(other(b"GET /\x01 HTTP/1.1\r\n\r\n"));
        // Over the body limit: hyper and the API answer 413 without reading it.
        let raw = b"POST / HTTP/1.1\r\ncontent-length: 11\r\n\r\n";
        assert!(matches!(found(raw, 10), Found::Other));
        // A head that cannot end within the bound, or has too many headers.
        let mut long = b"GET /".to_vec();
        long.resize(MAX_HEAD + 1, b'a');
        assert!(other(&long));
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("x-{i}: {i}\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert!(other(&many));
    }

    #[test]
    fn requests_carry_method_target_and_headers() {
        let raw = b"DELETE /v1/set/a%2Fb?w=all HTTP/1.1\r\nX-Dotkv-Token: abc\r\nhost: h\r\n\r\n";
        let p = plain(raw);
        let mut spans: [Span; MAX_HEADERS] = Default::default();
        let Found::Plain(_) = find(raw, MAX_BODY, &mut spans) else {
            unreachable!()
        };
        let head = Bytes::copy_from_slice(&raw[..p.head_len]);
        let req = request(&p, &head, Bytes::new(), &spans).unwrap();
        assert_eq!(req.method(), Method::DELETE);
        assert_eq!(req.uri().path(), "/v1/set/a%2Fb");
        assert_eq!(req.uri().query(), Some("w=all"));
        assert_eq!(req.headers()["x-dotkv-token"], "abc");
        assert_eq!(req.headers()[header::HOST], "h");
        assert_eq!(req.body().size_hint().exact(), Some(0));
    }

    fn answered(
        status: StatusCode,
        headers: &[(&str, &str)],
        body: &str,
        head: bool,
        close: bool,
    ) -> String {
        let mut resp = http::Response::new(());
        *resp.status_mut() = status;
        for (k, v) in headers {
            resp.headers_mut().insert(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let (parts, ()) = resp.into_parts();
        let mut out = Vec::new();
        answer(
            &mut out,
            &parts,
            &Bytes::copy_from_slice(body.as_bytes()),
            head,
            close,
        );
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn answers_are_framed_by_their_length() {
        let a = answered(
            StatusCode::OK,
            &[("content-type", "application/json")],
            "{}",
            false,
            false,
        );
        assert!(
            a.starts_with(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\ndate: "
            ),
            "{a}"
        );
        assert!(a.ends_with(" GMT\r\n\r\n{}"), "{a}");
        assert!(!a.contains("connection"), "{a}");
        // A stale length is replaced by the body's.
        let a = answered(
            StatusCode::NOT_FOUND,
            &[("content-length", "99")],
            "{}",
            false,
            true,
        );
        assert!(
            a.starts_with("HTTP/1.1 404 Not Found\r\ncontent-length: 2\r\nconnection: close\r\n"),
            "{a}"
        );
        // HEAD: GET's length, no body.
        let a = answered(StatusCode::OK, &[("content-length", "7")], "", true, false);
        assert!(
            a.contains("content-length: 7\r\n") && a.ends_with("\r\n\r\n"),
            "{a}"
        );
        let a = answered(
            StatusCode::NO_CONTENT,
            &[("content-length", "0")],
            "",
            false,
            false,
        );
        assert!(
            !a.contains("content-length") && a.ends_with("\r\n\r\n"),
            "{a}"
        );
    }

    proptest::proptest! {
        /// Whatever the bytes, finding a request neither panics nor names
        /// bytes past the buffer.
        #[test]
        fn any_bytes_are_found_safely(raw in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let mut spans: [Span; MAX_HEADERS] = Default::default();
            if let Found::Plain(p) = find(&raw, MAX_BODY, &mut spans) {
                proptest::prop_assert!(p.head_len + p.body_len <= raw.len());
                proptest::prop_assert!(p.target.end <= p.head_len);
                for s in &spans[..p.headers] {
                    proptest::prop_assert!(s.name.end <= p.head_len && s.value.end <= p.head_len);
                }
            }
        }

        /// A plain request is found whole only once all of it has arrived,
        /// whatever its headers and body, and with the same parts.
        #[test]
        fn requests_cut_anywhere_wait_for_the_rest(
            method in proptest::sample::select(vec!["GET", "PUT", "POST", "DELETE", "HEAD"]),
            path in "/[a-z0-9%/]{0,40}",
            headers in proptest::collection::vec(("x-[a-z]{1,10}", "[ -~]{0,30}"), 0..8),
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..300),
            close in proptest::bool::ANY,
            cut in proptest::num::usize::ANY,
        ) {
            let mut raw = format!("{method} {path} HTTP/1.1\r\nhost: h\r\n");
            for (k, v) in &headers {
                raw.push_str(&format!("{k}: {}\r\n", v.trim()));
            }
            if close {
                raw.push_str("connection: close\r\n");
            }
            raw.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
            let mut raw = raw.into_bytes();
            raw.extend_from_slice(&body);
            let whole = plain(&raw);
            proptest::prop_assert_eq!(whole.head_len + whole.body_len, raw.len());
            proptest::prop_assert_eq!(&raw[whole.target.clone()], path.as_bytes());
            proptest::prop_assert_eq!(whole.close, close);
            proptest::prop_assert_eq!(whole.headers, headers.len() + 2 + usize::from(close));
            let cut = cut % raw.len();
            let found = found(&raw[..cut], MAX_BODY);
            proptest::prop_assert!(
                matches!(found, Found::Partial { head } if head == (cut >= whole.head_len)),
                "cut at {} of {}", cut, raw.len()
            );
        }
    }

    #[test]
    fn decimals() {
        let mut d = [0u8; 20];
        assert_eq!(decimal(0, &mut d), b"0");
        assert_eq!(decimal(1234567, &mut d), b"1234567");
        assert_eq!(
            decimal(usize::MAX, &mut d),
            usize::MAX.to_string().as_bytes()
        );
    }
}
