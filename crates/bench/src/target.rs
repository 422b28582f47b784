//! Targets: how an abstract [`Op`] reaches a server and what its answer means.
//!
//! A [`Target`] opens [`Connection`]s; each connection runs one op at a time
//! (no pipelining), so the load generator controls concurrency exactly through
//! the number of connections. Three targets:
//!
//! - [`HttpTarget`]: one HTTP/1.1 keep-alive connection per [`Connection`],
//!   made with hyper's low-level `client::conn::http1` handshake on a plain
//!   `TcpStream`, with no pool in between, so what is measured is the server
//!   and the wire;
//! - [`quic::QuicTarget`]: dotkv's QUIC client protocol, one stream per op;
//! - [`resp::RedisTarget`]: Redis over RESP, one TCP connection each.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{HeaderValue, CONTENT_TYPE, HOST};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::workload::Op;

pub mod quic;
pub mod resp;

/// What went wrong talking to a target. Any of these leaves the connection
/// unusable, so the generator drops it and connects again.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("HTTP/1.1 handshake with {addr}: {source}")]
    Handshake {
        addr: SocketAddr,
        source: hyper::Error,
    },
    #[error("request failed: {0}")]
    Request(#[from] hyper::Error),
    #[error("the server closed the connection")]
    Closed,
    /// The connection was closed before the request went out: nothing was
    /// sent, so the op can be retried on a new connection as if it had never
    /// been tried.
    #[error("the connection closed before the request was sent")]
    NotSent,
    #[error("building request: {0}")]
    Build(#[from] hyper::http::Error),
    #[error("connection I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("QUIC: {0}")]
    Quic(#[from] dotkv_replication::TransportError),
    /// The server broke the protocol (an unreadable answer).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The op cannot be expressed for this target.
    #[error("{0}")]
    Unsupported(String),
}

/// The target's verdict on one op.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The op succeeded (HTTP 2xx).
    Ok,
    /// The server answered, but with an error (HTTP non-2xx; for Redis, an
    /// error reply as status 0, or a missing key as 404). Counted as an
    /// error, never as a success.
    Rejected { status: u16, detail: String },
}

/// A server to benchmark.
pub trait Target: Send + Sync + 'static {
    type Conn: Connection;
    /// Short description for reports, e.g. `http://127.0.0.1:7700`.
    fn describe(&self) -> String;
    /// Open one connection.
    fn connect(&self) -> impl Future<Output = Result<Self::Conn, TargetError>> + Send;
}

/// One connection to a target, running one op at a time.
pub trait Connection: Send + 'static {
    fn execute(&mut self, op: &Op) -> impl Future<Output = Result<Answer, TargetError>> + Send;
}

/// A connection that runs a target's single requests. Every target runs a
/// read-modify-write the same way: a read, then a write of the whole record,
/// timed as one op.
pub trait SingleOp: Send + 'static {
    /// One request: a read-modify-write never reaches it.
    fn single(&mut self, op: &Op) -> impl Future<Output = Result<Answer, TargetError>> + Send;
}

impl<T: SingleOp> Connection for T {
    async fn execute(&mut self, op: &Op) -> Result<Answer, TargetError> {
        match op {
            Op::ReadModifyWrite { key, value } => {
                let read = self.single(&Op::RegisterGet { key: *key }).await?;
                if read != Answer::Ok {
                    return Ok(read);
                }
                self.single(&Op::RegisterPut {
                    key: *key,
                    value: value.clone(),
                })
                .await
            }
            op => self.single(op).await,
        }
    }
}

/// A TCP connection with Nagle off: requests are small single writes, and
/// none may wait for another.
pub(crate) async fn connect_tcp(addr: SocketAddr) -> Result<TcpStream, TargetError> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|source| TargetError::Connect { addr, source })?;
    stream
        .set_nodelay(true)
        .map_err(|source| TargetError::Connect { addr, source })?;
    Ok(stream)
}

/// dotkv's (or any) HTTP/1.1 JSON API at `addr`.
#[derive(Debug, Clone)]
pub struct HttpTarget {
    addr: SocketAddr,
    host: HeaderValue,
}

impl HttpTarget {
    pub fn new(addr: SocketAddr) -> HttpTarget {
        let host = HeaderValue::from_str(&addr.to_string())
            .expect("a socket address is a valid header value");
        HttpTarget { addr, host }
    }
}

impl Target for HttpTarget {
    type Conn = HttpConnection;

