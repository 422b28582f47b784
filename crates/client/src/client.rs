//! The client proper: one method per operation of the API contract, request
//! building (paths, query strings, auth and causal tokens), timeouts, and
//! decoding of answers and error answers. How a request travels (HTTP or
//! QUIC) is the [`Backend`]'s business, so each operation is written once.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dotkv_api::{
    ApiError, Batch, BatchResponse, CounterAdd, CounterValue, CrdtType, Element, FlagUpdate,
    FlagValue, KeyList, KeyResponse, MvRegisterValues, RegisterValue, SetContains, SetPage,
    SetUpdate, Status, API_PREFIX,
};
use hyper::header::HeaderValue;
use hyper::{Method, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::backend::{Backend, ExchangeError, HttpBackend, QuicBackend, RawAnswer, RawRequest};
use crate::encode::{path_segment, Query};
use crate::error::ClientError;

/// Default time limit of one request, from sending to the last byte of the answer.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Added to a write's `timeout_ms` (the time the server may wait for
/// replication) so that the client does not give up before the server answers.
const SERVER_WAIT_MARGIN: Duration = Duration::from_secs(2);

/// An answer: its body and the causal token (`X-Dotkv-Token`) it carried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response<T> {
    pub value: T,
    /// Names everything this answer saw; give it to a later request (on any
    /// node) to read at least that much.
    pub token: Option<String>,
}

impl<T> Response<T> {
    /// Changes the body, keeping the token.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Response<U> {
        Response {
            value: f(self.value),
            token: self.token,
        }
    }
}

/// Options of every read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadOptions {
    /// A causal token: the node answers only once it has applied what it names.
    pub token: Option<String>,
}

/// Options of every write.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteOptions {
    /// Replication level to wait for: `local` (default), `dc` or `all`.
    pub w: Option<String>,
    /// How long the server may wait for `w`, in milliseconds. The client's
    /// own timeout is raised to cover it.
    pub timeout_ms: Option<u64>,
    /// A causal token the write must come after.
    pub token: Option<String>,
}

/// Paging of set elements and key lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Page {
    /// Page size; the server applies its default and maximum.
    pub limit: Option<usize>,
    /// The `next` of the previous page.
    pub after: Option<String>,
}

/// Where a client sends its requests.
#[derive(Debug, Clone)]
enum Target {
    /// The HTTP API at this URL.
    Http { base_url: String },
    /// The QUIC client protocol at this address, whose certificate must be
    /// valid for `server_name` and signed by the CA in `ca`.
    Quic {
        addr: SocketAddr,
        server_name: String,
        ca: PathBuf,
    },
}

/// Builds a [`Client`] with non-default settings.
#[derive(Clone)]
pub struct ClientBuilder {
    target: Target,
    bearer_token: Option<String>,
    timeout: Duration,
    connect_timeout: Duration,
    pool_idle_timeout: Duration,
    pool_max_idle_per_host: usize,
    max_response_bytes: usize,
}

impl fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("target", &self.target)
            .field(
                "bearer_token",
                &self.bearer_token.as_ref().map(|_| "<hidden>"),
            )
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("pool_idle_timeout", &self.pool_idle_timeout)
            .field("pool_max_idle_per_host", &self.pool_max_idle_per_host)
            .field("max_response_bytes", &self.max_response_bytes)
            .finish()
    }
}

impl ClientBuilder {
    fn new(target: Target) -> ClientBuilder {
        ClientBuilder {
            target,
            bearer_token: None,
            timeout: DEFAULT_TIMEOUT,
            connect_timeout: Duration::from_secs(5),
            pool_idle_timeout: Duration::from_secs(90),
            pool_max_idle_per_host: 32,
            max_response_bytes: 64 * 1024 * 1024,
        }
    }

    /// Sends `Authorization: Bearer <token>` on every request.
    pub fn bearer_token(mut self, token: impl Into<String>) -> Self {
        self.bearer_token = Some(token.into());
        self
    }

