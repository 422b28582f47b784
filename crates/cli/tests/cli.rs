//! The `dotkv` binary against a mock node: what each subcommand sends, what it
//! prints in human and `--json` form, and its exit codes (0 ok, 1 failed
//! request, 2 usage error).

use std::process::Stdio;
use std::time::Duration;

use dotkv_api::ApiError;
use dotkv_client::testing::{MockResponse, MockServer, RecordedRequest};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `dotkv args...` against `url`, with `stdin` as its input.
async fn dotkv(url: &str, args: &[&str], stdin: &str) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_dotkv"))
        .args(args)
        .env("DOTKV_URL", url)
        .env_remove("DOTKV_API_TOKEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("dotkv starts");
    let mut input = child.stdin.take().expect("stdin is piped");
    input
        .write_all(stdin.as_bytes())
        .await
        .expect("stdin is written");
    drop(input);
    let output = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("dotkv finishes within 30 s")
        .expect("dotkv runs");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

async fn answering(body: Value) -> MockServer {
    MockServer::start(move |_| MockResponse::json(200, &body).with_token("tok-1"))
        .await
        .unwrap()
}

fn last(server: &MockServer) -> RecordedRequest {
    server.last_request().expect("the mock saw a request")
}

#[tokio::test]
async fn counter_human_and_json_output() {
    let server = answering(json!({"key": "k", "value": 5})).await;
    let run = dotkv(&server.url(), &["counter", "get", "k"], "").await;
    assert_eq!(
        (run.code, run.stdout.as_str(), run.stderr.as_str()),
        (0, "counter/k = 5\n", "")
    );
    assert_eq!(last(&server).path, "/v1/counter/k");

    let run = dotkv(&server.url(), &["--json", "counter", "get", "k"], "").await;
    assert_eq!(run.code, 0);
    let printed: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(printed, json!({"key": "k", "value": 5}));

    let run = dotkv(&server.url(), &["counter", "get", "k", "--show-token"], "").await;
    assert_eq!(run.stderr, "token: tok-1\n");
}

#[tokio::test]
async fn write_flags_reach_the_request() {
    let server = answering(json!({"key": "a b", "value": 2})).await;
    let run = dotkv(
        &server.url(),
        &[
            "counter",
            "add",
            "a b",
            "-3",
            "--w",
            "dc",
            "--timeout-ms",
            "250",
            "--causal-token",
            "prev",
            "--token",
            "secret",
        ],
        "",
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout, "counter/a b = 2\n");
    let req = last(&server);
    assert_eq!(req.method, "POST");
    assert_eq!(
        req.path_and_query(),
        "/v1/counter/a%20b?w=dc&timeout_ms=250"
    );
    assert_eq!(req.body_json(), Some(json!({"add": -3})));
    assert_eq!(req.header("x-dotkv-token"), Some("prev"));
    assert_eq!(req.header("authorization"), Some("Bearer secret"));
}

#[tokio::test]
async fn set_elements_follow_the_query_rules() {
    let server = answering(json!({"key": "s"})).await;
    let run = dotkv(
        &server.url(),
        &["set", "add", "s", "apple", "5", "\"5\"", "-1.5"],
        "",
    )
    .await;
    assert_eq!(
        (run.code, run.stdout.as_str()),
        (0, "set/s ok\n"),
        "{}",
        run.stderr
    );
    assert_eq!(
        last(&server).body_json(),
        Some(json!({"add": ["apple", 5, "5", -1.5], "remove": []}))
    );
    let run = dotkv(&server.url(), &["set", "remove", "s", "x"], "").await;
    assert_eq!(run.code, 0);
    assert_eq!(
        last(&server).body_json(),
        Some(json!({"add": [], "remove": ["x"]}))
    );

    let server = answering(json!({"key": "s", "contains": true})).await;
    let run = dotkv(&server.url(), &["set", "contains", "s", "\"5\""], "").await;
    assert_eq!(run.stdout, "set/s contains \"5\": true\n");
    assert_eq!(last(&server).query.as_deref(), Some("contains=%225%22"));

    let server = answering(json!({"key": "s", "elements": ["a", 5, "5"], "next": "5"})).await;
    let run = dotkv(&server.url(), &["set", "get", "s", "--limit", "3"], "").await;
    assert_eq!(run.stdout, "set/s = {a, 5, \"5\"}\n");
    assert_eq!(run.stderr, "more: --after 5\n");
    assert_eq!(last(&server).query.as_deref(), Some("limit=3"));
}

#[tokio::test]
async fn registers_flags_keys_delete() {
    let server = answering(json!({"key": "r", "value": {"a": [1, "x"]}})).await;
    let run = dotkv(&server.url(), &["register", "get", "r"], "").await;
    assert_eq!(run.stdout, "register/r = {\"a\":[1,\"x\"]}\n");

    let server = answering(json!({"key": "r"})).await;
    let run = dotkv(&server.url(), &["register", "put", "r", "{\"n\": 1}"], "").await;
    assert_eq!((run.code, run.stdout.as_str()), (0, "register/r ok\n"));
    assert_eq!(last(&server).method, "PUT");
    assert_eq!(last(&server).body_json(), Some(json!({"n": 1})));
    let run = dotkv(&server.url(), &["mvregister", "put", "r", "-"], "[1, 2]").await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(last(&server).path, "/v1/mvregister/r");
    assert_eq!(last(&server).body_json(), Some(json!([1, 2])));
    // `set`, the op's name in a batch, is the same command.
    for kind in ["register", "mvregister"] {
        let run = dotkv(&server.url(), &[kind, "set", "r", "\"x\""], "").await;
        assert_eq!(run.code, 0, "{}", run.stderr);
        assert_eq!(last(&server).method, "PUT");
        assert_eq!(last(&server).path, format!("/v1/{kind}/r"));
        assert_eq!(last(&server).body_json(), Some(json!("x")));
    }

    let run = dotkv(&server.url(), &["flag", "disable", "f"], "").await;
    assert_eq!(run.stdout, "flag/r ok\n");
    assert_eq!(last(&server).body_json(), Some(json!({"enable": false})));

    let run = dotkv(&server.url(), &["delete", "mvregister", "r"], "").await;
    assert_eq!(run.stdout, "mvregister/r deleted\n");
    assert_eq!(last(&server).method, "DELETE");

    let server = answering(json!({"keys": ["a", "b"], "next": "b"})).await;
    let run = dotkv(
        &server.url(),
        &["keys", "set", "--prefix", "a", "--limit", "2"],
        "",
    )
    .await;
    assert_eq!(run.stdout, "a\nb\n");
    assert_eq!(run.stderr, "more: --after b\n");
    assert_eq!(last(&server).path_and_query(), "/v1/set?prefix=a&limit=2");

    let server = answering(json!({"keys": [], "next": null})).await;
    let run = dotkv(&server.url(), &["keys", "set"], "").await;
    assert_eq!(
        (run.code, run.stdout.as_str(), run.stderr.as_str()),
        (0, "", "no keys\n")
    );
    let run = dotkv(&server.url(), &["keys", "set", "--json"], "").await;
    assert_eq!(run.stdout, "{\"keys\":[],\"next\":null}\n");
}

#[tokio::test]
async fn batch_from_stdin_and_file() {
    let server = answering(json!({"applied": 2})).await;
    let body = r#"{"ops":[{"type":"counter","key":"c","op":{"add":1}},
                          {"type":"set","key":"s","op":{"add":["x"]}}]}"#;
    let run = dotkv(&server.url(), &["batch", "-"], body).await;
    assert_eq!(
        (run.code, run.stdout.as_str()),
        (0, "applied 2 ops\n"),
        "{}",
        run.stderr
    );
    let sent = last(&server).body_json().unwrap();
    assert_eq!(sent["ops"][1]["op"], json!({"add": ["x"], "remove": []}));

    let dir = std::env::temp_dir().join(format!("dotkv-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("batch.json");
    std::fs::write(&file, body).unwrap();
    let run = dotkv(&server.url(), &["batch", file.to_str().unwrap()], "").await;
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(server.requests().len(), 2);
}

#[tokio::test]
async fn api_errors_exit_1() {
    let server = MockServer::start(|_| {
        MockResponse::error(&ApiError::invalid_op(
            "ops[0] (flag/f): a counter add is not an op of type flag",
        ))
    })
    .await
    .unwrap();
    let run = dotkv(&server.url(), &["flag", "enable", "f"], "").await;
    assert_eq!(run.code, 1);
    assert_eq!(run.stdout, "");
    assert_eq!(
        run.stderr,
        "error: invalid_op: ops[0] (flag/f): a counter add is not an op of type flag\n"
    );

    let server =
        MockServer::start(|_| MockResponse::error(&ApiError::not_found("register `r` is unset")))
            .await
            .unwrap();
    let run = dotkv(&server.url(), &["--json", "register", "get", "r"], "").await;
    assert_eq!(
        (run.code, run.stderr.as_str()),
        (1, "error: not_found: register `r` is unset\n")
    );
}

#[tokio::test]
async fn dead_server_exits_1() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let run = dotkv(&url, &["status"], "").await;
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.starts_with("error: transport error on GET "),
        "{}",
        run.stderr
    );
}