    fn describe(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn connect(&self) -> Result<HttpConnection, TargetError> {
        let addr = self.addr;
        let stream = connect_tcp(addr).await?;
        let (sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|source| TargetError::Handshake { addr, source })?;
        Ok(HttpConnection {
            sender,
            conn: Some(Box::pin(conn)),
            host: self.host.clone(),
        })
    }
}

type Http1Conn = http1::Connection<TokioIo<TcpStream>, Full<Bytes>>;

/// One HTTP/1.1 keep-alive connection.
///
/// hyper splits a connection into a sender and a future that does the I/O.
/// The usual way is to spawn that future as its own task; here it is polled
/// by the task that sends, only while a request is in flight (an idle HTTP/1.1
/// connection needs no polling). That saves two cross-task wake-ups per
/// request, and the generator's CPU is taken from the server it measures.
pub struct HttpConnection {
    sender: SendRequest<Full<Bytes>>,
    /// `None` once the connection has ended (a finished future must not be
    /// polled again).
    conn: Option<Pin<Box<Http1Conn>>>,
    host: HeaderValue,
}

/// Run `work` (a request on `sender`) while driving the connection's I/O.
async fn drive<T>(
    slot: &mut Option<Pin<Box<Http1Conn>>>,
    work: impl Future<Output = Result<T, TargetError>>,
) -> Result<T, TargetError> {
    let Some(conn) = slot.as_mut() else {
        return Err(TargetError::NotSent);
    };
    let mut work = std::pin::pin!(work);
    let ended = tokio::select! {
        biased;
        out = &mut work => return out,
        ended = conn.as_mut() => ended,
    };
    *slot = None;
    // The connection ended (closed by the server, or an I/O error). The whole
    // answer may have arrived just before, or the request may have been
    // handed back unsent; either is already in the request's channel, so one
    // more poll tells.
    match tokio::time::timeout(Duration::ZERO, &mut work).await {
        Ok(out) => out,
        Err(_) => Err(match ended {
            Ok(()) => TargetError::Closed,
            Err(e) => TargetError::Request(e),
        }),
    }
}

/// Send `req` and read the whole answer (the answer is not complete, and the
/// connection not reusable, before the body is read).
async fn round_trip(
    sender: &mut SendRequest<Full<Bytes>>,
    req: Request<Full<Bytes>>,
) -> Result<(hyper::StatusCode, Bytes), TargetError> {
    if sender.ready().await.is_err() {
        return Err(TargetError::NotSent);
    }
    let resp = match sender.try_send_request(req).await {
        Ok(resp) => resp,
        // hyper hands the request back when it never wrote it.
        Err(e) if e.message().is_some() => return Err(TargetError::NotSent),
        Err(e) => return Err(TargetError::Request(e.into_error())),
    };
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

static JSON: HeaderValue = HeaderValue::from_static("application/json");

/// How an op looks in dotkv's API (over HTTP, and in the QUIC envelope):
/// method, path and JSON body. Keys are `bench-{n}` in each type's namespace.
pub(crate) fn rest_form(op: &Op) -> Result<(Method, String, Option<Bytes>), TargetError> {
    Ok(match op {
        Op::Ping => (Method::GET, "/".to_owned(), None),
        Op::CounterAdd { key, delta } => (
            Method::POST,
            format!("/v1/counter/bench-{key}"),
            Some(Bytes::from(format!("{{\"add\":{delta}}}"))),
        ),
        Op::RegisterPut { key, value } => (
            Method::PUT,
            format!("/v1/register/bench-{key}"),
            Some(value.clone()),
        ),
        Op::RegisterGet { key } => (Method::GET, format!("/v1/register/bench-{key}"), None),
        Op::SetAdd { key, element } => {
            let element = serde_json::to_string(element).expect("a string always serializes");
            (
                Method::POST,
                format!("/v1/set/bench-{key}"),
                Some(Bytes::from(format!("{{\"add\":[{element}]}}"))),
            )
        }
        Op::ReadModifyWrite { .. } => {
            return Err(TargetError::Unsupported(
                "a read-modify-write is two requests".into(),
            ))
        }
    })
}

impl HttpConnection {
    /// `GET path` outside any workload (health checks, metrics): the status
    /// code and the body.
    pub async fn get(&mut self, path: &str) -> Result<(u16, Bytes), TargetError> {
        let req = Request::builder()
            .method(Method::GET)
            .uri(path)
            .header(HOST, self.host.clone())
            .body(Full::new(Bytes::new()))?;
        let (status, body) = drive(&mut self.conn, round_trip(&mut self.sender, req)).await?;
        Ok((status.as_u16(), body))
    }

    fn request(&self, op: &Op) -> Result<Request<Full<Bytes>>, TargetError> {
        let (method, path, body) = rest_form(op)?;
        let builder = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, self.host.clone());
        Ok(match body {
            Some(body) => builder
                .header(CONTENT_TYPE, JSON.clone())
                .body(Full::new(body)),
            None => builder.body(Full::new(Bytes::new())),
        }?)
    }

    /// One request, one answer.
    async fn one(&mut self, op: &Op) -> Result<Answer, TargetError> {
        let req = self.request(op)?;
        let (status, body) = drive(&mut self.conn, round_trip(&mut self.sender, req)).await?;
        Ok(answer_of(status.as_u16(), &body))
    }
}

/// The verdict on an answer with an HTTP status (also the QUIC envelope's).
pub fn answer_of(status: u16, body: &[u8]) -> Answer {
    if (200..300).contains(&status) {
        Answer::Ok
    } else {
        let end = body.len().min(200);
        Answer::Rejected {
            status,
            detail: String::from_utf8_lossy(&body[..end]).into_owned(),
        }
    }
}

impl SingleOp for HttpConnection {
    fn single(&mut self, op: &Op) -> impl Future<Output = Result<Answer, TargetError>> + Send {
        self.one(op)
    }
}
