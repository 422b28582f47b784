//! The HTTP API of the contract in `DESIGN.md`: one handler per route, JSON in
//! and out, a causal token on every `/v1` answer, JSON errors with the right
//! status for every bad input.
//!
//! Paths are `/v1/{type}/{key}` with the key taken from the rest of the path
//! (percent-decoded, so keys may hold `/` either raw or as `%2F`). Extractor
//! failures are turned into the contract's JSON errors rather than axum's
//! plain-text ones.

use crate::metrics;
use crate::node::Node;
use crate::token;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::rejection::BytesRejection;
use axum::extract::{Request, State};
use axum::http::{self, header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::{BoxError, Router};
use dotkv_api::{
    ApiError, Batch, BatchResponse, CounterAdd, CounterValue, CrdtType, Element, ErrorCode,
    FlagUpdate, FlagValue, KeyList, KeyResponse, KeyedOp, ListQuery, LwwOrder, PeerStatus,
    SetContains, SetPage, SetQuery, SetUpdate, Status, ValidOp, WriteLevel, WriteQuery, HLC_HEADER,
    TOKEN_HEADER,
};
use dotkv_crdt::{DotStore, Hlc, ReplicaId};
use dotkv_replication::Scope;
use dotkv_storage::{ObjectKind, Op, OpOutput, StorageError, WriteOutcome};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::Serialize;
use serde_json::value::RawValue;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tower::Service;

type Shared = Arc<Node>;

/// The contract's headers as parsed names: a `&str` name is parsed again
/// on every lookup and insert.
static TOKEN: header::HeaderName = header::HeaderName::from_static(TOKEN_HEADER);
static HLC: header::HeaderName = header::HeaderName::from_static(HLC_HEADER);

/// Set elements as their canonical key bytes.
type ElementKeys = Vec<Vec<u8>>;

/// An error answer.
pub struct HttpError(pub ApiError);

impl From<ApiError> for HttpError {
    fn from(e: ApiError) -> Self {
        HttpError(e)
    }
}

impl From<StorageError> for HttpError {
    fn from(e: StorageError) -> Self {
        HttpError(match e {
            StorageError::CounterOverflow { key } => ApiError::new(
                ErrorCode::Conflict,
                format!("counter overflow: {key:?} would leave the i64 range; nothing was applied"),
            ),
            StorageError::WriterStopped => {
                ApiError::new(ErrorCode::NotReady, "the node is shutting down")
            }
            // The writer logs the failure once for its group.
            StorageError::CommitFailed(why) => ApiError::new(
                ErrorCode::NotReady,
                format!(
                    "the write was not committed and is not acknowledged ({why}); \
                     retry once the node can write again (a full disk: once space is freed)"
                ),
            ),
            other => {
                tracing::error!(error = %other, "storage error");
                ApiError::internal(format!("storage error: {other}"))
            }
        })
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.0.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = (status, self.0.to_json()).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        resp
    }
}

type Result<T, E = HttpError> = std::result::Result<T, E>;

/// A JSON answer with a causal token.
fn reply<T: Serialize>(status: StatusCode, body: &T, token: HeaderValue) -> Response {
    let mut json = Vec::with_capacity(128);
    match serde_json::to_writer(&mut json, body) {
        Ok(()) => {
            // Built directly rather than through `IntoResponse`, which would
            // first set a content type only to have it replaced; the body is
            // copied into an exactly sized buffer, which `Bytes` takes
            // without a second allocation for its reference count.
            let mut resp = Response::new(Body::from(Bytes::copy_from_slice(&json)));
            *resp.status_mut() = status;
            let h = resp.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            h.insert(&TOKEN, token);
            resp
        }
        Err(e) => {
            HttpError(ApiError::internal(format!("cannot encode the answer: {e}"))).into_response()
        }
    }
}

/// Adds `X-Dotkv-Hlc`: the last-writer-wins order key of a register write,
/// so a client (the fault harness) can check which write must win.
fn with_hlc(mut resp: Response, ts: Hlc, replica: ReplicaId) -> Response {
    let key = LwwOrder {
        hlc: ts.0,
        replica: replica.0,
    };
    let mut text = [0u8; LwwOrder::MAX_LEN];
    if let Ok(v) = HeaderValue::from_bytes(key.encode(&mut text)) {
        resp.headers_mut().insert(&HLC, v);
    }
    resp
}

/// The whole HTTP API as one service, for the HTTP listener and the QUIC
/// envelope alike.
///
/// Requests on one object (`/v1/{type}/{key}`), the ones every workload is
/// made of, go straight to [`object`] through the same guard as every other
/// route ([`guarded`]). The rest go through an axum router. Its routing,
/// layers and extractors cost a counter add about 10,000 instructions and 25
/// allocations (callgrind, in docs/PERFORMANCE.md), a fifth of everything
/// the node spent on it in user space.
#[derive(Clone)]
pub struct Api {
    node: Shared,
    router: Router,
}

pub fn api(node: Shared) -> Api {
    let limit = node.config.limits.max_body_bytes;
    let router = Router::new()
        .route("/health", any(health))
        .route("/metrics", any(metrics))
        .route("/v1/batch", any(batch))
        .route("/v1/status", any(status))
        .route("/v1/{type}", any(list))
        .route("/v1/{type}/", any(empty_key))
        .fallback(not_found)
        .layer(axum::extract::DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn_with_state(node.clone(), around))
        .with_state(node.clone());
    Api { node, router }
}

/// Whether `path` names one object: `/v1/`, a type, `/`, and a key of at
/// least one byte. What the type and key say is checked by [`object`].
fn is_object_path(path: &str) -> bool {
    path.strip_prefix("/v1/")
        .and_then(|rest| rest.split_once('/'))
        .is_some_and(|(t, key)| !t.is_empty() && !key.is_empty())
}

impl<B> Service<http::Request<B>> for Api
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = std::result::Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<std::result::Result<(), Infallible>> {
        // Neither path holds anything back: the in-flight bound is taken
        // per request, in `guarded`.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if is_object_path(req.uri().path()) {
            Box::pin(serve_object(self.node.clone(), req))
        } else {
            Box::pin(self.router.call(req))
        }
    }
}