#[tokio::test]
async fn usage_errors_exit_2_without_a_request() {
    let server = answering(json!({})).await;
    let url = server.url();
    let huge = "123456789012345678901234567890";
    let cases: [(&[&str], &str, &str); 11] = [
        (&["counter", "add", "k"], "", "required"),
        // Integers beyond 64 bits: refused, not sent as a rounded float.
        (
            &["register", "put", "k", huge],
            "",
            "outside the 64-bit range",
        ),
        (
            &["mvregister", "put", "k", "-"],
            "[1, -123456789012345678901234567890]",
            "outside the 64-bit range",
        ),
        (
            &["set", "add", "k", "a", huge],
            "",
            "outside the 64-bit range",
        ),
        (
            &["set", "contains", "k", huge],
            "",
            "outside the 64-bit range",
        ),
        (&["delete", "map", "k"], "", "unknown type `map`"),
        (&["register", "put", "k", "not json"], "", "not valid JSON"),
        (
            &["batch", "-"],
            "{\"ops\": [",
            "stdin: request body is not valid JSON",
        ),
        (
            &["batch", "-"],
            "{\"ops\": [{\"type\":\"flag\",\"key\":\"f\",\"op\":{\"enable\":1}}]}",
            "`enable` must be a boolean",
        ),
        (
            &["batch", "/nonexistent/batch.json"],
            "",
            "cannot read /nonexistent/batch.json",
        ),
        (&["counter", "get", ""], "", "key is empty"),
    ];
    for (args, stdin, needle) in cases {
        let run = dotkv(&url, args, stdin).await;
        assert_eq!(run.code, 2, "{args:?}: {}", run.stderr);
        assert!(run.stderr.contains(needle), "{args:?}: {}", run.stderr);
    }
    let run = dotkv(&url, &["--url", "https://h", "health"], "").await;
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(server.requests().is_empty());
}