    /// Time limit of one request (default 10 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Time limit to open a connection (default 5 s, and never above
    /// `timeout`); over QUIC it covers the TLS handshake.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long an idle pooled connection is kept (default 90 s). HTTP only.
    pub fn pool_idle_timeout(mut self, timeout: Duration) -> Self {
        self.pool_idle_timeout = timeout;
        self
    }

    /// Most idle connections kept to the server (default 32). HTTP only.
    pub fn pool_max_idle_per_host(mut self, max: usize) -> Self {
        self.pool_max_idle_per_host = max;
        self
    }

    /// Largest answer body read, in bytes (default 64 MiB).
    pub fn max_response_bytes(mut self, max: usize) -> Self {
        self.max_response_bytes = max;
        self
    }

    /// Checks the settings (and, for QUIC, reads the CA certificate) and
    /// builds the client. A Tokio runtime is needed only when requests are
    /// sent, not here.
    pub fn build(self) -> Result<Client, ClientError> {
        let auth = match self.bearer_token {
            None => None,
            Some(token) => {
                let mut value =
                    HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
                        ClientError::Config(
                            "the bearer token must be printable ASCII with no line breaks".into(),
                        )
                    })?;
                value.set_sensitive(true);
                Some(value)
            }
        };
        let (base, backend) = match self.target {
            Target::Http { base_url } => {
                let base = parse_base_url(&base_url)?;
                let mut connector = HttpConnector::new();
                connector.set_nodelay(true);
                connector.set_connect_timeout(Some(self.connect_timeout.min(self.timeout)));
                let http = HttpClient::builder(TokioExecutor::new())
                    .pool_idle_timeout(self.pool_idle_timeout)
                    .pool_max_idle_per_host(self.pool_max_idle_per_host)
                    .build(connector);
                let backend = Backend::Http(HttpBackend {
                    http,
                    base: base.clone(),
                });
                (base, backend)
            }
            Target::Quic {
                addr,
                server_name,
                ca,
            } => {
                if server_name.is_empty() {
                    return Err(ClientError::Config(
                        "the server name (the name the node's certificate must carry) is empty"
                            .into(),
                    ));
                }
                let tls = dotkv_replication::load_client_trust(&ca)
                    .map_err(|e| ClientError::Config(e.to_string()))?;
                let backend = Backend::Quic(QuicBackend::new(
                    addr,
                    server_name,
                    tls,
                    self.timeout,
                    self.connect_timeout,
                    self.max_response_bytes,
                ));
                (format!("quic://{addr}"), backend)
            }
        };
        Ok(Client {
            inner: Arc::new(Inner {
                backend,
                base,
                auth,
                timeout: self.timeout,
                max_response_bytes: self.max_response_bytes,
            }),
        })
    }
}

/// Reads `http://host:port[/prefix]`; a URL with no scheme gets `http://`.
fn parse_base_url(url: &str) -> Result<String, ClientError> {
    let with_scheme = if url.contains("://") {
        url.to_owned()
    } else {
        format!("http://{url}")
    };
    let uri: Uri = with_scheme
        .parse()
        .map_err(|e| ClientError::Config(format!("invalid server URL `{url}`: {e}")))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(ClientError::Config(format!(
                "invalid server URL `{url}`: https is not supported; use http://"
            )))
        }
        _ => {
            return Err(ClientError::Config(format!(
                "invalid server URL `{url}`: the scheme must be http://"
            )))
        }
    }
    let Some(authority) = uri.authority() else {
        return Err(ClientError::Config(format!(
            "invalid server URL `{url}`: no host"
        )));
    };
    if uri.query().is_some() {
        return Err(ClientError::Config(format!(
            "invalid server URL `{url}`: a query string is not allowed"
        )));
    }
    let prefix = uri.path().trim_end_matches('/');
    Ok(format!("http://{authority}{prefix}"))
}

