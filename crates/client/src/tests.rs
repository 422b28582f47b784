//! The client against [`MockServer`]: what goes over the wire for each
//! operation (method, encoded path, query, headers, body) and how answers,
//! error answers, timeouts and dead servers come back.

use std::time::{Duration, Instant};

use dotkv_api::{
    ApiError, Batch, BatchOp, CrdtType, Element, ErrorCode, OpBody, SetUpdate, TOKEN_HEADER,
};
use serde_json::{json, Value};

use crate::testing::{MockResponse, MockServer, RecordedRequest};
use crate::{Client, ClientError, Page, ReadOptions, WriteOptions};

/// A server that answers every request with `body` (status 200, token `t1`).
async fn answering(body: Value) -> (MockServer, Client) {
    let server = MockServer::start(move |_| MockResponse::json(200, &body).with_token("t1"))
        .await
        .unwrap();
    let client = Client::new(&server.url()).unwrap();
    (server, client)
}

fn last(server: &MockServer) -> RecordedRequest {
    server.last_request().expect("the server saw a request")
}

fn write_opts() -> WriteOptions {
    WriteOptions {
        w: Some("all".into()),
        timeout_ms: Some(1500),
        token: Some("prev".into()),
    }
}

#[tokio::test]
async fn counter_get_and_add() {
    let (server, client) = answering(json!({"key": "a/b c", "value": 7})).await;
    let read = client
        .counter_get("a/b c", &ReadOptions::default())
        .await
        .unwrap();
    assert_eq!(read.value.value, 7);
    assert_eq!(read.value.key, "a/b c");
    assert_eq!(read.token.as_deref(), Some("t1"));
    let req = last(&server);
    assert_eq!(req.method, "GET");
    assert_eq!(req.path, "/v1/counter/a%2Fb%20c");
    assert_eq!(req.query, None);
    assert_eq!(req.header("accept"), Some("application/json"));
    assert_eq!(req.header(TOKEN_HEADER), None);
    assert_eq!(req.header("authorization"), None);

    let added = client.counter_add("k", -3, &write_opts()).await.unwrap();
    assert_eq!(added.value.value, 7);
    let req = last(&server);
    assert_eq!(req.method, "POST");
    assert_eq!(req.path_and_query(), "/v1/counter/k?w=all&timeout_ms=1500");
    assert_eq!(req.header("content-type"), Some("application/json"));
    assert_eq!(req.header(TOKEN_HEADER), Some("prev"));
    assert_eq!(req.body_json(), Some(json!({"add": -3})));
}

#[tokio::test]
async fn registers() {
    let (server, client) = answering(json!({"key": "k", "value": {"x": [1, 2]}})).await;
    let read = ReadOptions {
        token: Some("tok".into()),
    };
    let got = client.register_get("k", &read).await.unwrap();
    assert_eq!(got.value.value, json!({"x": [1, 2]}));
    assert_eq!(last(&server).header(TOKEN_HEADER), Some("tok"));

    client
        .register_put("k", &json!({"any": "json"}), &WriteOptions::default())
        .await
        .unwrap();
    let req = last(&server);
    assert_eq!(req.method, "PUT");
    assert_eq!(req.path_and_query(), "/v1/register/k");
    assert_eq!(req.body_json(), Some(json!({"any": "json"})));

    client
        .mvregister_put("é", "text", &WriteOptions::default())
        .await
        .unwrap();
    let req = last(&server);
    assert_eq!(req.path, "/v1/mvregister/%C3%A9");
    assert_eq!(req.body_json(), Some(json!("text")));

    let (server, client) = answering(json!({"key": "k", "values": [1, "b"]})).await;
    let got = client
        .mvregister_get("k", &ReadOptions::default())
        .await
        .unwrap();
    assert_eq!(got.value.values, vec![json!(1), json!("b")]);
    assert_eq!(last(&server).path, "/v1/mvregister/k");
}

