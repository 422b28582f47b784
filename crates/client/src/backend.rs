//! The two ways a [`Client`](crate::Client) carries a request to a node:
//! HTTP/1.1 over pooled TCP connections, or the QUIC client protocol (ALPN
//! `dotkv-client/1`: one bidirectional stream per request, the request and
//! its answer each one frame, see `dotkv_api::quic`). Both take the same
//! [`RawRequest`] and give back the same [`RawAnswer`], so every typed
//! operation of the client works over either and is written once.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use dotkv_api::{QuicRequest, QuicResponse, JSON_CONTENT_TYPE, TOKEN_HEADER};
use dotkv_replication::{Alpn, CancellationToken, NodeTls, Transport, TransportConfig};
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method, Request};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HttpClient;
use tokio::sync::OnceCell;

use crate::error::error_chain;

/// A request, ready to go: header values already checked.
pub(crate) struct RawRequest<'a> {
    pub method: Method,
    /// Path and query, from the leading `/`, percent-encoded.
    pub path: &'a str,
    /// A JSON body.
    pub body: Option<Bytes>,
    /// `X-Dotkv-Token`.
    pub token: Option<HeaderValue>,
    /// `Authorization: Bearer ...`.
    pub auth: Option<&'a HeaderValue>,
}

/// What came back, before decoding.
pub(crate) struct RawAnswer {
    pub status: u16,
    pub token: Option<String>,
    pub body: Bytes,
}

/// Why a request got no answer.
pub(crate) enum ExchangeError {
    /// The request cannot be expressed on this transport.
    Invalid(String),
    /// The connection could not be made or broke; a message for people.
    Transport(String),
}

pub(crate) enum Backend {
    Http(HttpBackend),
    Quic(QuicBackend),
}

impl Backend {
    /// Sends one request and reads its whole answer (at most `max_body`
    /// bytes of body). `wait` is the most the answer may take; the caller
    /// also bounds the whole exchange by it.
    pub async fn exchange(
        &self,
        request: RawRequest<'_>,
        wait: Duration,
        max_body: usize,
    ) -> Result<RawAnswer, ExchangeError> {
        match self {
            Backend::Http(http) => http.exchange(request, max_body).await,
            Backend::Quic(quic) => quic.exchange(request, wait, max_body).await,
        }
    }

    pub async fn close(&self) {
        if let Backend::Quic(quic) = self {
            quic.close().await;
        }
    }
}

/// HTTP/1.1 with a keep-alive connection pool.
pub(crate) struct HttpBackend {
    pub http: HttpClient<HttpConnector, Full<Bytes>>,
    /// `http://authority[/prefix]`, no trailing slash.
    pub base: String,
}

impl HttpBackend {
    async fn exchange(
        &self,
        request: RawRequest<'_>,
        max_body: usize,
    ) -> Result<RawAnswer, ExchangeError> {
        let url = format!("{}{}", self.base, request.path);
        let mut builder = Request::builder()
            .method(request.method)
            .uri(&url)
            .header(ACCEPT, JSON_CONTENT_TYPE);
        if let Some(auth) = request.auth {
            builder = builder.header(AUTHORIZATION, auth.clone());
        }
        if let Some(token) = request.token {
            builder = builder.header(TOKEN_HEADER, token);
        }
        if request.body.is_some() {
            builder = builder.header(CONTENT_TYPE, JSON_CONTENT_TYPE);
        }
        let request = builder
            .body(Full::new(request.body.unwrap_or_default()))
            .map_err(|e| ExchangeError::Invalid(format!("cannot build request to {url}: {e}")))?;
        let transport = |message: String| ExchangeError::Transport(message);
        let response = self
            .http
            .request(request)
            .await
            .map_err(|e| transport(error_chain(&e)))?;
        let status = response.status().as_u16();
        let token = response
            .headers()
            .get(TOKEN_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = Limited::new(response.into_body(), max_body)
            .collect()
            .await
            .map_err(|e| {
                transport(if e.is::<http_body_util::LengthLimitError>() {
                    format!("answer body is larger than {max_body} bytes")
                } else {
                    format!("reading the answer body: {}", error_chain(e.as_ref()))
                })
            })?
            .to_bytes();
        Ok(RawAnswer {
            status,
            token,
            body,
        })
    }
}

/// The QUIC client protocol, over one cached connection (dialled again
/// after it closes).
pub(crate) struct QuicBackend {
    addr: SocketAddr,
    server_name: String,
    tls: NodeTls,
    config: TransportConfig,
    /// Bound on first use, so that building a client needs no runtime.
    transport: OnceCell<Transport>,
}

/// Room for the envelope around an answer body (status, token, media type).
const ENVELOPE_SLACK: usize = 64 * 1024;

impl QuicBackend {
    pub fn new(
        addr: SocketAddr,
        server_name: String,
        tls: NodeTls,
        timeout: Duration,
        connect_timeout: Duration,
        max_body: usize,
    ) -> QuicBackend {
        let max_frame_size =
            u32::try_from(max_body.saturating_add(ENVELOPE_SLACK)).unwrap_or(u32::MAX);
        let config = TransportConfig {
            max_frame_size,
            read_timeout: timeout,
            write_timeout: timeout,
            connect_timeout: connect_timeout.min(timeout),
            // Closing sends CONNECTION_CLOSE at once; the rest of the wait is
            // QUIC's draining period (three probe timeouts, ~80 ms even on
            // loopback), which a client that is about to exit need not sit
            // through. A close lost in this window costs the node one idle
            // timeout, nothing more.
            close_timeout: Duration::from_millis(20),
            ..TransportConfig::default()
        };
        QuicBackend {
            addr,
            server_name,
            tls,
            config,
            transport: OnceCell::new(),
        }
    }