/// One request on an object, through the guard, with its body read up to
/// the limit. Never an error: failures are answers. (It returns the
/// service's `Result` itself rather than being wrapped in another future,
/// which would copy this one, a few kilobytes, once more per request.)
async fn serve_object<B>(
    node: Shared,
    req: http::Request<B>,
) -> std::result::Result<Response, Infallible>
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let head = req.method() == Method::HEAD;
    let mut resp = guarded(&node, req, |req| async {
        let (parts, body) = req.into_parts();
        let body = read_body(body, node.config.limits.max_body_bytes).await;
        object(&node, parts.method, &parts.uri, &parts.headers, body)
            .await
            .unwrap_or_else(IntoResponse::into_response)
    })
    .await;
    if head {
        // As axum does for the other routes: the length GET would have, no body.
        if !resp.headers().contains_key(header::CONTENT_LENGTH) {
            if let Some(n) = resp.body().size_hint().exact() {
                resp.headers_mut()
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(n));
            }
        }
        *resp.body_mut() = Body::empty();
    }
    Ok(resp)
}

/// A request body, read whole, of at most `limit` bytes.
async fn read_body<B>(body: B, limit: usize) -> Result<Bytes>
where
    B: HttpBody<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => Err(HttpError(ApiError::too_large(format!(
            "request body exceeds the limit of {limit} bytes"
        )))),
        Err(e) => Err(HttpError(ApiError::malformed(format!(
            "cannot read the request body: {e}"
        )))),
    }
}

/// Route template for metrics, as an index into [`metrics::ROUTES`]:
/// bounded label values, never raw paths.
fn route_label(path: &str) -> usize {
    use metrics::route;
    let mut parts = path.trim_start_matches('/').splitn(3, '/');
    let (a, b, rest) = (parts.next(), parts.next(), parts.next());
    match (a, b, rest.is_some()) {
        (Some("health"), None, _) => route::HEALTH,
        (Some("metrics"), None, _) => route::METRICS,
        (Some("v1"), Some("batch"), false) => route::BATCH,
        (Some("v1"), Some("status"), false) => route::STATUS,
        (Some("v1"), Some(t), keyed) => match route::TYPES.iter().position(|&n| n == t) {
            Some(i) if keyed => route::object(i),
            Some(i) => route::list(i),
            None => route::OTHER,
        },
        _ => route::OTHER,
    }
}

/// The method's index into [`metrics::METHODS`].
fn method_label(m: &Method) -> usize {
    match *m {
        Method::GET => 0,
        Method::POST => 1,
        Method::PUT => 2,
        Method::DELETE => 3,
        Method::HEAD => 4,
        _ => 5,
    }
}

/// Constant-time comparison, so a wrong token's timing says nothing about the
/// right one.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The token of an `Authorization: Bearer <token>` header. The scheme is
/// case-insensitive (RFC 9110, section 11.1); spaces around the token are
/// not part of it.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim_start().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The body length a request declares in `Content-Length`, if it declares
/// one that parses (hyper has already refused one that does not).
fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Around every request of the router: see [`guarded`].
async fn around(State(node): State<Shared>, req: Request, next: Next) -> Response {
    guarded(&node, req, |req| next.run(req)).await
}