#[tokio::test]
async fn sets() {
    let (server, client) = answering(json!({"key": "s", "elements": ["a", 5], "next": "5"})).await;
    let page = Page {
        limit: Some(2),
        after: Some("x y".into()),
    };
    let got = client
        .set_get("s", &page, &ReadOptions::default())
        .await
        .unwrap();
    assert_eq!(
        got.value.elements,
        vec![Element::from("a"), Element::from(5u64)]
    );
    assert_eq!(got.value.next.as_deref(), Some("5"));
    assert_eq!(
        last(&server).path_and_query(),
        "/v1/set/s?limit=2&after=x%20y"
    );

    let (server, client) = answering(json!({"key": "s", "contains": true})).await;
    let got = client
        .set_contains("s", &Element::from("5"), &ReadOptions::default())
        .await
        .unwrap();
    assert!(got.value.contains);
    // The string "5" goes JSON-quoted, so the server reads a string, not a number.
    assert_eq!(last(&server).query.as_deref(), Some("contains=%225%22"));
    client
        .set_contains("s", &Element::from(5u64), &ReadOptions::default())
        .await
        .unwrap();
    assert_eq!(last(&server).query.as_deref(), Some("contains=5"));

    let (server, client) = answering(json!({"key": "s"})).await;
    let update = SetUpdate {
        add: vec!["a".into(), 1u64.into()],
        remove: vec!["b".into()],
    };
    let ok = client
        .set_update("s", &update, &WriteOptions::default())
        .await
        .unwrap();
    assert_eq!(ok.value.key, "s");
    let req = last(&server);
    assert_eq!(req.method, "POST");
    assert_eq!(req.path, "/v1/set/s");
    assert_eq!(
        req.body_json(),
        Some(json!({"add": ["a", 1], "remove": ["b"]}))
    );
}

#[tokio::test]
async fn flags_deletes_lists() {
    let (server, client) = answering(json!({"key": "f", "value": true})).await;
    assert!(
        client
            .flag_get("f", &ReadOptions::default())
            .await
            .unwrap()
            .value
            .value
    );
    assert_eq!(last(&server).path, "/v1/flag/f");

    let (server, client) = answering(json!({"key": "f"})).await;
    client
        .flag_set("f", false, &WriteOptions::default())
        .await
        .unwrap();
    assert_eq!(last(&server).body_json(), Some(json!({"enable": false})));

    client
        .delete(CrdtType::MvRegister, "..", &write_opts())
        .await
        .unwrap();
    let req = last(&server);
    assert_eq!(req.method, "DELETE");
    assert_eq!(
        req.path_and_query(),
        "/v1/mvregister/%2E%2E?w=all&timeout_ms=1500"
    );
    assert!(req.body.is_empty());
    assert_eq!(req.header("content-type"), None);

    let (server, client) = answering(json!({"keys": ["a", "b"], "next": "b"})).await;
    let page = Page {
        limit: Some(2),
        after: None,
    };
    let keys = client
        .list(
            CrdtType::Counter,
            Some("a&b"),
            &page,
            &ReadOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(keys.value.keys, vec!["a", "b"]);
    assert_eq!(keys.value.next.as_deref(), Some("b"));
    assert_eq!(
        last(&server).path_and_query(),
        "/v1/counter?prefix=a%26b&limit=2"
    );
    client
        .list(
            CrdtType::Flag,
            None,
            &Page::default(),
            &ReadOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(last(&server).path_and_query(), "/v1/flag");
}

#[tokio::test]
async fn batch_status_health() {
    let (server, client) = answering(json!({"applied": 2})).await;
    let batch = Batch {
        ops: vec![
            BatchOp {
                crdt_type: CrdtType::Counter,
                key: "c".into(),
                op: OpBody::CounterAdd(1),
            },
            BatchOp {
                crdt_type: CrdtType::Flag,
                key: "f".into(),
                op: OpBody::Delete,
            },
        ],
    };
    let got = client
        .batch(&batch, &WriteOptions::default())
        .await
        .unwrap();
    assert_eq!(got.value.applied, 2);
    let req = last(&server);
    assert_eq!(req.path_and_query(), "/v1/batch");
    assert_eq!(
        req.body_json(),
        Some(json!({"ops": [
            {"type": "counter", "key": "c", "op": {"add": 1}},
            {"type": "flag", "key": "f", "op": {"delete": true}}
        ]}))
    );

    let (server, client) = answering(json!({
        "node_id": "u-1", "replica": "0000000000000003", "datacenter": "dc1", "node": "n1",
        "version_vector": {"u-1": 10},
        "peers": [{"name": "n2", "address": "10.0.0.2:7701", "connected": true, "lag_groups": 1}]
    }))
    .await;
    let status = client.status(&ReadOptions::default()).await.unwrap().value;
    assert_eq!(status.replica, "0000000000000003");
    assert_eq!(status.version_vector["u-1"], 10);
    assert_eq!(status.peers[0].lag_groups, 1);
    assert_eq!(last(&server).path, "/v1/status");

    let server = MockServer::start(|_| MockResponse::text(200, "ok"))
        .await
        .unwrap();
    let client = Client::new(&server.url()).unwrap();
    assert_eq!(client.health().await.unwrap().value, "ok");
    assert_eq!(last(&server).path, "/health");
}

#[tokio::test]
async fn bearer_token_and_url_prefix() {
    let server = MockServer::start(|_| MockResponse::json(200, &json!({"key": "k", "value": 1})))
        .await
        .unwrap();
    let client = Client::builder(format!("{}/prefix/", server.url()))
        .bearer_token("s3cret")
        .build()
        .unwrap();
    client
        .counter_get("k", &ReadOptions::default())
        .await
        .unwrap();
    let req = last(&server);
    assert_eq!(req.header("authorization"), Some("Bearer s3cret"));
    assert_eq!(req.path, "/prefix/v1/counter/k");
}

#[tokio::test]
async fn error_answers_become_api_errors() {
    let server = MockServer::start(|req| match req.path.as_str() {
        "/v1/register/missing" => {
            MockResponse::error(&ApiError::not_found("register `missing` is unset"))
        }
        "/v1/flag/f" => MockResponse::error(&ApiError::invalid_op("`enable` must be a boolean")),
        "/v1/counter/bad-body" => MockResponse::text(200, "not json"),
        _ => MockResponse::text(502, "Bad Gateway"),
    })
    .await
    .unwrap();
    let client = Client::new(&server.url()).unwrap();
    let read = ReadOptions::default();

    let err = client.register_get("missing", &read).await.unwrap_err();
    assert!(err.is_not_found());
    assert_eq!(err.status(), Some(404));
    assert_eq!(
        err.api_error().unwrap().message,
        "register `missing` is unset"
    );

    let err = client
        .flag_set("f", true, &WriteOptions::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidOp));
    assert_eq!(err.status(), Some(422));
    assert_eq!(
        err.to_string(),
        "invalid_op: `enable` must be a boolean (HTTP 422)"
    );

    let err = client.counter_get("other", &read).await.unwrap_err();
    assert_eq!(err.status(), Some(502));
    assert_eq!(err.code(), Some(ErrorCode::Internal));
    assert!(err.to_string().contains("Bad Gateway"), "{err}");

    let err = client.counter_get("bad-body", &read).await.unwrap_err();
    assert!(matches!(err, ClientError::Decode { .. }), "{err}");
}

#[tokio::test]
async fn empty_keys_and_bad_tokens_are_refused_before_sending() {
    let (server, client) = answering(json!({})).await;
    let err = client
        .counter_get("", &ReadOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::InvalidRequest(_)), "{err}");
    let bad = ReadOptions {
        token: Some("a\nb".into()),
    };
    let err = client.flag_get("f", &bad).await.unwrap_err();
    assert!(matches!(err, ClientError::InvalidRequest(_)), "{err}");
    assert!(server.requests().is_empty());
}

