//! dotkv's QUIC client protocol (ALPN `dotkv-client/1`) as a load target.
//!
//! Each op is one bidirectional stream carrying one request frame (the HTTP
//! request in `dotkv_api`'s envelope) and one answer frame, exactly as
//! `dotkv-client` sends it; it goes through `dotkv-replication`'s
//! [`Transport`], the node's own QUIC stack. A generator connection is one
//! stream at a time, so concurrency is the number of generator connections,
//! as for HTTP and Redis. The streams share a few QUIC connections
//! (`--quic-connections`, each on its own UDP socket): a QUIC client
//! multiplexes its requests over one connection, which is how the protocol is
//! meant to be used, and what `dotkv_client::Client::quic` does.

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use dotkv_api::{QuicRequest, QuicResponse, JSON_CONTENT_TYPE};
use dotkv_replication::{
    load_client_trust, Alpn, CancellationToken, Transport, TransportConfig, TransportError,
};

use super::{answer_of, rest_form, Answer, SingleOp, Target, TargetError};
use crate::workload::Op;

/// dotkv's QUIC API at `addr`.
pub struct QuicTarget {
    addr: SocketAddr,
    server_name: String,
    /// One client endpoint per QUIC connection; each caches its connection
    /// and dials again once it has closed.
    transports: Vec<Transport>,
    next: AtomicUsize,
    /// Longest wait for one answer.
    read_timeout: Duration,
}

impl QuicTarget {
    /// A target whose certificate must be signed by the CA in `ca_pem` and
    /// valid for `server_name`, reached over `connections` QUIC connections
    /// (at least one). Must be called within a Tokio runtime.
    pub fn new(
        addr: SocketAddr,
        server_name: &str,
        ca_pem: &Path,
        connections: usize,
        request_timeout: Duration,
    ) -> Result<QuicTarget, TargetError> {
        let tls = load_client_trust(ca_pem).map_err(|e| {
            TargetError::Unsupported(format!(
                "loading the CA certificate {}: {e}",
                ca_pem.display()
            ))
        })?;
        let config = TransportConfig {
            read_timeout: request_timeout,
            write_timeout: request_timeout,
            close_timeout: Duration::from_millis(100),
            ..TransportConfig::default()
        };
        let transports = (0..connections.max(1))
            .map(|_| {
                Transport::bind(
                    SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
                    &tls,
                    config.clone(),
                    &CancellationToken::new(),
                )
                .map(|(transport, _incoming)| transport)
            })
            .collect::<Result<_, TransportError>>()?;
        Ok(QuicTarget {
            addr,
            server_name: server_name.to_owned(),
            transports,
            next: AtomicUsize::new(0),
            read_timeout: request_timeout,
        })
    }

    /// Close every connection with a CONNECTION_CLOSE, so the node frees
    /// them at once.
    pub async fn close(&self) {
        for t in &self.transports {
            t.shutdown().await;
        }
    }
}

impl Target for QuicTarget {
    type Conn = QuicConnection;

    fn describe(&self) -> String {
        format!(
            "quic://{} ({} QUIC connections)",
            self.addr,
            self.transports.len()
        )
    }

    async fn connect(&self) -> Result<QuicConnection, TargetError> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.transports.len();
        let conn = self.transports[i]
            .connect(self.addr, &self.server_name, Alpn::Client)
            .await?;
        Ok(QuicConnection {
            conn,
            read_timeout: self.read_timeout,
        })
    }
}

/// One stream at a time on a shared QUIC connection.
pub struct QuicConnection {
    conn: dotkv_replication::Connection,
    read_timeout: Duration,
}

impl QuicConnection {
    /// One request on a fresh stream: the answer's status and body.
    pub async fn request(
        &mut self,
        method: &str,
        path_and_query: String,
        body: Option<&[u8]>,
    ) -> Result<(u16, Vec<u8>), TargetError> {
        let envelope = QuicRequest {
            method: method.to_owned(),
            path_and_query,
            token: None,
            authorization: None,
            content_type: body.map(|_| JSON_CONTENT_TYPE.to_owned()),
            body: body.map(<[u8]>::to_vec).unwrap_or_default(),
        };
        let frame = envelope
            .to_frame()
            .map_err(|e| TargetError::Protocol(e.to_string()))?;
        let (mut send, mut recv) = self.conn.open_bi().await?;
        send.send(&frame).await?;
        send.finish()?;
        let answer = recv
            .recv_timeout(self.read_timeout)
            .await?
            .ok_or_else(|| TargetError::Protocol("the stream ended without an answer".into()))?;
        // Read the end of the stream too (it came with the answer), so that
        // dropping the stream sends no STOP_SENDING.
        let _ = recv.recv_timeout(self.read_timeout).await;
        let answer =
            QuicResponse::from_frame(&answer).map_err(|e| TargetError::Protocol(e.to_string()))?;
        Ok((answer.status, answer.body))
    }

    async fn one(&mut self, op: &Op) -> Result<Answer, TargetError> {
        let (method, path, body) = match op {
            // The cheapest request the node answers over QUIC.
            Op::Ping => (hyper::Method::GET, "/health".to_owned(), None),
            op => rest_form(op)?,
        };
        let (status, body) = self.request(method.as_str(), path, body.as_deref()).await?;
        Ok(answer_of(status, &body))
    }
}

impl SingleOp for QuicConnection {
    fn single(&mut self, op: &Op) -> impl Future<Output = Result<Answer, TargetError>> + Send {
        self.one(op)
    }
}