/// Around every request: the in-flight bound, authentication on `/v1`, the
/// request timeout, metrics, and a causal token on every `/v1` answer. `run`
/// serves the request once it has passed.
async fn guarded<B, F>(
    node: &Node,
    req: http::Request<B>,
    run: impl FnOnce(http::Request<B>) -> F,
) -> Response
where
    F: Future<Output = Response>,
{
    let started = Instant::now();
    let method = method_label(req.method());
    let route = route_label(req.uri().path());
    let is_api = req.uri().path().starts_with("/v1");
    let timeout = Duration::from_millis(node.config.http.request_timeout_ms);
    let resp = async {
        // The common case takes a free slot without arming a timer.
        let queue_timeout = Duration::from_millis(node.config.http.queue_timeout_ms);
        let permit = match node.in_flight.try_acquire() {
            Ok(p) => Ok(p),
            Err(_) => match tokio::time::timeout(queue_timeout, node.in_flight.acquire()).await {
                Ok(Ok(p)) => Ok(p),
                _ => Err(()),
            },
        };
        let _permit = match permit {
            Ok(p) => p,
            Err(()) => {
                return HttpError(ApiError::new(
                    ErrorCode::NotReady,
                    "too many requests in flight; try again",
                ))
                .into_response()
            }
        };
        if is_api && !node.config.auth.tokens.is_empty() {
            let auth = req.headers().get(header::AUTHORIZATION);
            let given = auth.and_then(|v| v.to_str().ok()).and_then(bearer_token);
            let ok = given.is_some_and(|g| {
                node.config
                    .auth
                    .tokens
                    .iter()
                    .any(|t| same_secret(t.as_bytes(), g.as_bytes()))
            });
            if !ok {
                // RFC 9110 asks every 401 to name the scheme; RFC 6750 adds
                // why a header that was sent is refused: not a bearer token
                // (`invalid_request`) or not one of ours (`invalid_token`).
                let (msg, challenge) = match (auth, given) {
                    (None, _) => (
                        "missing bearer token: send Authorization: Bearer <token>",
                        "Bearer realm=\"dotkv\"",
                    ),
                    (Some(_), None) => (
                        "the Authorization header must be Bearer <token>",
                        "Bearer realm=\"dotkv\", error=\"invalid_request\"",
                    ),
                    (Some(_), Some(_)) => (
                        "bad bearer token",
                        "Bearer realm=\"dotkv\", error=\"invalid_token\"",
                    ),
                };
                let mut resp = HttpError(ApiError::unauthorized(msg)).into_response();
                resp.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(challenge),
                );
                return resp;
            }
        }
        // A body declared longer than the limit is refused before it is
        // read: waiting for it would hold a slot until the request timeout.
        let limit = node.config.limits.max_body_bytes;
        if let Some(declared) = declared_length(req.headers()).filter(|&n| n > limit as u64) {
            return HttpError(ApiError::too_large(format!(
                "request body of {declared} bytes (Content-Length) exceeds the limit of {limit} bytes"
            )))
            .into_response();
        }
        // Only a write can have been applied when its time runs out (its
        // body may also never have arrived: a client that stalls after the
        // head is answered here too).
        let read = matches!(*req.method(), Method::GET | Method::HEAD);
        match tokio::time::timeout(timeout, run(req)).await {
            Ok(resp) => resp,
            Err(_) => HttpError(ApiError::timeout(format!(
                "the request took longer than {} ms (http.request_timeout_ms){}",
                timeout.as_millis(),
                if read {
                    ""
                } else {
                    "; a write may still have been applied"
                }
            )))
            .into_response(),
        }
    }
    .await;
    let mut resp = resp;
    if is_api && !resp.headers().contains_key(&TOKEN) {
        let t = node.tokens.header(&node.writer.committed().borrow().vv);
        resp.headers_mut().insert(&TOKEN, t);
    }
    node.metrics
        .observe(method, route, resp.status().as_u16(), started.elapsed());
    resp
}

async fn not_found(uri: Uri) -> HttpError {
    HttpError(ApiError::not_found(format!(
        "no such endpoint: {}",
        truncate(uri.path())
    )))
}

fn truncate(s: &str) -> String {
    if s.len() <= 200 {
        s.to_string()
    } else {
        let mut end = 200;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}...", &s[..end])
    }
}

/// A 405 answer, with the `Allow` header HTTP requires of it.
fn method_not_allowed(method: &Method, what: &str, allowed: &'static str) -> Response {
    let mut resp = HttpError(ApiError::new(
        ErrorCode::MethodNotAllowed,
        format!("{method} is not allowed on {what}; allowed: {allowed}"),
    ))
    .into_response();
    resp.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allowed));
    resp
}

/// HEAD is answered as GET; hyper leaves the body out.
fn head_as_get(method: Method) -> Method {
    if method == Method::HEAD {
        Method::GET
    } else {
        method
    }
}

fn is_get_or_head(method: &Method) -> bool {
    method == Method::GET || method == Method::HEAD
}