/// A client of one dotkv node, over HTTP ([`Client::new`]) or QUIC
/// ([`Client::quic`]). Cheap to clone: clones share the connection pool or
/// the QUIC connection.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    backend: Backend,
    /// `http://authority[/prefix]` or `quic://addr`, no trailing slash: what
    /// error messages name.
    base: String,
    auth: Option<HeaderValue>,
    timeout: Duration,
    max_response_bytes: usize,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.inner.base)
            .field("auth", &self.inner.auth.is_some())
            .field("timeout", &self.inner.timeout)
            .finish()
    }
}

/// A request about to be sent.
struct Call<'a> {
    method: Method,
    path: String,
    body: Option<Bytes>,
    token: Option<&'a str>,
    /// How long the server may legitimately wait before answering.
    server_wait: Option<Duration>,
}

impl Client {
    /// A client of the node at `base_url` (e.g. `http://127.0.0.1:7700`), with
    /// default settings.
    pub fn new(base_url: &str) -> Result<Client, ClientError> {
        Client::builder(base_url).build()
    }

    /// A builder for a client of the node at `base_url`.
    pub fn builder(base_url: impl Into<String>) -> ClientBuilder {
        ClientBuilder::new(Target::Http {
            base_url: base_url.into(),
        })
    }

    /// A client of the node whose QUIC endpoint is `addr`, speaking the QUIC
    /// client protocol (ALPN `dotkv-client/1`), with default settings. The
    /// node's certificate must be signed by the CA in `ca_pem` (a PEM file,
    /// e.g. `certs/ca.pem`) and valid for `server_name`: one of its subject
    /// alternative names (by default `localhost`, `127.0.0.1` and the node's
    /// name).
    pub fn quic(addr: SocketAddr, server_name: &str, ca_pem: &Path) -> Result<Client, ClientError> {
        Client::quic_builder(addr, server_name, ca_pem).build()
    }

    /// A builder for a QUIC client; see [`Client::quic`].
    pub fn quic_builder(
        addr: SocketAddr,
        server_name: impl Into<String>,
        ca_pem: impl Into<PathBuf>,
    ) -> ClientBuilder {
        ClientBuilder::new(Target::Quic {
            addr,
            server_name: server_name.into(),
            ca: ca_pem.into(),
        })
    }

    /// Where requests go, without a trailing slash: the server URL, or
    /// `quic://ADDR` for a QUIC client.
    pub fn base_url(&self) -> &str {
        &self.inner.base
    }

    /// Closes the client's QUIC connection in an orderly way, so the node
    /// frees it at once instead of after its idle timeout (no-op over HTTP).
    /// Later requests on this client fail; call it last.
    pub async fn close(&self) {
        self.inner.backend.close().await;
    }

    // ---- counter ----

    /// `GET /v1/counter/{key}`: the value (0 if never written).
    pub async fn counter_get(
        &self,
        key: &str,
        opts: &ReadOptions,
    ) -> Result<Response<CounterValue>, ClientError> {
        self.read(CrdtType::Counter, key, "", opts).await
    }

    /// `POST /v1/counter/{key}` `{"add":n}`: the value after the add.
    pub async fn counter_add(
        &self,
        key: &str,
        add: i64,
        opts: &WriteOptions,
    ) -> Result<Response<CounterValue>, ClientError> {
        self.write(
            Method::POST,
            CrdtType::Counter,
            key,
            &CounterAdd { add },
            opts,
        )
        .await
    }

    // ---- register ----

    /// `GET /v1/register/{key}`; a register never written is `not_found`
    /// (see [`ClientError::is_not_found`]).
    pub async fn register_get(
        &self,
        key: &str,
        opts: &ReadOptions,
    ) -> Result<Response<RegisterValue>, ClientError> {
        self.read(CrdtType::Register, key, "", opts).await
    }

