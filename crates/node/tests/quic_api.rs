//! The QUIC client API end to end, in process: a real node (store, writer,
//! HTTP API) behind a real QUIC transport with certificates from a fresh
//! CA, and a real HTTP server on the same node, so every answer over QUIC can
//! be compared with the one HTTP gives. Clients are `dotkv-client` over both
//! transports, or raw frames on a client-only transport for what the typed
//! client never sends.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dotkv_api::{
    Batch, CrdtType, Element, ErrorCode, QuicRequest, QuicResponse, SetUpdate, JSON_CONTENT_TYPE,
    QUIC_FORMAT_VERSION,
};
use dotkv_client::{Client, ClientError, Page, ReadOptions, WriteOptions};
use dotkv_node::config::Config;
use dotkv_node::quic_api::{serve_client_connection, QuicApiLimits};
use dotkv_node::{http, Node};
use dotkv_replication::{
    init_ca, issue_node_cert, load_client_trust, load_node_identity, Alpn, CancellationToken,
    Transport, TransportConfig,
};
use serde_json::{json, Value};
use tokio::task::JoinSet;

/// One node serving the API over QUIC and HTTP; stopped by [`Fixture::stop`].
struct Fixture {
    dir: tempfile::TempDir,
    node: Arc<Node>,
    transport: Transport,
    http_addr: SocketAddr,
    /// Client connections whose `serve_client_connection` has returned.
    released: Arc<AtomicUsize>,
    tasks: JoinSet<()>,
    shutdown: CancellationToken,
}

impl Fixture {
    async fn start(configure: impl FnOnce(&mut Config)) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let ca_dir = dir.path().join("ca");
        init_ca(&ca_dir).unwrap();
        let certs = issue_node_cert(&ca_dir, "n1", &[], &dir.path().join("certs")).unwrap();
        let tls = load_node_identity(&certs.cert, &certs.key, &ca_dir.join("ca.pem")).unwrap();

        let mut config = Config::default();
        config.node.data_dir = dir.path().join("data");
        configure(&mut config);
        let node = Node::open(config).unwrap();
        let app = http::api(node.clone());

        let shutdown = CancellationToken::new();
        let (transport, mut incoming) = Transport::bind(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            &tls,
            TransportConfig::default(),
            &shutdown,
        )
        .unwrap();
        let mut tasks = JoinSet::new();
        let limits = QuicApiLimits::from_transport(transport.config());
        let quic_app = app.clone();
        let released = Arc::new(AtomicUsize::new(0));
        let count = released.clone();
        tasks.spawn(async move {
            let mut connections = JoinSet::new();
            while let Some(conn) = incoming.accept().await {
                assert_eq!(conn.alpn(), Alpn::Client);
                assert_eq!(conn.peer_name(), None, "clients present no certificate");
                let (app, count) = (quic_app.clone(), count.clone());
                connections.spawn(async move {
                    serve_client_connection(app, conn, limits).await;
                    count.fetch_add(1, Ordering::SeqCst);
                });
            }
            // The transport closed every connection, so these end.
            while connections.join_next().await.is_some() {}
        });

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http_addr = listener.local_addr().unwrap();
        let stop_http = shutdown.clone();
        tasks.spawn(async move {
            axum::serve(listener, axum::Router::new().fallback_service(app))
                .with_graceful_shutdown(stop_http.cancelled_owned())
                .await
                .unwrap();
        });
        Fixture {
            dir,
            node,
            transport,
            http_addr,
            released,
            tasks,
            shutdown,
        }
    }

    fn ca(&self) -> PathBuf {
        self.dir.path().join("ca/ca.pem")
    }

    fn quic(&self) -> Client {
        Client::quic(self.transport.local_addr(), "localhost", &self.ca()).unwrap()
    }

    fn http(&self) -> Client {
        Client::new(&format!("http://{}", self.http_addr)).unwrap()
    }

    async fn stop(mut self) {
        self.shutdown.cancel();
        self.transport.shutdown().await;
        while let Some(done) = self.tasks.join_next().await {
            done.unwrap();
        }
        self.node.writer.stop().await;
    }
}

/// Sends one raw frame on a fresh stream of a client-only transport and reads
/// the one answer.
async fn raw_exchange(addr: SocketAddr, ca: &Path, frame: &[u8]) -> QuicResponse {
    let tls = load_client_trust(ca).unwrap();
    let shutdown = CancellationToken::new();
    let (client, _) = Transport::bind(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        &tls,
        TransportConfig::default(),
        &shutdown,
    )
    .unwrap();
    let answer = client
        .request(addr, "127.0.0.1", Alpn::Client, frame)
        .await
        .unwrap();
    client.shutdown().await;
    QuicResponse::from_frame(&answer).unwrap()
}