#[tokio::test]
async fn requests_time_out() {
    let server = MockServer::start(|_| {
        MockResponse::json(200, &json!({"key": "k", "value": 1}))
            .with_delay(Duration::from_millis(600))
    })
    .await
    .unwrap();
    let client = Client::builder(server.url())
        .timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let started = Instant::now();
    let err = client
        .counter_get("k", &ReadOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Timeout { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_millis(550));

    // A write that lets the server wait gets that long plus a margin.
    let opts = WriteOptions {
        timeout_ms: Some(0),
        ..WriteOptions::default()
    };
    let added = client.counter_add("k", 1, &opts).await.unwrap();
    assert_eq!(added.value.value, 1);
}

#[tokio::test]
async fn dead_server_is_a_transport_error() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let client = Client::new(&format!("http://{addr}")).unwrap();
    let err = client
        .counter_get("k", &ReadOptions::default())
        .await
        .unwrap_err();
    match &err {
        ClientError::Transport { message, url, .. } => {
            assert!(message.to_lowercase().contains("connect"), "{message}");
            assert!(url.ends_with("/v1/counter/k"), "{url}");
        }
        other => panic!("expected a transport error, got {other}"),
    }
}

#[tokio::test]
async fn connections_are_kept_alive() {
    let (server, client) = answering(json!({"key": "k", "value": 1})).await;
    for _ in 0..5 {
        client
            .counter_get("k", &ReadOptions::default())
            .await
            .unwrap();
    }
    let clone = client.clone();
    clone
        .counter_get("k", &ReadOptions::default())
        .await
        .unwrap();
    assert_eq!(server.requests().len(), 6);
    assert_eq!(server.connections(), 1);
}

#[tokio::test]
async fn oversized_answers_are_refused() {
    let big = "x".repeat(10_000);
    let server = MockServer::start(move |_| MockResponse::text(200, big.clone()))
        .await
        .unwrap();
    let client = Client::builder(server.url())
        .max_response_bytes(1_000)
        .build()
        .unwrap();
    let err = client.health().await.unwrap_err();
    assert!(err.to_string().contains("larger than 1000 bytes"), "{err}");
}
