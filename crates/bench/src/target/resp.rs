//! Redis as a load target: a small RESP2 client over one TCP connection per
//! generator connection, one command in flight (no pipelining, as for the
//! other targets).
//!
//! The ops map to the commands that do the same work: a register is a string
//! (`GET`, `SET`), a counter `INCRBY`, a set `SADD`; a read-modify-write is a
//! `GET` then a `SET`. Each type has its own key prefix (`r:`, `c:`, `s:`),
//! as each has its own namespace in dotkv. A `GET` of a missing key counts as
//! an error, like dotkv's 404: every read of a loaded record must find it.

use std::future::Future;
use std::io::Write as _;
use std::net::SocketAddr;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{connect_tcp, Answer, SingleOp, Target, TargetError};
use crate::workload::Op;

/// Largest bulk string or array this client reads: far above anything the
/// benchmark asks for, and a bound against a corrupt length.
const MAX_BULK: usize = 64 << 20;

/// Redis at `addr`.
#[derive(Debug, Clone)]
pub struct RedisTarget {
    addr: SocketAddr,
}

impl RedisTarget {
    pub fn new(addr: SocketAddr) -> RedisTarget {
        RedisTarget { addr }
    }
}

impl Target for RedisTarget {
    type Conn = RedisConnection;

    fn describe(&self) -> String {
        format!("redis://{}", self.addr)
    }

    async fn connect(&self) -> Result<RedisConnection, TargetError> {
        let addr = self.addr;
        let stream = connect_tcp(addr).await?;
        Ok(RedisConnection {
            stream,
            out: Vec::with_capacity(2048),
            input: BytesMut::with_capacity(4096),
        })
    }
}

/// One RESP reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Simple(String),
    Error(String),
    Integer(i64),
    /// `None` is the null bulk string (a missing key).
    Bulk(Option<Bytes>),
    /// `None` is the null array.
    Array(Option<Vec<Reply>>),
}

/// One connection to Redis.
pub struct RedisConnection {
    stream: TcpStream,
    /// The command being written (reused between commands).
    out: Vec<u8>,
    /// Bytes read and not yet parsed.
    input: BytesMut,
}

impl RedisConnection {
    /// Send one command (its arguments as bulk strings) and read its reply.
    pub async fn command(&mut self, args: &[&[u8]]) -> Result<Reply, TargetError> {
        self.out.clear();
        encode(&mut self.out, args);
        self.send_and_read().await
    }

    async fn send_and_read(&mut self) -> Result<Reply, TargetError> {
        self.stream.write_all(&self.out).await?;
        loop {
            if let Some((reply, used)) = parse(&self.input)? {
                self.input.advance(used);
                return Ok(reply);
            }
            if self.stream.read_buf(&mut self.input).await? == 0 {
                return Err(TargetError::Closed);
            }
        }
    }

    /// Write `op` as its command into `self.out`.
    fn encode_op(&mut self, op: &Op) -> Result<(), TargetError> {
        let out = &mut self.out;
        out.clear();
        let mut key = [0u8; 32];
        match op {
            Op::Ping => encode(out, &[b"PING"]),
            Op::CounterAdd { key: k, delta } => {
                let mut d = [0u8; 24];
                encode(
                    out,
                    &[
                        b"INCRBY",
                        key_name(&mut key, b"c:", *k),
                        num(&mut d, *delta),
                    ],
                )
            }
            Op::RegisterPut { key: k, value } => {
                encode(out, &[b"SET", key_name(&mut key, b"r:", *k), value])
            }
            Op::RegisterGet { key: k } => encode(out, &[b"GET", key_name(&mut key, b"r:", *k)]),
            Op::SetAdd { key: k, element } => encode(
                out,
                &[b"SADD", key_name(&mut key, b"s:", *k), element.as_bytes()],
            ),
            Op::ReadModifyWrite { .. } => {
                return Err(TargetError::Unsupported(
                    "a read-modify-write is two commands".into(),
                ))
            }
        }
        Ok(())
    }

    async fn one(&mut self, op: &Op) -> Result<Answer, TargetError> {
        self.encode_op(op)?;
        let reply = self.send_and_read().await?;
        Ok(match reply {
            Reply::Error(e) => Answer::Rejected {
                status: 0,
                detail: e,
            },
            Reply::Bulk(None) if matches!(op, Op::RegisterGet { .. }) => Answer::Rejected {
                status: 404,
                detail: "GET found no value".into(),
            },
            _ => Answer::Ok,
        })
    }
}

impl SingleOp for RedisConnection {
    fn single(&mut self, op: &Op) -> impl Future<Output = Result<Answer, TargetError>> + Send {
        self.one(op)
    }
}

/// `prefix` then `bench-{n}`, in `buf`.
fn key_name<'a>(buf: &'a mut [u8; 32], prefix: &[u8], n: u64) -> &'a [u8] {
    let mut cursor = std::io::Cursor::new(&mut buf[..]);
    // 2 + 6 + 20 digits fit in 32 bytes.
    let _ = std::io::Write::write_all(&mut cursor, prefix);
    let _ = write!(cursor, "bench-{n}");
    let len = cursor.position() as usize;
    &buf[..len]
}