fn envelope(method: &str, path: &str, body: Option<&str>) -> QuicRequest {
    QuicRequest {
        method: method.into(),
        path_and_query: path.into(),
        content_type: body.map(|_| JSON_CONTENT_TYPE.to_owned()),
        body: body.unwrap_or_default().as_bytes().to_vec(),
        ..QuicRequest::default()
    }
}

fn body_json(resp: &QuicResponse) -> Value {
    serde_json::from_slice(&resp.body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&resp.body)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_typed_operation_works_over_quic() {
    let f = Fixture::start(|_| {}).await;
    let c = f.quic();
    assert!(c.base_url().starts_with("quic://127.0.0.1:"));
    let (r, w) = (ReadOptions::default(), WriteOptions::default());

    assert_eq!(c.counter_get("visits", &r).await.unwrap().value.value, 0);
    let added = c.counter_add("visits", 5, &w).await.unwrap();
    assert_eq!(added.value.value, 5);
    assert!(added.token.is_some(), "writes carry a causal token");
    // The token works as over HTTP: read after it.
    let after = ReadOptions {
        token: added.token.clone(),
    };
    assert_eq!(
        c.counter_get("visits", &after).await.unwrap().value.value,
        5
    );
    assert_eq!(
        c.counter_add("visits", -8, &w).await.unwrap().value.value,
        -3
    );

    let err = c.register_get("cfg", &r).await.unwrap_err();
    assert!(err.is_not_found(), "{err}");
    assert_eq!(err.status(), Some(404));
    c.register_put("cfg", &json!({"a": [1, 2]}), &w)
        .await
        .unwrap();
    assert_eq!(
        c.register_get("cfg", &r).await.unwrap().value.value,
        json!({"a": [1, 2]})
    );

    c.mvregister_put("m", &json!("x"), &w).await.unwrap();
    assert_eq!(
        c.mvregister_get("m", &r).await.unwrap().value.values,
        [json!("x")]
    );

    let update = SetUpdate {
        add: vec![Element::from("a"), Element::from(2i64)],
        remove: vec![],
    };
    c.set_update("s", &update, &w).await.unwrap();
    let page = c.set_get("s", &Page::default(), &r).await.unwrap().value;
    assert_eq!(page.elements.len(), 2);
    assert!(
        c.set_contains("s", &Element::from("a"), &r)
            .await
            .unwrap()
            .value
            .contains
    );

    c.flag_set("f", true, &w).await.unwrap();
    assert!(c.flag_get("f", &r).await.unwrap().value.value);

    // Keys with characters that need encoding travel like over HTTP.
    c.counter_add("a/b c?d", 1, &w).await.unwrap();
    let keys = c
        .list(CrdtType::Counter, None, &Page::default(), &r)
        .await
        .unwrap()
        .value;
    assert_eq!(keys.keys, ["a/b c?d", "visits"]);

    c.delete(CrdtType::Flag, "f", &w).await.unwrap();
    assert!(!c.flag_get("f", &r).await.unwrap().value.value);

    let batch: Batch = serde_json::from_value(json!({"ops": [
        {"type": "counter", "key": "b1", "op": {"add": 2}},
        {"type": "flag", "key": "b2", "op": {"enable": true}},
    ]}))
    .unwrap();
    c.batch(&batch, &w).await.unwrap();
    assert_eq!(c.counter_get("b1", &r).await.unwrap().value.value, 2);

    c.status(&r).await.unwrap();
    c.health().await.unwrap();

    // What QUIC wrote, HTTP reads (one node, one store).
    assert_eq!(
        f.http()
            .counter_get("visits", &r)
            .await
            .unwrap()
            .value
            .value,
        -3
    );
    c.close().await;
    f.stop().await;
}

/// Every answer over QUIC has the status and body HTTP gives for the same
/// request, errors included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_are_the_same_as_http() {
    let f = Fixture::start(|_| {}).await;
    let (quic, http) = (f.quic(), f.http());
    let (r, w) = (ReadOptions::default(), WriteOptions::default());
    quic.register_put("x", &json!(1), &w).await.unwrap();

    async fn outcome(c: &Client, case: usize) -> Result<Value, (u16, ErrorCode, String)> {
        let (r, w) = (ReadOptions::default(), WriteOptions::default());
        let result = match case {
            0 => c.register_get("x", &r).await.map(|a| json!(a.value)),
            1 => c.register_get("missing", &r).await.map(|a| json!(a.value)),
            2 => c
                .counter_add("c", i64::MAX, &w)
                .await
                .map(|a| json!(a.value)),
            3 => c.counter_add("c", 1, &w).await.map(|a| json!(a.value)),
            4 => {
                let batch = serde_json::from_value(json!({"ops": [
                    {"type": "flag", "key": "f", "op": {"add": 5}},
                ]}))
                .unwrap();
                c.batch(&batch, &w).await.map(|a| json!(a.value))
            }
            5 => {
                let w = WriteOptions {
                    w: Some("never".into()),
                    ..WriteOptions::default()
                };
                c.flag_set("f", true, &w).await.map(|a| json!(a.value))
            }
            6 => c
                .counter_add(&"k".repeat(2000), 1, &w)
                .await
                .map(|a| json!(a.value)),
            7 => {
                let r = ReadOptions {
                    token: Some("not-a-token".into()),
                };
                c.counter_get("c", &r).await.map(|a| json!(a.value))
            }
            _ => unreachable!(),
        };
        result.map_err(|e: ClientError| {
            let api = e.api_error().unwrap_or_else(|| panic!("case {case}: {e}"));
            (e.status().unwrap(), api.code, api.message.clone())
        })
    }

    let mut statuses = Vec::new();
    for case in 0..8 {
        let over_quic = outcome(&quic, case).await;
        let over_http = outcome(&http, case).await;
        // Case 2 and 3 write: the second client sees the first one's add.
        if case == 2 || case == 3 {
            assert_eq!(over_quic.is_ok(), case == 2, "case {case}: {over_quic:?}");
            assert!(over_http.is_err(), "case {case}: {over_http:?}");
        } else {
            assert_eq!(over_quic, over_http, "case {case}");
        }
        statuses.push(over_quic.err().map(|(status, ..)| status));
    }
    assert_eq!(
        statuses,
        [
            None,
            Some(404),
            None,
            Some(409),
            Some(422),
            Some(400),
            Some(413),
            Some(400)
        ]
    );
    let _ = r;

    // Raw envelopes the typed client never sends get HTTP's answers too.
    let addr = f.transport.local_addr();
    for (method, path, body, status) in [
        ("POST", "/v1/flag/f", Some(r#"{"add": 5}"#), 422),
        ("POST", "/v1/flag/f", Some("{not json"), 400),
        ("PATCH", "/v1/counter/c", None, 405),
        ("GET", "/v1/nope/x", None, 404),
        ("GET", "/nowhere", None, 404),
    ] {
        let answer = raw_exchange(
            addr,
            &f.ca(),
            &envelope(method, path, body).to_frame().unwrap(),
        )
        .await;
        assert_eq!(answer.status, status, "{method} {path}: {answer:?}");
        let http = http_raw(f.http_addr, method, path, body).await;
        assert_eq!(answer.status, http.0, "{method} {path}");
        assert_eq!(
            body_json(&answer)["error"]["code"],
            serde_json::from_slice::<Value>(&http.1).unwrap()["error"]["code"],
            "{method} {path}"
        );
        assert_eq!(answer.content_type.as_deref(), Some(JSON_CONTENT_TYPE));
    }
    // Answers outside /v1 keep their media type.
    let metrics = raw_exchange(
        addr,
        &f.ca(),
        &envelope("GET", "/metrics", None).to_frame().unwrap(),
    )
    .await;
    assert_eq!(metrics.status, 200);
    assert!(metrics.content_type.unwrap().starts_with("text/plain"));
    assert!(String::from_utf8(metrics.body).unwrap().contains("dotkv_"));

    quic.close().await;
    f.stop().await;
}

/// One HTTP/1.1 request with hyper-free plain TCP: (status, body).
async fn http_raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (u16, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let body = body.unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nhost: t\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let status = std::str::from_utf8(&raw[9..12]).unwrap().parse().unwrap();
    (status, raw[end + 4..].to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_get_a_json_400() {
    let f = Fixture::start(|_| {}).await;
    let addr = f.transport.local_addr();
    let good = envelope("GET", "/health", None).to_frame().unwrap();
    let mut unknown_version = good.clone();
    unknown_version[0] = QUIC_FORMAT_VERSION + 1;
    let mut trailing = good.clone();
    trailing.push(0);
    let cases: [(&str, Vec<u8>); 8] = [
        ("empty frame", vec![]),
        ("garbage", b"\x01\xff\xff\xff\xff\xff\xff".to_vec()),
        ("unknown version", unknown_version),
        ("trailing bytes", trailing),
        ("cut short", good[..good.len() - 1].to_vec()),
        (
            "bad method",
            envelope("G T", "/health", None).to_frame().unwrap(),
        ),
        (
            "relative path",
            envelope("GET", "health", None).to_frame().unwrap(),
        ),
        (
            "bad token",
            QuicRequest {
                token: Some("a\r\nb".into()),
                ..envelope("GET", "/v1/status", None)
            }
            .to_frame()
            .unwrap(),
        ),
    ];
    for (what, frame) in cases {
        let answer = raw_exchange(addr, &f.ca(), &frame).await;
        assert_eq!(answer.status, 400, "{what}: {answer:?}");
        assert_eq!(body_json(&answer)["error"]["code"], "malformed", "{what}");
    }
    // The connection and the node are fine afterwards.
    assert_eq!(
        raw_exchange(addr, &f.ca(), &good).await.status,
        200,
        "a good frame after bad ones"
    );

    // A stream finished without any frame is answered too.
    let tls = load_client_trust(&f.ca()).unwrap();
    let shutdown = CancellationToken::new();
    let (client, _) = Transport::bind(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        &tls,
        TransportConfig::default(),
        &shutdown,
    )
    .unwrap();
    let conn = client
        .connect(addr, "localhost", Alpn::Client)
        .await
        .unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.finish().unwrap();
    let answer = QuicResponse::from_frame(&recv.recv().await.unwrap().unwrap()).unwrap();
    assert_eq!(answer.status, 400);
    assert!(
        String::from_utf8_lossy(&answer.body).contains("without a request frame"),
        "{answer:?}"
    );
    client.shutdown().await;
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_tokens_are_checked_as_over_http() {
    let f = Fixture::start(|c| c.auth.tokens = vec!["s3cret".into()]).await;
    let r = ReadOptions::default();
    let anonymous = f.quic().counter_get("c", &r).await.unwrap_err();
    assert_eq!(
        anonymous.code(),
        Some(ErrorCode::Unauthorized),
        "{anonymous}"
    );
    let addr = f.transport.local_addr();
    let wrong = Client::quic_builder(addr, "localhost", f.ca())
        .bearer_token("nope")
        .build()
        .unwrap();
    let err = wrong.counter_get("c", &r).await.unwrap_err();
    assert_eq!(err.status(), Some(401));
    assert!(err.to_string().contains("bad bearer token"), "{err}");
    let right = Client::quic_builder(addr, "localhost", f.ca())
        .bearer_token("s3cret")
        .build()
        .unwrap();
    assert_eq!(right.counter_get("c", &r).await.unwrap().value.value, 0);
    // /health needs no token, as over HTTP.
    f.quic().health().await.unwrap();
    right.close().await;
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_of_another_ca_or_name_is_refused() {
    let f = Fixture::start(|_| {}).await;
    let other = tempfile::tempdir().unwrap();
    init_ca(other.path()).unwrap();
    let addr = f.transport.local_addr();
    let stranger = Client::quic(addr, "localhost", &other.path().join("ca.pem")).unwrap();
    let err = stranger
        .counter_get("c", &ReadOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Transport { .. }), "{err}");
    assert!(err.to_string().contains("quic://"), "{err}");

    // The right CA but a name the certificate does not carry.
    let misnamed = Client::quic(addr, "elsewhere.example", &f.ca()).unwrap();
    let err = misnamed.health().await.unwrap_err();
    assert!(matches!(err, ClientError::Transport { .. }), "{err}");

    // A CA file that is not there is a configuration error, at build time.
    let err = Client::quic(addr, "localhost", &other.path().join("nope.pem")).unwrap_err();
    assert!(matches!(err, ClientError::Config(_)), "{err}");
    f.stop().await;
}

/// Many requests at once on one connection, more than the stream limit: all
/// are answered, none is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_streams_on_one_connection() {
    let f = Fixture::start(|_| {}).await;
    let c = f.quic();
    let mut adds = JoinSet::new();
    for _ in 0..300 {
        let c = c.clone();
        adds.spawn(async move {
            c.counter_add("hits", 1, &WriteOptions::default())
                .await
                .map(|a| a.value.value)
        });
    }
    let mut seen = Vec::new();
    while let Some(done) = adds.join_next().await {
        seen.push(done.unwrap().unwrap());
    }
    seen.sort_unstable();
    assert_eq!(seen, (1..=300).collect::<Vec<i64>>());
    assert_eq!(
        f.transport.metrics().connections_accepted,
        1,
        "one connection carried every request"
    );
    c.close().await;
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_client_connection_is_released() {
    let f = Fixture::start(|_| {}).await;
    let c = f.quic();
    c.health().await.unwrap();
    c.close().await;
    // The node learns of the close at once, not after the idle timeout.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while f.released.load(Ordering::SeqCst) < 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the node still serves the closed connection"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f.stop().await;
}