async fn health(State(node): State<Shared>, method: Method) -> Result<Response> {
    if !is_get_or_head(&method) {
        return Ok(method_not_allowed(&method, "/health", "GET, HEAD"));
    }
    if !node.is_ready() {
        return Err(ApiError::new(ErrorCode::NotReady, "shutting down").into());
    }
    let mut resp = (StatusCode::OK, "{\"status\":\"ok\"}").into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

async fn metrics(State(node): State<Shared>, method: Method) -> Result<Response> {
    use crate::metrics::gauge;
    use std::sync::atomic::Ordering::Relaxed;
    if !is_get_or_head(&method) {
        return Ok(method_not_allowed(&method, "/metrics", "GET, HEAD"));
    }
    let mut out = String::with_capacity(8192);
    node.metrics.render_requests(&mut out);
    let conns = &node.connections;
    gauge(
        &mut out,
        "dotkv_http_connections_open",
        "gauge",
        "HTTP connections open now.",
        conns.open.load(Relaxed),
    );
    gauge(
        &mut out,
        "dotkv_http_connections_accepted_total",
        "counter",
        "HTTP connections accepted and served.",
        conns.accepted.load(Relaxed),
    );
    gauge(
        &mut out,
        "dotkv_http_connections_refused_total",
        "counter",
        "HTTP connections answered 503 and closed because http.max_connections were open.",
        conns.refused.load(Relaxed),
    );
    let st = node.store.stats();
    gauge(
        &mut out,
        "dotkv_storage_live_data_bytes",
        "gauge",
        "Estimated live data in RocksDB, in bytes.",
        st.live_data_bytes,
    );
    gauge(
        &mut out,
        "dotkv_storage_sst_files_bytes",
        "gauge",
        "Size of RocksDB's SST files, in bytes.",
        st.sst_files_bytes,
    );
    gauge(
        &mut out,
        "dotkv_storage_memtable_bytes",
        "gauge",
        "Size of RocksDB's memtables, in bytes.",
        st.memtable_bytes,
    );
    gauge(
        &mut out,
        "dotkv_storage_estimated_keys",
        "gauge",
        "Estimated rows in RocksDB.",
        st.estimated_keys,
    );
    let ws = node.writer.stats();
    gauge(
        &mut out,
        "dotkv_storage_commits_total",
        "counter",
        "Write batches committed (each one WAL write, and one fsync under durability=fsync).",
        ws.commits.load(Relaxed),
    );
    gauge(
        &mut out,
        "dotkv_storage_inline_commits_total",
        "counter",
        "Of the commits, those made by the task serving a write rather than by the writer thread (durability=wal).",
        ws.inline_commits.load(Relaxed),
    );
    gauge(
        &mut out,
        "dotkv_storage_write_requests_total",
        "counter",
        "Local write requests committed.",
        ws.requests.load(Relaxed),
    );
    gauge(
        &mut out,
        "dotkv_storage_write_rejected_total",
        "counter",
        "Local write requests rejected with nothing applied.",
        ws.rejected.load(Relaxed),
    );
    gauge(
        &mut out,
        "dotkv_storage_remote_groups_total",
        "counter",
        "Delta groups from other replicas applied.",
        ws.remote_groups.load(Relaxed),
    );
    gauge(
        &mut out,
        "dotkv_storage_commit_seconds_total",
        "counter",
        "Time spent committing write batches, in seconds.",
        ws.commit_micros.load(Relaxed) as f64 / 1e6,
    );
    gauge(
        &mut out,
        "dotkv_storage_written_bytes_total",
        "counter",
        "Bytes of write batches committed.",
        ws.batch_bytes.load(Relaxed),
    );
    gauge(
        &mut out,
        "dotkv_storage_write_queue",
        "gauge",
        "Write requests waiting for the writer.",
        node.writer.queued(),
    );
    let vv = node.writer.committed().borrow().vv.clone();
    gauge(
        &mut out,
        "dotkv_replication_version_vector_total",
        "gauge",
        "Sum of the version vector: delta-group dots applied, from every origin.",
        vv.total(),
    );
    gauge(
        &mut out,
        "dotkv_node_uptime_seconds",
        "gauge",
        "Seconds since the node started.",
        node.started.elapsed().as_secs(),
    );
    if let Some(r) = &node.replicator {
        r.write_prometheus(&mut out);
    }
    let mut resp = (StatusCode::OK, out).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    Ok(resp)
}

fn kind_of(t: CrdtType) -> ObjectKind {
    match t {
        CrdtType::Counter => ObjectKind::Counter,
        CrdtType::Register => ObjectKind::Register,
        CrdtType::MvRegister => ObjectKind::MvRegister,
        CrdtType::Set => ObjectKind::Set,
        CrdtType::Flag => ObjectKind::Flag,
    }
}

fn parse_type(t: &str) -> Result<CrdtType> {
    t.parse::<CrdtType>().map_err(|_| {
        HttpError(ApiError::not_found(format!(
            "unknown type namespace {:?}; expected counter, register, mvregister, set or flag",
            truncate(t)
        )))
    })
}

/// The `{type}` and `{key}` of a path, percent-decoded. A `%` not followed
/// by two hex digits, and decoded bytes that are not UTF-8, are `malformed`.
fn path_parts(uri: &Uri) -> Result<(String, Option<String>)> {
    let rest = uri.path().strip_prefix("/v1/").unwrap_or_default();
    let (t, key) = match rest.split_once('/') {
        Some((t, k)) => (t, Some(k)),
        None => (rest, None),
    };
    let decode = |s: &str, what: &str| -> Result<String> {
        percent_decode(s).map_err(|e| {
            HttpError(ApiError::malformed(match e {
                PercentError::Escape(at) => format!(
                    "the {what} in the path has a '%' at byte {at} that is not followed by two hex digits (a '%' in a key is sent as %25)"
                ),
                PercentError::Utf8 => {
                    format!("the {what} in the path is not valid UTF-8 (after percent-decoding)")
                }
            }))
        })
    };
    Ok((
        decode(t, "type")?,
        key.map(|k| decode(k, "key")).transpose()?,
    ))
}

#[derive(Debug, PartialEq, Eq)]
enum PercentError {
    /// A `%` at this byte offset without two hex digits after it.
    Escape(usize),
    /// The decoded bytes are not UTF-8.
    Utf8,
}

fn percent_decode(s: &str) -> std::result::Result<String, PercentError> {
    if !s.contains('%') {
        return Ok(s.to_owned());
    }
    let hex = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hi = b.get(i + 1).copied().and_then(hex);
            let lo = b.get(i + 2).copied().and_then(hex);
            let (Some(hi), Some(lo)) = (hi, lo) else {
                return Err(PercentError::Escape(i));
            };
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| PercentError::Utf8)
}

fn query<T: serde::de::DeserializeOwned + Default>(uri: &Uri) -> Result<T> {
    match uri.query() {
        None | Some("") => Ok(T::default()),
        Some(q) => serde_urlencoded_from_str(q),
    }
}