    /// `PUT /v1/register/{key}` with any JSON value.
    pub async fn register_put<V: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &V,
        opts: &WriteOptions,
    ) -> Result<Response<KeyResponse>, ClientError> {
        self.write(Method::PUT, CrdtType::Register, key, value, opts)
            .await
    }

    // ---- mvregister ----

    /// `GET /v1/mvregister/{key}`: every concurrent value.
    pub async fn mvregister_get(
        &self,
        key: &str,
        opts: &ReadOptions,
    ) -> Result<Response<MvRegisterValues>, ClientError> {
        self.read(CrdtType::MvRegister, key, "", opts).await
    }

    /// `PUT /v1/mvregister/{key}` with any JSON value.
    pub async fn mvregister_put<V: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &V,
        opts: &WriteOptions,
    ) -> Result<Response<KeyResponse>, ClientError> {
        self.write(Method::PUT, CrdtType::MvRegister, key, value, opts)
            .await
    }

    // ---- set ----

    /// `GET /v1/set/{key}?limit=&after=`: one page of elements.
    pub async fn set_get(
        &self,
        key: &str,
        page: &Page,
        opts: &ReadOptions,
    ) -> Result<Response<SetPage>, ClientError> {
        let mut query = Query::new();
        query
            .push_opt("limit", page.limit)
            .push_opt("after", page.after.as_deref());
        self.read(CrdtType::Set, key, query.as_str(), opts).await
    }

    /// `GET /v1/set/{key}?contains=x`.
    pub async fn set_contains(
        &self,
        key: &str,
        element: &Element,
        opts: &ReadOptions,
    ) -> Result<Response<SetContains>, ClientError> {
        let mut query = Query::new();
        // The query form reads back as the same element on the server.
        query.push("contains", element.to_query());
        self.read(CrdtType::Set, key, query.as_str(), opts).await
    }

    /// `POST /v1/set/{key}` `{"add":[..],"remove":[..]}`.
    pub async fn set_update(
        &self,
        key: &str,
        update: &SetUpdate,
        opts: &WriteOptions,
    ) -> Result<Response<KeyResponse>, ClientError> {
        self.write(Method::POST, CrdtType::Set, key, update, opts)
            .await
    }

    // ---- flag ----

    /// `GET /v1/flag/{key}`.
    pub async fn flag_get(
        &self,
        key: &str,
        opts: &ReadOptions,
    ) -> Result<Response<FlagValue>, ClientError> {
        self.read(CrdtType::Flag, key, "", opts).await
    }

    /// `POST /v1/flag/{key}` `{"enable":b}`.
    pub async fn flag_set(
        &self,
        key: &str,
        enable: bool,
        opts: &WriteOptions,
    ) -> Result<Response<KeyResponse>, ClientError> {
        self.write(
            Method::POST,
            CrdtType::Flag,
            key,
            &FlagUpdate { enable },
            opts,
        )
        .await
    }

    // ---- any type ----

    /// `DELETE /v1/{type}/{key}`: an observed remove.
    pub async fn delete(
        &self,
        crdt_type: CrdtType,
        key: &str,
        opts: &WriteOptions,
    ) -> Result<Response<KeyResponse>, ClientError> {
        let path = format!("{}{}", key_path(crdt_type, key)?, write_query(opts));
        self.call(Call {
            method: Method::DELETE,
            path,
            body: None,
            token: opts.token.as_deref(),
            server_wait: server_wait(opts),
        })
        .await
    }

    /// `GET /v1/{type}?prefix=&limit=&after=`: one page of keys.
    pub async fn list(
        &self,
        crdt_type: CrdtType,
        prefix: Option<&str>,
        page: &Page,
        opts: &ReadOptions,
    ) -> Result<Response<KeyList>, ClientError> {
        let mut query = Query::new();
        query
            .push_opt("prefix", prefix)
            .push_opt("limit", page.limit)
            .push_opt("after", page.after.as_deref());
        let path = format!("{API_PREFIX}/{crdt_type}{}", query.as_str());
        self.call(Call {
            method: Method::GET,
            path,
            body: None,
            token: opts.token.as_deref(),
            server_wait: None,
        })
        .await
    }

    /// `POST /v1/batch`: all ops applied atomically, or none.
    pub async fn batch(
        &self,
        batch: &Batch,
        opts: &WriteOptions,
    ) -> Result<Response<BatchResponse>, ClientError> {
        let path = format!("{API_PREFIX}/batch{}", write_query(opts));
        self.call(Call {
            method: Method::POST,
            path,
            body: Some(to_body(batch)?),
            token: opts.token.as_deref(),
            server_wait: server_wait(opts),
        })
        .await
    }

    // ---- node ----

    /// `GET /v1/status`: node identity, version vector, peers and their lag.
    pub async fn status(&self, opts: &ReadOptions) -> Result<Response<Status>, ClientError> {
        self.call(Call {
            method: Method::GET,
            path: format!("{API_PREFIX}/status"),
            body: None,
            token: opts.token.as_deref(),
            server_wait: None,
        })
        .await
    }

    /// `GET /health`: the body of a 2xx answer, as text.
    pub async fn health(&self) -> Result<Response<String>, ClientError> {
        let answer = self
            .send(Call {
                method: Method::GET,
                path: "/health".into(),
                body: None,
                token: None,
                server_wait: None,
            })
            .await?;
        Ok(Response {
            value: String::from_utf8_lossy(&answer.body).into_owned(),
            token: answer.token,
        })
    }

    // ---- plumbing ----

    async fn read<T: DeserializeOwned>(
        &self,
        crdt_type: CrdtType,
        key: &str,
        query: &str,
        opts: &ReadOptions,
    ) -> Result<Response<T>, ClientError> {
        let path = format!("{}{query}", key_path(crdt_type, key)?);
        self.call(Call {
            method: Method::GET,
            path,
            body: None,
            token: opts.token.as_deref(),
            server_wait: None,
        })
        .await
    }

    async fn write<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        method: Method,
        crdt_type: CrdtType,
        key: &str,
        body: &B,
        opts: &WriteOptions,
    ) -> Result<Response<T>, ClientError> {
        let path = format!("{}{}", key_path(crdt_type, key)?, write_query(opts));
        self.call(Call {
            method,
            path,
            body: Some(to_body(body)?),
            token: opts.token.as_deref(),
            server_wait: server_wait(opts),
        })
        .await
    }

    /// Sends a request and decodes a 2xx JSON answer.
    async fn call<T: DeserializeOwned>(&self, call: Call<'_>) -> Result<Response<T>, ClientError> {
        let method = call.method.clone();
        let url = format!("{}{}", self.inner.base, call.path);
        let answer = self.send(call).await?;
        let value = serde_json::from_slice(&answer.body).map_err(|e| ClientError::Decode {
            method: method.to_string(),
            url,
            message: format!("{e} (status {})", answer.status),
        })?;
        Ok(Response {
            value,
            token: answer.token,
        })
    }

    /// Sends a request within the timeout; a non-2xx answer is an error.
    async fn send(&self, call: Call<'_>) -> Result<RawAnswer, ClientError> {
        let url = format!("{}{}", self.inner.base, call.path);
        let method = call.method.clone();
        let token = call
            .token
            .map(|token| {
                HeaderValue::from_str(token).map_err(|_| {
                    ClientError::InvalidRequest(
                        "the causal token must be printable ASCII with no line breaks".into(),
                    )
                })
            })
            .transpose()?;
        let request = RawRequest {
            method: call.method,
            path: &call.path,
            body: call.body,
            token,
            auth: self.inner.auth.as_ref(),
        };
        let limit = match call.server_wait {
            Some(wait) => self.inner.timeout.max(wait + SERVER_WAIT_MARGIN),
            None => self.inner.timeout,
        };
        let started = Instant::now();
        let exchange = self
            .inner
            .backend
            .exchange(request, limit, self.inner.max_response_bytes);
        let answer = match tokio::time::timeout(limit, exchange).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(ExchangeError::Invalid(message))) => {
                return Err(ClientError::InvalidRequest(message));
            }
            Ok(Err(ExchangeError::Transport(message))) => {
                tracing::debug!(%method, %url, %message, "dotkv request failed");
                return Err(ClientError::Transport {
                    method: method.to_string(),
                    url,
                    message,
                });
            }
            Err(_) => {
                tracing::debug!(%method, %url, ?limit, "dotkv request timed out");
                return Err(ClientError::Timeout {
                    method: method.to_string(),
                    url,
                    after: limit,
                });
            }
        };
        tracing::debug!(
            %method,
            %url,
            status = answer.status,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "dotkv request"
        );
        if !(200..300).contains(&answer.status) {
            return Err(ClientError::Api {
                status: answer.status,
                error: ApiError::from_response(answer.status, &answer.body),
            });
        }
        Ok(answer)
    }
}

