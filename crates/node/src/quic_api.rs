//! The QUIC client API (ALPN `dotkv-client/1`): serves one client connection
//! by running each request through the HTTP API's service.
//!
//! The protocol (`dotkv_api::quic`) is an envelope around an HTTP request, so
//! there is one implementation of the API's semantics, [`http::api`]: every
//! bidirectional stream the client opens carries one [`QuicRequest`] frame,
//! which becomes an `http::Request` (method, path and query, `X-Dotkv-Token`,
//! `Authorization`, `Content-Type`, body) and goes through that service with
//! its guard (in-flight bound, authentication, request timeout, metrics,
//! causal tokens); the answer's status, token, media type and body go back as
//! one [`QuicResponse`] frame on the same stream.
//!
//! A stream whose frame cannot be read (bad envelope, unknown version, too
//! large, too slow) gets a JSON error answer, as HTTP would give for a request
//! it cannot parse; only a stream the client itself reset goes unanswered.
//!
//! [`http::api`]: crate::http::api

use std::sync::Arc;
use std::time::Duration;

use crate::http::Api;
use axum::body::Body;
use axum::http::uri::PathAndQuery;
use axum::http::{header, HeaderMap, HeaderValue, Method, Request, Uri};
use axum::response::Response;
use dotkv_api::{ApiError, QuicRequest, QuicResponse, TOKEN_HEADER};
use dotkv_replication::{
    Alpn, Connection, FrameReceiver, FrameSender, TransportConfig, TransportError,
};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tower::ServiceExt;
use tracing::{debug, warn};

/// Bounds on what one client connection may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuicApiLimits {
    /// How long the request frame of a stream may take to arrive, from the
    /// moment the stream is accepted.
    pub read_timeout: Duration,
    /// Largest answer body, in bytes. Keep it within the transport's frame
    /// cap: a bigger answer is replaced by a `413 too_large` error.
    pub max_response_bytes: usize,
    /// Requests of one connection served at once. quinn already limits the
    /// streams a client may open (`max_concurrent_bidi_streams`, 100 by
    /// default, which the transport keeps); this bound holds even if that
    /// setting changes. A client over it waits for a slot: its next stream
    /// is accepted once an answer has gone out.
    pub max_concurrent_streams: usize,
}

impl QuicApiLimits {
    /// The limits that go with a transport: its read timeout, answers up to
    /// its frame cap, and quinn's default stream limit.
    pub fn from_transport(config: &TransportConfig) -> QuicApiLimits {
        QuicApiLimits {
            read_timeout: config.read_timeout,
            max_response_bytes: config.max_frame_size as usize,
            max_concurrent_streams: 100,
        }
    }
}

impl Default for QuicApiLimits {
    fn default() -> Self {
        QuicApiLimits::from_transport(&TransportConfig::default())
    }
}

/// Serves the API on `conn`, a connection accepted with ALPN
/// `dotkv-client/1`, until it closes. `app` is the node's
/// [`http::api`](crate::http::api). Each stream is served by its own
/// task; when the connection ends, requests still running are dropped, as an
/// HTTP server drops those of a client that went away.
///
/// A connection with another ALPN is closed at once: the caller must hand
/// peer connections elsewhere.
#[tracing::instrument(
    level = "debug",
    skip_all,
    fields(remote = %conn.remote_addr(), id = conn.id())
)]
pub async fn serve_client_connection(app: Api, conn: Connection, limits: QuicApiLimits) {
    if conn.alpn() != Alpn::Client {
        warn!(alpn = %conn.alpn(), "not a client connection; closing it");
        conn.close("this endpoint serves only dotkv-client/1 here");
        return;
    }
    debug!("client connected");
    let slots = Arc::new(Semaphore::new(limits.max_concurrent_streams.max(1)));
    let mut streams = JoinSet::new();
    loop {
        // Never closed, so acquiring only waits for a slot.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        let (send, recv) = match conn.accept_bi().await {
            Ok(Some(stream)) => stream,
            Ok(None) => {
                debug!("client connection closed");
                break;
            }
            Err(e) => {
                debug!(error = %e, "client connection lost");
                break;
            }
        };
        // Reap finished streams so the set does not grow.
        while streams.try_join_next().is_some() {}
        let app = app.clone();
        streams.spawn(async move {
            serve_stream(app, send, recv, &limits).await;
            drop(slot);
        });
    }
    // Nobody is left to read the answers of streams still running.
    streams.shutdown().await;
}