fn serde_urlencoded_from_str<T: serde::de::DeserializeOwned>(q: &str) -> Result<T> {
    // The form decoder would keep a stray `%` as it is and replace bytes
    // that are not UTF-8 with U+FFFD, so `prefix=` or `contains=` would
    // silently name something else. Refuse both, as in paths. `&` and `=`
    // are ASCII, so the whole query is UTF-8 when every part of it is.
    // Without a '%' there is nothing to check: `q` is already a `str`.
    match q.contains('%').then(|| percent_decode(q)) {
        None | Some(Ok(_)) => {}
        Some(Err(PercentError::Escape(at))) => {
            return Err(HttpError(ApiError::malformed(format!(
                "the query string has a '%' at byte {at} without two hex digits after it; \
                 send '%' as %25"
            ))))
        }
        Some(Err(PercentError::Utf8)) => {
            return Err(HttpError(ApiError::malformed(
                "the query string is not valid UTF-8 after percent-decoding",
            )))
        }
    }
    axum::extract::Query::<T>::try_from_uri(
        &format!("/?{q}")
            .parse::<Uri>()
            .map_err(|_| HttpError(ApiError::malformed("unparsable query string")))?,
    )
    .map(|axum::extract::Query(v)| v)
    .map_err(|e| {
        HttpError(ApiError::malformed(format!(
            "bad query string: {}",
            e.body_text()
        )))
    })
}

#[derive(serde::Deserialize, Default)]
struct WaitQuery {
    timeout_ms: Option<u64>,
}

/// The timeout a request asked for, within the configured bounds.
fn timeout_of(node: &Node, asked: Option<u64>) -> Result<Duration> {
    let c = &node.config.consistency;
    match asked {
        None => Ok(Duration::from_millis(c.default_timeout_ms)),
        Some(ms) if ms > c.max_timeout_ms => Err(HttpError(ApiError::malformed(format!(
            "timeout_ms={ms} exceeds the maximum of {} ms",
            c.max_timeout_ms
        )))),
        Some(ms) => Ok(Duration::from_millis(ms)),
    }
}

/// Wait for the request's causal token, if it has one.
async fn await_token(node: &Node, headers: &HeaderMap, timeout: Duration) -> Result<()> {
    let Some(raw) = headers.get(&TOKEN) else {
        return Ok(());
    };
    let raw = raw
        .to_str()
        .map_err(|_| HttpError(ApiError::malformed("X-Dotkv-Token is not ASCII")))?;
    if raw.trim().is_empty() {
        return Ok(());
    }
    let vv = token::decode(raw)?;
    node.wait_for(&vv, timeout).await?;
    Ok(())
}

fn check_content_type(headers: &HeaderMap) -> Result<()> {
    let Some(ct) = headers.get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let ok = ct
        .to_str()
        .ok()
        .map(|v| v.split(';').next().unwrap_or("").trim())
        .is_some_and(|m| {
            let starts = |p: &str| m.get(..p.len()).is_some_and(|h| h.eq_ignore_ascii_case(p));
            let ends = |p: &str| {
                m.len() >= p.len()
                    && m.get(m.len() - p.len()..)
                        .is_some_and(|t| t.eq_ignore_ascii_case(p))
            };
            m.eq_ignore_ascii_case("application/json") || (starts("application/") && ends("+json"))
        });
    if ok {
        Ok(())
    } else {
        Err(HttpError(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            format!(
                "request bodies must be JSON (Content-Type: application/json), not {:?}",
                ct.to_str().unwrap_or("(not ASCII)")
            ),
        )))
    }
}

fn body_bytes(body: std::result::Result<Bytes, BytesRejection>, limit: usize) -> Result<Bytes> {
    body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            HttpError(ApiError::too_large(format!(
                "request body exceeds the limit of {limit} bytes"
            )))
        } else {
            HttpError(ApiError::malformed(format!(
                "cannot read the request body: {}",
                e.body_text()
            )))
        }
    })
}

/// A body that must be a JSON object: serde would also read a struct from an
/// array, which the contract does not allow.
fn parse_object_body<T: serde::de::DeserializeOwned>(
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<T> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first.is_some() && first != Some(&b'{') {
        // Not an object: malformed if it is not JSON at all, else the wrong shape.
        let _: serde_json::Value = parse_body(headers, body)?;
        return Err(HttpError(ApiError::invalid_op(
            "the request body must be a JSON object",
        )));
    }
    parse_body(headers, body)
}

fn parse_body<T: serde::de::DeserializeOwned>(headers: &HeaderMap, body: &Bytes) -> Result<T> {
    check_content_type(headers)?;
    if body.is_empty() {
        return Err(HttpError(ApiError::malformed(
            "the request needs a JSON body",
        )));
    }
    Ok(dotkv_api::from_json_body(body)?)
}