/// `/v1/{type}/{key}` with the key percent-encoded. An empty key is refused
/// here: its path would name the key list instead.
fn key_path(crdt_type: CrdtType, key: &str) -> Result<String, ClientError> {
    if key.is_empty() {
        return Err(ClientError::InvalidRequest("key is empty".into()));
    }
    Ok(format!("{API_PREFIX}/{crdt_type}/{}", path_segment(key)))
}

fn write_query(opts: &WriteOptions) -> String {
    let mut query = Query::new();
    query
        .push_opt("w", opts.w.as_deref())
        .push_opt("timeout_ms", opts.timeout_ms);
    query.as_str().to_owned()
}

fn server_wait(opts: &WriteOptions) -> Option<Duration> {
    opts.timeout_ms.map(Duration::from_millis)
}

fn to_body<B: Serialize + ?Sized>(body: &B) -> Result<Bytes, ClientError> {
    serde_json::to_vec(body)
        .map(Bytes::from)
        .map_err(|e| ClientError::InvalidRequest(format!("cannot encode the body as JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls() {
        assert_eq!(
            parse_base_url("http://127.0.0.1:7700").unwrap(),
            "http://127.0.0.1:7700"
        );
        assert_eq!(parse_base_url("http://h:1/").unwrap(), "http://h:1");
        assert_eq!(
            parse_base_url("127.0.0.1:7700").unwrap(),
            "http://127.0.0.1:7700"
        );
        assert_eq!(parse_base_url("http://h/kv/").unwrap(), "http://h/kv");
        assert!(
            matches!(parse_base_url("https://h"), Err(ClientError::Config(m)) if m.contains("https"))
        );
        assert!(parse_base_url("ftp://h").is_err());
        assert!(parse_base_url("http://h/?x=1").is_err());
        assert!(parse_base_url("http://").is_err());
        assert!(parse_base_url("not a url").is_err());
    }

    #[test]
    fn bad_bearer_token_is_a_config_error() {
        let err = Client::builder("http://h")
            .bearer_token("a\nb")
            .build()
            .unwrap_err();
        assert!(matches!(err, ClientError::Config(_)), "{err}");
        // The token never shows in Debug output.
        let builder = Client::builder("http://h").bearer_token("secret");
        assert!(!format!("{builder:?}").contains("secret"));
    }

    #[test]
    fn quic_settings_are_checked_at_build() {
        let addr = SocketAddr::from(([127, 0, 0, 1], 7701));
        let err = Client::quic(addr, "", Path::new("/nonexistent/ca.pem")).unwrap_err();
        assert!(
            matches!(&err, ClientError::Config(m) if m.contains("server name")),
            "{err}"
        );
        let err = Client::quic(addr, "localhost", Path::new("/nonexistent/ca.pem")).unwrap_err();
        assert!(
            matches!(&err, ClientError::Config(m) if m.contains("/nonexistent/ca.pem")),
            "{err}"
        );
    }

    #[test]
    fn key_paths() {
        assert_eq!(
            key_path(CrdtType::MvRegister, "a/b c").unwrap(),
            "/v1/mvregister/a%2Fb%20c"
        );
        assert!(matches!(
            key_path(CrdtType::Set, ""),
            Err(ClientError::InvalidRequest(_))
        ));
        let opts = WriteOptions {
            w: Some("dc".into()),
            timeout_ms: Some(250),
            token: None,
        };
        assert_eq!(write_query(&opts), "?w=dc&timeout_ms=250");
        assert_eq!(write_query(&WriteOptions::default()), "");
    }
}