/// Reads one request frame, answers it, and finishes the stream.
async fn serve_stream(
    app: Api,
    mut send: FrameSender,
    mut recv: FrameReceiver,
    limits: &QuicApiLimits,
) {
    let response = match recv.recv_timeout(limits.read_timeout).await {
        Ok(Some(frame)) => match QuicRequest::from_frame(&frame) {
            Ok(request) => handle(app, request, limits.max_response_bytes).await,
            Err(e) => {
                debug!(error = %e, "unreadable request frame");
                QuicResponse::error(&ApiError::malformed(e.to_string()))
            }
        },
        Ok(None) => QuicResponse::error(&ApiError::malformed(
            "the stream ended without a request frame",
        )),
        Err(TransportError::FrameTooLarge { len, max, .. }) => {
            QuicResponse::error(&ApiError::too_large(format!(
                "the request frame of {len} bytes exceeds the limit of {max} bytes"
            )))
        }
        Err(TransportError::ReadTimeout { timeout, .. }) => {
            QuicResponse::error(&ApiError::malformed(format!(
                "no complete request frame within {} ms",
                timeout.as_millis()
            )))
        }
        Err(e @ TransportError::Truncated { .. }) => {
            QuicResponse::error(&ApiError::malformed(e.to_string()))
        }
        Err(e) => {
            // Reset by the client or the connection is gone: nobody to answer.
            debug!(error = %e, "cannot read a request frame");
            return;
        }
    };
    respond(&mut send, &response).await;
}

/// Sends `response` as the stream's one frame (or, if it does not fit in a
/// frame, a `413` error in its place) and finishes the stream.
async fn respond(send: &mut FrameSender, response: &QuicResponse) {
    let mut sent = send_frame(send, response).await;
    if let Err(TransportError::FrameTooLarge { len, max, .. }) = sent {
        let error = ApiError::too_large(format!(
            "the answer ({len} bytes) does not fit in a frame of at most {max} bytes; \
             ask for less (e.g. a smaller page)"
        ));
        sent = send_frame(send, &QuicResponse::error(&error)).await;
    }
    match sent {
        // The client reads the end of the stream after the answer.
        Ok(()) => {
            let _ = send.finish();
        }
        Err(e) => debug!(error = %e, "cannot send the answer"),
    }
}

async fn send_frame(send: &mut FrameSender, response: &QuicResponse) -> Result<(), TransportError> {
    match response.to_frame() {
        Ok(frame) => send.send(&frame).await,
        Err(e) => {
            // Strings, bytes and integers always encode; left unanswered, the
            // client would see the stream end without an answer.
            warn!(error = %e, "cannot encode an answer");
            Ok(())
        }
    }
}

/// Runs one request through the API.
async fn handle(app: Api, request: QuicRequest, max_response_bytes: usize) -> QuicResponse {
    let request = match to_http(request) {
        Ok(request) => request,
        Err(e) => return QuicResponse::error(&e),
    };
    let response = match app.oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    from_http(response, max_response_bytes).await
}