#[tokio::test]
async fn status_and_health() {
    let server = answering(json!({
        "node_id": "u1", "replica": "0000000000000001", "datacenter": "dc1", "node": "n1",
        "version_vector": {"u1": 4}, "peers": []
    }))
    .await;
    let run = dotkv(&server.url(), &["status"], "").await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout
            .starts_with("node        n1 (id u1, replica 0000000000000001)\n"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("applied     u1=4\n"), "{}", run.stdout);

    let server = MockServer::start(|_| MockResponse::text(200, "ok\n"))
        .await
        .unwrap();
    let run = dotkv(&server.url(), &["health"], "").await;
    assert_eq!((run.code, run.stdout.as_str()), (0, "ok\n"));
    let run = dotkv(&server.url(), &["health", "--json"], "").await;
    assert_eq!(run.stdout, "\"ok\"\n");
    assert_eq!(last(&server).path, "/health");

    // What a real node answers.
    let server = answering(json!({"status": "ok"})).await;
    let run = dotkv(&server.url(), &["health"], "").await;
    assert_eq!((run.code, run.stdout.as_str()), (0, "ok\n"));
    let run = dotkv(&server.url(), &["health", "--json"], "").await;
    assert_eq!(run.stdout, "{\"status\":\"ok\"}\n");
}