fn num(buf: &mut [u8; 24], n: i64) -> &[u8] {
    let mut cursor = std::io::Cursor::new(&mut buf[..]);
    let _ = write!(cursor, "{n}");
    let len = cursor.position() as usize;
    &buf[..len]
}

/// A command as a RESP array of bulk strings.
pub fn encode(out: &mut Vec<u8>, args: &[&[u8]]) {
    let _ = write!(out, "*{}\r\n", args.len());
    for a in args {
        let _ = write!(out, "${}\r\n", a.len());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// One reply from the front of `buf`, and the bytes it took; `None` if
/// `buf` does not hold a whole reply yet.
pub fn parse(buf: &[u8]) -> Result<Option<(Reply, usize)>, TargetError> {
    let Some(line_end) = find_crlf(buf) else {
        return Ok(None);
    };
    let Some((&kind, line)) = buf[..line_end].split_first() else {
        return Err(TargetError::Protocol("an empty RESP line".into()));
    };
    let text = || String::from_utf8_lossy(line).into_owned();
    let after = line_end + 2;
    let int = || -> Result<i64, TargetError> {
        std::str::from_utf8(line)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| TargetError::Protocol(format!("bad RESP number {:?}", text())))
    };
    Ok(Some(match kind {
        b'+' => (Reply::Simple(text()), after),
        b'-' => (Reply::Error(text()), after),
        b':' => (Reply::Integer(int()?), after),
        b'$' => {
            let len = int()?;
            if len < 0 {
                return Ok(Some((Reply::Bulk(None), after)));
            }
            let len = len as usize;
            if len > MAX_BULK {
                return Err(TargetError::Protocol(format!(
                    "a bulk string of {len} bytes"
                )));
            }
            if buf.len() < after + len + 2 {
                return Ok(None);
            }
            if &buf[after + len..after + len + 2] != b"\r\n" {
                return Err(TargetError::Protocol(
                    "a bulk string not followed by CRLF".into(),
                ));
            }
            let data = Bytes::copy_from_slice(&buf[after..after + len]);
            (Reply::Bulk(Some(data)), after + len + 2)
        }
        b'*' => {
            let n = int()?;
            if n < 0 {
                return Ok(Some((Reply::Array(None), after)));
            }
            if n as usize > MAX_BULK {
                return Err(TargetError::Protocol(format!("an array of {n} elements")));
            }
            let mut items = Vec::with_capacity((n as usize).min(1024));
            let mut at = after;
            for _ in 0..n {
                match parse(&buf[at..])? {
                    Some((item, used)) => {
                        items.push(item);
                        at += used;
                    }
                    None => return Ok(None),
                }
            }
            (Reply::Array(Some(items)), at)
        }
        other => {
            return Err(TargetError::Protocol(format!(
                "unknown RESP type byte {:?}",
                other as char
            )))
        }
    }))
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_commands_as_bulk_arrays() {
        let mut out = Vec::new();
        encode(&mut out, &[b"SET", b"k", b"hello"]);
        assert_eq!(out, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\n");
    }

    #[test]
    fn parses_every_reply_type() {
        assert_eq!(
            parse(b"+OK\r\n").unwrap(),
            Some((Reply::Simple("OK".into()), 5))
        );
        assert_eq!(
            parse(b"-ERR wrong\r\nrest").unwrap(),
            Some((Reply::Error("ERR wrong".into()), 12))
        );
        assert_eq!(parse(b":-42\r\n").unwrap(), Some((Reply::Integer(-42), 6)));
        assert_eq!(parse(b"$-1\r\n").unwrap(), Some((Reply::Bulk(None), 5)));
        assert_eq!(
            parse(b"$3\r\nabc\r\n").unwrap(),
            Some((Reply::Bulk(Some(Bytes::from_static(b"abc"))), 9))
        );
        assert_eq!(
            parse(b"*2\r\n:1\r\n$1\r\nx\r\n").unwrap(),
            Some((
                Reply::Array(Some(vec![
                    Reply::Integer(1),
                    Reply::Bulk(Some(Bytes::from_static(b"x")))
                ])),
                15
            ))
        );
    }

    #[test]
    fn waits_for_a_whole_reply() {
        for partial in [
            &b""[..],
            b"+OK",
            b"+OK\r",
            b"$3\r\nab",
            b"$3\r\nabc\r",
            b"*2\r\n:1\r\n",
        ] {
            assert_eq!(parse(partial).unwrap(), None, "{partial:?}");
        }
        assert!(parse(b"?x\r\n").is_err());
        assert!(parse(b"$3\r\nabcd\r\n").is_err());
    }

    #[test]
    fn key_names_carry_the_type_prefix() {
        let mut buf = [0u8; 32];
        assert_eq!(key_name(&mut buf, b"c:", 17), b"c:bench-17");
        assert_eq!(
            key_name(&mut buf, b"r:", u64::MAX),
            b"r:bench-18446744073709551615"
        );
        let mut d = [0u8; 24];
        assert_eq!(num(&mut d, i64::MIN), b"-9223372036854775808");
    }
}