/// Run ops as one atomic write, then wait for the asked write level.
async fn write(node: &Node, uri: &Uri, headers: &HeaderMap, ops: Vec<Op>) -> Result<WriteOutcome> {
    let q: WriteQuery = query(uri)?;
    // Validated up front, so a bad timeout_ms is refused before anything is
    // applied.
    let wait = timeout_of(node, q.timeout_ms)?;
    // A write carrying a token comes after everything the token names: it
    // waits for it like a read, so the write depends on what its client has
    // seen, and its answer's token covers both (session guarantees across
    // nodes).
    await_token(node, headers, wait).await?;
    let outcome = node.writer.write(ops).await?;
    let scope = match q.w.unwrap_or_default() {
        WriteLevel::Local => return Ok(outcome),
        WriteLevel::Dc => Scope::Datacenter,
        WriteLevel::All => Scope::All,
    };
    // Without peers, this node is its datacenter and the whole cluster: the
    // local commit satisfies every level.
    let Some(r) = &node.replicator else {
        return Ok(outcome);
    };
    match r.wait_replicated(outcome.last, scope, wait).await {
        Ok(()) => Ok(outcome),
        Err(missing) => {
            // The middleware's token covers the write: it is committed.
            Err(HttpError(ApiError::timeout(format!(
                "the write is committed locally but not yet replicated as asked (w={}): after {} ms, still waiting for {}",
                match scope {
                    Scope::Datacenter => "dc",
                    Scope::All => "all",
                },
                wait.as_millis(),
                missing.join(", ")
            ))))
        }
    }
}

/// One op as its own write, answered with `{"key"}` and the write's token
/// (and, for a register write, its order key in `X-Dotkv-Hlc`).
async fn write_key(
    node: &Node,
    uri: &Uri,
    headers: &HeaderMap,
    key: String,
    op: Op,
) -> Result<Response> {
    let outcome = write(node, uri, headers, vec![op]).await?;
    let resp = reply(
        StatusCode::OK,
        &KeyResponse { key },
        write_token(node, &outcome),
    );
    Ok(match outcome.outputs.as_slice() {
        [OpOutput::Register { ts, replica }] => with_hlc(resp, *ts, *replica),
        _ => resp,
    })
}

fn write_token(node: &Node, outcome: &WriteOutcome) -> HeaderValue {
    node.tokens.header(&outcome.vv)
}

fn element_bytes(
    node: &Node,
    add: &[Element],
    remove: &[Element],
) -> Result<(ElementKeys, ElementKeys)> {
    node.config.limits.validate_elements(add, remove)?;
    Ok((
        add.iter().map(Element::to_key_bytes).collect(),
        remove.iter().map(Element::to_key_bytes).collect(),
    ))
}

fn to_op(node: &Node, op: KeyedOp) -> Result<Op> {
    let key = op.key;
    Ok(match (op.crdt_type, op.op) {
        (CrdtType::Counter, ValidOp::CounterAdd(amount)) => Op::CounterAdd { key, amount },
        (CrdtType::Register, ValidOp::RegisterSet(v)) => Op::RegisterSet {
            key,
            json: v.to_string(),
        },
        (CrdtType::MvRegister, ValidOp::MvRegisterSet(v)) => Op::MvRegisterSet {
            key,
            json: v.to_string(),
        },
        (CrdtType::Set, ValidOp::SetUpdate { add, remove }) => {
            let (add, remove) = element_bytes(node, &add, &remove)?;
            Op::SetUpdate { key, add, remove }
        }
        (CrdtType::Flag, ValidOp::FlagEnable(enable)) => Op::FlagSet { key, enable },
        (t, ValidOp::Delete) => Op::Delete {
            kind: kind_of(t),
            key,
        },
        (t, other) => {
            return Err(HttpError(ApiError::invalid_op(format!(
                "{other:?} is not an op of type {}",
                t.as_str()
            ))))
        }
    })
}

async fn empty_key(uri: Uri) -> Result<Response> {
    let (t, _) = path_parts(&uri)?;
    parse_type(&t)?;
    Err(HttpError(ApiError::malformed(
        "empty key: keys are 1 to 1024 bytes of UTF-8",
    )))
}

#[derive(Serialize)]
struct RawRegister<'a> {
    key: &'a str,
    value: &'a RawValue,
}

#[derive(Serialize)]
struct RawValues<'a> {
    key: &'a str,
    values: Vec<&'a RawValue>,
}

fn raw(json: &str) -> Result<Box<RawValue>> {
    RawValue::from_string(json.to_string())
        .map_err(|e| HttpError(ApiError::internal(format!("stored value is not JSON: {e}"))))
}