    async fn transport(&self) -> Result<&Transport, ExchangeError> {
        self.transport
            .get_or_try_init(|| async {
                // A client-only endpoint on an ephemeral port of the
                // server's address family.
                let local = if self.addr.is_ipv4() {
                    SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))
                } else {
                    SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0))
                };
                let (transport, _incoming) = Transport::bind(
                    local,
                    &self.tls,
                    self.config.clone(),
                    &CancellationToken::new(),
                )?;
                Ok(transport)
            })
            .await
            .map_err(|e: dotkv_replication::TransportError| {
                ExchangeError::Transport(error_chain(&e))
            })
    }

    async fn exchange(
        &self,
        request: RawRequest<'_>,
        wait: Duration,
        max_body: usize,
    ) -> Result<RawAnswer, ExchangeError> {
        let text = |v: &HeaderValue| v.to_str().map(str::to_owned);
        let envelope = QuicRequest {
            method: request.method.to_string(),
            path_and_query: request.path.to_owned(),
            token: request
                .token
                .as_ref()
                .map(text)
                .transpose()
                .map_err(|_| ExchangeError::Invalid("the causal token is not ASCII".into()))?,
            authorization: request
                .auth
                .map(text)
                .transpose()
                .map_err(|_| ExchangeError::Invalid("the bearer token is not ASCII".into()))?,
            content_type: request.body.is_some().then(|| JSON_CONTENT_TYPE.to_owned()),
            body: request.body.map(Vec::from).unwrap_or_default(),
        };
        let frame = envelope
            .to_frame()
            .map_err(|e| ExchangeError::Invalid(e.to_string()))?;

        let transport =
            |e: dotkv_replication::TransportError| ExchangeError::Transport(error_chain(&e));
        let conn = self
            .transport()
            .await?
            .connect(self.addr, &self.server_name, Alpn::Client)
            .await
            .map_err(transport)?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(transport)?;
        send.send(&frame).await.map_err(transport)?;
        send.finish().map_err(transport)?;
        let answer = recv
            .recv_timeout(wait)
            .await
            .map_err(transport)?
            .ok_or_else(|| {
                ExchangeError::Transport(format!(
                    "{} closed the stream without answering",
                    self.addr
                ))
            })?;
        let answer = QuicResponse::from_frame(&answer)
            .map_err(|e| ExchangeError::Transport(e.to_string()))?;
        if answer.body.len() > max_body {
            return Err(ExchangeError::Transport(format!(
                "answer body is larger than {max_body} bytes"
            )));
        }
        Ok(RawAnswer {
            status: answer.status,
            token: answer.token,
            body: Bytes::from(answer.body),
        })
    }

    /// Closes the connection with a CONNECTION_CLOSE, so the node frees it
    /// at once rather than after its idle timeout.
    async fn close(&self) {
        if let Some(transport) = self.transport.get() {
            transport.shutdown().await;
        }
    }
}