/// The HTTP request an envelope stands for.
fn to_http(request: QuicRequest) -> Result<Request<Body>, ApiError> {
    let method = Method::from_bytes(request.method.as_bytes()).map_err(|_| {
        ApiError::malformed(format!("invalid method {:?}", shorten(&request.method)))
    })?;
    if !request.path_and_query.starts_with('/') {
        return Err(ApiError::malformed(format!(
            "the path must start with '/': {:?}",
            shorten(&request.path_and_query)
        )));
    }
    let path_and_query = PathAndQuery::try_from(request.path_and_query.as_str()).map_err(|e| {
        ApiError::malformed(format!(
            "invalid path {:?}: {e}",
            shorten(&request.path_and_query)
        ))
    })?;
    let uri = Uri::from(path_and_query);
    let mut headers = HeaderMap::new();
    let mut put = |name, value: Option<String>, what: &str, sensitive: bool| {
        let Some(value) = value else {
            return Ok(());
        };
        let mut value = HeaderValue::try_from(value).map_err(|_| {
            ApiError::malformed(format!(
                "the {what} must be printable ASCII with no line breaks"
            ))
        })?;
        value.set_sensitive(sensitive);
        headers.insert(name, value);
        Ok::<(), ApiError>(())
    };
    put(
        header::HeaderName::from_static(TOKEN_HEADER),
        request.token,
        "causal token",
        false,
    )?;
    put(
        header::AUTHORIZATION,
        request.authorization,
        "authorization",
        true,
    )?;
    put(
        header::CONTENT_TYPE,
        request.content_type,
        "content type",
        false,
    )?;
    let mut http = Request::new(Body::from(request.body));
    *http.method_mut() = method;
    *http.uri_mut() = uri;
    *http.headers_mut() = headers;
    Ok(http)
}

/// The envelope of an HTTP answer.
async fn from_http(response: Response, max_body: usize) -> QuicResponse {
    let (parts, body) = response.into_parts();
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    match axum::body::to_bytes(body, max_body).await {
        Ok(bytes) => QuicResponse {
            status: parts.status.as_u16(),
            token: header(TOKEN_HEADER),
            content_type: header(header::CONTENT_TYPE.as_str()),
            body: bytes.into(),
        },
        // The API's answer bodies are in memory: the only failure is the length.
        Err(e) => QuicResponse::error(&ApiError::too_large(format!(
            "the answer exceeds {max_body} bytes, the most one frame may carry; \
             ask for less (e.g. a smaller page): {e}"
        ))),
    }
}

/// At most 200 bytes of untrusted text, for error messages.
fn shorten(text: &str) -> &str {
    let mut end = text.len().min(200);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(method: &str, path: &str) -> QuicRequest {
        QuicRequest {
            method: method.into(),
            path_and_query: path.into(),
            ..QuicRequest::default()
        }
    }

    #[test]
    fn envelopes_become_http_requests() {
        let request = QuicRequest {
            token: Some("tok".into()),
            authorization: Some("Bearer s".into()),
            content_type: Some("application/json".into()),
            body: b"{}".to_vec(),
            ..envelope("POST", "/v1/counter/a%2Fb?w=dc")
        };
        let http = to_http(request).unwrap();
        assert_eq!(http.method(), Method::POST);
        assert_eq!(http.uri().path(), "/v1/counter/a%2Fb");
        assert_eq!(http.uri().query(), Some("w=dc"));
        assert_eq!(http.headers()[TOKEN_HEADER], "tok");
        assert_eq!(http.headers()[header::AUTHORIZATION], "Bearer s");
        assert!(http.headers()[header::AUTHORIZATION].is_sensitive());
        assert_eq!(http.headers()[header::CONTENT_TYPE], "application/json");
        let bare = to_http(envelope("GET", "/health")).unwrap();
        assert!(bare.headers().is_empty());
    }

    #[test]
    fn bad_envelopes_are_malformed() {
        for request in [
            envelope("", "/health"),
            envelope("GE T", "/health"),
            envelope("GET", ""),
            envelope("GET", "health"),
            envelope("GET", "http://h/health"),
            envelope("GET", "/a b"),
            QuicRequest {
                token: Some("a\nb".into()),
                ..envelope("GET", "/v1/status")
            },
            QuicRequest {
                authorization: Some("Bearer \0".into()),
                ..envelope("GET", "/v1/status")
            },
        ] {
            let err = to_http(request.clone()).unwrap_err();
            assert_eq!(err.status(), 400, "{request:?}: {err}");
        }
        assert_eq!(shorten(&"é".repeat(150)).len(), 200);
    }
}