/// `/v1/{type}/{key}`, every method. `body` is the request's, as read by
/// [`read_body`].
async fn object(
    node: &Node,
    method: Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Result<Bytes>,
) -> Result<Response> {
    let (t, key) = path_parts(uri)?;
    let t = parse_type(&t)?;
    let key = key.unwrap_or_default();
    dotkv_api::validate_key(&key, &node.config.limits)?;
    let method = head_as_get(method);
    if method == Method::GET {
        let q: WaitQuery = query(uri)?;
        await_token(node, headers, timeout_of(node, q.timeout_ms)?).await?;
    }
    match (t, method.clone()) {
        (_, Method::DELETE) => {
            let op = Op::Delete {
                kind: kind_of(t),
                key: key.clone(),
            };
            write_key(node, uri, headers, key, op).await
        }
        (CrdtType::Counter, Method::GET) => {
            let value = match node.store.counter(&key)? {
                Some(c) => c.value().map_err(|_| {
                    HttpError(ApiError::new(
                        ErrorCode::Conflict,
                        format!("counter {key:?}: concurrent adds took the merged value out of the i64 range"),
                    ))
                })?,
                None => 0,
            };
            let token = node.read_token().await;
            Ok(reply(StatusCode::OK, &CounterValue { key, value }, token))
        }
        (CrdtType::Counter, Method::POST) => {
            let body = body?;
            let req: CounterAdd = parse_object_body(headers, &body)?;
            let outcome = write(
                node,
                uri,
                headers,
                vec![Op::CounterAdd {
                    key: key.clone(),
                    amount: req.add,
                }],
            )
            .await?;
            let value = match outcome.outputs.first() {
                Some(OpOutput::Counter(v)) => *v,
                _ => 0,
            };
            Ok(reply(
                StatusCode::OK,
                &CounterValue { key, value },
                write_token(node, &outcome),
            ))
        }
        (CrdtType::Register, Method::GET) => {
            let state = node.store.register(&key)?;
            let token = node.read_token().await;
            let winner = state.as_ref().and_then(|s| {
                s.iter()
                    .max_by_key(|(d, v)| (v.ts, d.replica))
                    .map(|(d, v)| (v.value.clone(), v.ts, d.replica))
            });
            match winner {
                Some((json, ts, replica)) => {
                    let value = raw(&json)?;
                    let resp = reply(
                        StatusCode::OK,
                        &RawRegister {
                            key: &key,
                            value: &value,
                        },
                        token,
                    );
                    Ok(with_hlc(resp, ts, replica))
                }
                None => Err(HttpError(ApiError::not_found(format!(
                    "register {key:?} is not set"
                )))),
            }
        }
        (CrdtType::Register | CrdtType::MvRegister, Method::PUT) => {
            let body = body?;
            let value: serde_json::Value = parse_body(headers, &body)?;
            node.config.limits.validate_value_depth(&value)?;
            let json = value.to_string();
            node.config.limits.validate_value_len(json.len())?;
            let op = if t == CrdtType::Register {
                Op::RegisterSet {
                    key: key.clone(),
                    json,
                }
            } else {
                Op::MvRegisterSet {
                    key: key.clone(),
                    json,
                }
            };
            write_key(node, uri, headers, key, op).await
        }
        (CrdtType::MvRegister, Method::GET) => {
            let state = node.store.mvregister(&key)?.unwrap_or_default();
            let token = node.read_token().await;
            let values: Vec<Box<RawValue>> =
                state.iter().map(|(_, v)| raw(v)).collect::<Result<_>>()?;
            Ok(reply(
                StatusCode::OK,
                &RawValues {
                    key: &key,
                    values: values.iter().map(|b| b.as_ref()).collect(),
                },
                token,
            ))
        }
        (CrdtType::Set, Method::GET) => {
            let q: SetQuery = query(uri)?;
            if let Some(x) = q.contains {
                let e = Element::parse_query(&x).map_err(HttpError)?;
                let contains = node.store.set_elem(&key, &e.to_key_bytes())?.is_some();
                let token = node.read_token().await;
                return Ok(reply(StatusCode::OK, &SetContains { key, contains }, token));
            }
            let limit = node.config.limits.page_limit(q.limit)?;
            let after = q
                .after
                .as_deref()
                .map(|a| Element::parse_query(a).map(|e| e.to_key_bytes()))
                .transpose()
                .map_err(HttpError)?;
            let (page, more) = node.store.set_page(&key, after.as_deref(), limit)?;
            let token = node.read_token().await;
            let elements: Vec<Element> = page
                .iter()
                .map(|b| Element::from_key_bytes(b))
                .collect::<std::result::Result<_, _>>()?;
            let next = if more {
                elements.last().map(Element::to_query)
            } else {
                None
            };
            Ok(reply(
                StatusCode::OK,
                &SetPage {
                    key,
                    elements,
                    next,
                },
                token,
            ))
        }
        (CrdtType::Set, Method::POST) => {
            let body = body?;
            let req: SetUpdate = parse_object_body(headers, &body)?;
            let (add, remove) = element_bytes(node, &req.add, &req.remove)?;
            let op = Op::SetUpdate {
                key: key.clone(),
                add,
                remove,
            };
            write_key(node, uri, headers, key, op).await
        }
        (CrdtType::Flag, Method::GET) => {
            let value = node.store.flag(&key)?.is_some_and(|f| !f.is_bottom());
            let token = node.read_token().await;
            Ok(reply(StatusCode::OK, &FlagValue { key, value }, token))
        }
        (CrdtType::Flag, Method::POST) => {
            let body = body?;
            let req: FlagUpdate = parse_object_body(headers, &body)?;
            let op = Op::FlagSet {
                key: key.clone(),
                enable: req.enable,
            };
            write_key(node, uri, headers, key, op).await
        }
        (t, m) => {
            let allowed = match t {
                CrdtType::Counter | CrdtType::Set | CrdtType::Flag => "GET, HEAD, POST, DELETE",
                CrdtType::Register | CrdtType::MvRegister => "GET, HEAD, PUT, DELETE",
            };
            Ok(method_not_allowed(
                &m,
                &format!("/v1/{}/{{key}}", t.as_str()),
                allowed,
            ))
        }
    }
}

async fn list(
    State(node): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response> {
    let (t, _) = path_parts(&uri)?;
    let t = parse_type(&t)?;
    if !is_get_or_head(&method) {
        return Ok(method_not_allowed(
            &method,
            &format!("/v1/{}", t.as_str()),
            "GET, HEAD",
        ));
    }
    let q: ListQuery = query(&uri)?;
    let w: WaitQuery = query(&uri)?;
    await_token(&node, &headers, timeout_of(&node, w.timeout_ms)?).await?;
    let limit = node.config.limits.page_limit(q.limit)?;
    let prefix = q.prefix.unwrap_or_default();
    if prefix.len() > node.config.limits.max_key_bytes {
        return Err(HttpError(ApiError::too_large(
            "prefix is longer than the longest key",
        )));
    }
    let (keys, more) = node
        .store
        .list_keys(kind_of(t), &prefix, q.after.as_deref(), limit)?;
    let token = node.read_token().await;
    let next = if more { keys.last().cloned() } else { None };
    Ok(reply(StatusCode::OK, &KeyList { keys, next }, token))
}

async fn batch(
    State(node): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Result<Response> {
    if method != Method::POST {
        return Ok(method_not_allowed(&method, "/v1/batch", "POST"));
    }
    let body = body_bytes(body, node.config.limits.max_body_bytes)?;
    let req: Batch = parse_object_body(&headers, &body)?;
    let keyed = req.into_valid(&node.config.limits)?;
    let ops = keyed
        .into_iter()
        .map(|k| to_op(&node, k))
        .collect::<Result<Vec<_>>>()?;
    let applied = ops.len();
    let outcome = write(&node, &uri, &headers, ops).await?;
    Ok(reply(
        StatusCode::OK,
        &BatchResponse { applied },
        write_token(&node, &outcome),
    ))
}

async fn status(State(node): State<Shared>, method: Method) -> Result<Response> {
    if !is_get_or_head(&method) {
        return Ok(method_not_allowed(&method, "/v1/status", "GET, HEAD"));
    }
    let c = node.writer.committed().borrow().clone();
    let status = Status {
        node_id: node.store.replica_uuid().to_string(),
        replica: node.store.replica().to_string(),
        datacenter: node.config.node.datacenter.clone(),
        node: node.config.node.name.clone(),
        version_vector: c.vv.iter().map(|(r, n)| (r.to_string(), n)).collect(),
        peers: node
            .replicator
            .as_ref()
            .map(|r| r.peers())
            .unwrap_or_default()
            .into_iter()
            .map(|p| PeerStatus {
                name: p.name,
                datacenter: p.datacenter,
                address: p.address,
                connected: p.connected,
                lag_groups: p.lag_seqs,
                lag_ms: p.lag_ms,
                acked: p.acked.iter().map(|(r, n)| (r.to_string(), n)).collect(),
            })
            .collect(),
    };
    Ok(reply(StatusCode::OK, &status, node.tokens.header(&c.vv)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_escapes_decode_exactly_or_are_refused() {
        assert_eq!(percent_decode("plain").unwrap(), "plain");
        assert_eq!(percent_decode("a%2Fb%20c%25").unwrap(), "a/b c%");
        assert_eq!(percent_decode("%C3%A9t%c3%a9").unwrap(), "été");
        assert_eq!(percent_decode("%zz"), Err(PercentError::Escape(0)));
        assert_eq!(percent_decode("ab%4"), Err(PercentError::Escape(2)));
        assert_eq!(percent_decode("100%"), Err(PercentError::Escape(3)));
        // from_str_radix would take a sign: "+1" is not two hex digits.
        assert_eq!(percent_decode("x%+1"), Err(PercentError::Escape(1)));
        assert_eq!(percent_decode("%FF"), Err(PercentError::Utf8));
    }

    #[test]
    fn bearer_scheme_is_case_insensitive_and_other_schemes_are_not_bearer() {
        assert_eq!(bearer_token("Bearer s3cret"), Some("s3cret"));
        assert_eq!(bearer_token("bearer s3cret"), Some("s3cret"));
        assert_eq!(bearer_token("BEARER   s3cret  "), Some("s3cret"));
        assert_eq!(bearer_token("Bearer "), Some(""));
        assert_eq!(bearer_token("Bearer"), None);
        assert_eq!(bearer_token("Basic czNjcmV0"), None);
        assert_eq!(bearer_token("Bearers s3cret"), None);
        assert_eq!(bearer_token("s3cret"), None);
    }

    #[test]
    fn declared_lengths_parse_or_are_none() {
        let with = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_LENGTH, HeaderValue::from_static(v));
            declared_length(&h)
        };
        assert_eq!(with("42"), Some(42));
        assert_eq!(with("18446744073709551615"), Some(u64::MAX));
        assert_eq!(with("18446744073709551616"), None);
        assert_eq!(with("-1"), None);
        assert_eq!(declared_length(&HeaderMap::new()), None);
    }

    #[test]
    fn labels_are_bounded() {
        let route = |p| metrics::ROUTES[route_label(p)];
        assert_eq!(route("/v1/counter/a/b/c"), "/v1/counter/{key}");
        assert_eq!(route("/v1/set"), "/v1/set");
        assert_eq!(route("/v1/flag/x"), "/v1/flag/{key}");
        assert_eq!(route("/v1/mvregister"), "/v1/mvregister");
        assert_eq!(route("/v1/nope/x"), "other");
        assert_eq!(route("/v1/batch"), "/v1/batch");
        assert_eq!(route("/health"), "/health");
        assert_eq!(route("/metrics"), "/metrics");
        assert_eq!(route("/whatever"), "other");
        for (i, m) in metrics::METHODS.iter().enumerate() {
            if let Ok(method) = m.parse::<Method>() {
                assert_eq!(method_label(&method), i);
            }
        }
    }
}
