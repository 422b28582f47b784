//! Every endpoint and every error status of the API contract, against the real
//! binary over TCP.

mod common;

use common::{request, try_request, TestNode};
use serde_json::json;

#[test]
fn counters_registers_mvregisters_flags() {
    let n = TestNode::start();
    // Counter: 0 if never written; adds return the new value.
    let r = n.get("/v1/counter/visits");
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!({"key": "visits", "value": 0}));
    assert!(r.header("x-dotkv-token").is_some(), "reads carry a token");
    let r = n.post("/v1/counter/visits", r#"{"add": 5}"#);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!({"key": "visits", "value": 5}));
    assert!(r.header("x-dotkv-token").is_some(), "writes carry a token");
    let r = n.post("/v1/counter/visits", r#"{"add": -8}"#);
    assert_eq!(r.json()["value"], -3);
    assert_eq!(n.get("/v1/counter/visits").json()["value"], -3);

    // Register: 404 until set; any JSON value.
    let r = n.get("/v1/register/cfg");
    assert_eq!((r.status, r.code().as_str()), (404, "not_found"));
    for v in [
        json!(1),
        json!("text"),
        json!({"a": [1, 2, {"b": null}]}),
        json!(null),
        json!(true),
    ] {
        let r = n.put("/v1/register/cfg", &v.to_string());
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json(), json!({"key": "cfg"}));
        assert_eq!(
            n.get("/v1/register/cfg").json(),
            json!({"key": "cfg", "value": v})
        );
    }

    // Multi-value register: one writer, one value.
    assert_eq!(
        n.get("/v1/mvregister/m").json(),
        json!({"key": "m", "values": []})
    );
    n.put("/v1/mvregister/m", r#"{"x":1}"#);
    n.put("/v1/mvregister/m", r#"{"x":2}"#);
    assert_eq!(
        n.get("/v1/mvregister/m").json(),
        json!({"key": "m", "values": [{"x": 2}]})
    );

    // Flag.
    assert_eq!(
        n.get("/v1/flag/f").json(),
        json!({"key": "f", "value": false})
    );
    assert_eq!(n.post("/v1/flag/f", r#"{"enable": true}"#).status, 200);
    assert_eq!(n.get("/v1/flag/f").json()["value"], true);
    n.post("/v1/flag/f", r#"{"enable": false}"#);
    assert_eq!(n.get("/v1/flag/f").json()["value"], false);

    // Delete of every type is an observed remove.
    n.post("/v1/flag/f", r#"{"enable": true}"#);
    for (t, check) in [
        ("counter/visits", json!({"key": "visits", "value": 0})),
        ("flag/f", json!({"key": "f", "value": false})),
        ("mvregister/m", json!({"key": "m", "values": []})),
    ] {
        let r = n.req("DELETE", &format!("/v1/{t}"), None);
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(r.header("x-dotkv-token").is_some());
        assert_eq!(n.get(&format!("/v1/{t}")).json(), check);
    }
    assert_eq!(n.req("DELETE", "/v1/register/cfg", None).status, 200);
    assert_eq!(n.get("/v1/register/cfg").status, 404);

    // Keys with slashes, spaces and non-ASCII, percent-encoded or raw.
    n.post("/v1/counter/a%2Fb%20c%C3%A9", r#"{"add":1}"#);
    assert_eq!(n.get("/v1/counter/a/b%20c%C3%A9").json()["key"], "a/b cé");
    assert_eq!(n.get("/v1/counter/a/b%20c%C3%A9").json()["value"], 1);
}

#[test]
fn register_answers_carry_the_lww_order_key() {
    use dotkv_api::LwwOrder;
    let n = TestNode::start();
    let order = |r: &common::Resp| -> (String, LwwOrder) {
        let h = r
            .header("x-dotkv-hlc")
            .unwrap_or_else(|| panic!("no X-Dotkv-Hlc in {:?}", r.headers))
            .to_string();
        let key = h.parse().unwrap_or_else(|e| panic!("{e}"));
        (h, key)
    };
    let first = n.put("/v1/register/h", r#""one""#);
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(first.json(), json!({"key": "h"}), "the header is additive");
    let (h1, k1) = order(&first);
    let second = n.put("/v1/register/h", r#""two""#);
    assert_eq!(second.status, 200, "{}", second.text());
    let (h2, k2) = order(&second);
    assert!(k2 > k1, "{h2} must order after {h1}");
    assert_eq!(k1.replica, k2.replica, "one node, one replica");
    // <decimal hlc>.<16 lowercase hex digits>
    let (num, replica) = h2.split_once('.').unwrap();
    assert!(num.bytes().all(|b| b.is_ascii_digit()), "{h2}");
    assert!(
        replica.len() == 16
            && replica
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
        "{h2}"
    );

    // A read shows the winner's key: the second write's.
    let r = n.get("/v1/register/h");
    assert_eq!(r.json(), json!({"key": "h", "value": "two"}));
    assert_eq!(r.header("x-dotkv-hlc"), Some(h2.as_str()));

    // Only register answers carry it.
    let r = n.put("/v1/mvregister/h", "1");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-dotkv-hlc"), None);
    assert_eq!(n.get("/v1/mvregister/h").header("x-dotkv-hlc"), None);
    assert_eq!(n.get("/v1/register/unset").header("x-dotkv-hlc"), None);
}

#[test]
fn sets_paging_contains_and_listing() {
    let n = TestNode::start();
    let r = n.post(
        "/v1/set/s",
        r#"{"add": ["b", "a", 3, 1.5, "5"], "remove": []}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let page = n.get("/v1/set/s").json();
    let mut all: Vec<String> = page["elements"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.to_string())
        .collect();
    all.sort();
    assert_eq!(all, vec!["\"5\"", "\"a\"", "\"b\"", "1.5", "3"]);
    assert_eq!(page["next"], serde_json::Value::Null);

    // Paging walks every element once.
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..10 {
        let path = match &after {
            Some(a) => format!("/v1/set/s?limit=2&after={}", urlencode(a)),
            None => "/v1/set/s?limit=2".to_string(),
        };
        let p = n.get(&path).json();
        for e in p["elements"].as_array().unwrap() {
            seen.push(e.to_string());
        }
        match p["next"].as_str() {
            Some(next) => after = Some(next.to_string()),
            None => break,
        }
    }
    seen.sort();
    assert_eq!(seen, all);

    // contains: numbers and strings are distinct elements.
    assert_eq!(
        n.get("/v1/set/s?contains=a").json(),
        json!({"key": "s", "contains": true})
    );
    assert_eq!(n.get("/v1/set/s?contains=3").json()["contains"], true);
    assert_eq!(
        n.get("/v1/set/s?contains=%223%22").json()["contains"],
        false
    );
    assert_eq!(n.get("/v1/set/s?contains=%225%22").json()["contains"], true);
    assert_eq!(n.get("/v1/set/s?contains=zz").json()["contains"], false);

    n.post("/v1/set/s", r#"{"remove": ["a", 3]}"#);
    assert_eq!(n.get("/v1/set/s?contains=a").json()["contains"], false);
    assert_eq!(
        n.get("/v1/set/s").json()["elements"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    assert_eq!(n.req("DELETE", "/v1/set/s", None).status, 200);
    assert_eq!(
        n.get("/v1/set/s").json(),
        json!({"key": "s", "elements": [], "next": null})
    );

    // Listing keys by prefix, with paging.
    for k in ["user/1", "user/2", "user/3", "other"] {
        n.post(&format!("/v1/flag/{k}"), r#"{"enable":true}"#);
    }
    let l = n.get("/v1/flag?prefix=user/&limit=2").json();
    assert_eq!(l, json!({"keys": ["user/1", "user/2"], "next": "user/2"}));
    let l = n.get("/v1/flag?prefix=user/&limit=2&after=user/2").json();
    assert_eq!(l, json!({"keys": ["user/3"], "next": null}));
    assert_eq!(
        n.get("/v1/flag").json()["keys"].as_array().unwrap().len(),
        4
    );
    assert_eq!(
        n.get("/v1/counter").json(),
        json!({"keys": [], "next": null})
    );
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `n` arrays, one inside the other, around `1`.
fn nested(n: usize) -> String {
    format!("{}1{}", "[".repeat(n), "]".repeat(n))
}

/// The nesting of arrays in a value made by [`nested`].
fn depth_of(mut v: &serde_json::Value) -> usize {
    let mut n = 0;
    while let Some(inner) = v.as_array().and_then(|a| a.first()) {
        v = inner;
        n += 1;
    }
    n
}

#[test]
fn values_nest_at_most_max_value_depth_so_every_answer_parses() {
    let n = TestNode::start();
    // The deepest value accepted comes back in answers that serde_json, with
    // its limit of 128 levels, still reads (`json()` parses with it), through
    // the single-key routes, a batch, and the CLI.
    for t in ["register", "mvregister"] {
        let r = n.put(&format!("/v1/{t}/deep"), &nested(100));
        assert_eq!(r.status, 200, "{t}: {}", r.text());
    }
    assert_eq!(depth_of(&n.get("/v1/register/deep").json()["value"]), 100);
    assert_eq!(
        depth_of(&n.get("/v1/mvregister/deep").json()["values"][0]),
        100
    );
    let batch = |depth: usize| {
        format!(
            r#"{{"ops":[{{"type":"mvregister","key":"b","op":{{"set":{}}}}}]}}"#,
            nested(depth)
        )
    };
    let r = n.post("/v1/batch", &batch(100));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        depth_of(&n.get("/v1/mvregister/b").json()["values"][0]),
        100
    );
    let url = format!("http://{}", n.addr);
    for t in ["register", "mvregister"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_dotkv"))
            .args(["--url", &url, "--json", t, "get", "deep"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "dotkv {t} get: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // One level more is refused, whichever way it comes, and nothing is
    // written; past what JSON parsers read at all, the body is malformed.
    for r in [
        n.put("/v1/register/deeper", &nested(101)),
        n.put("/v1/mvregister/deeper", &nested(101)),
        n.post("/v1/batch", &batch(101)),
    ] {
        common::assert_error(&r, 413, "too_large", "100 levels");
    }
    assert_eq!(n.get("/v1/register/deeper").status, 404);
    assert_eq!(n.get("/v1/mvregister/deeper").json()["values"], json!([]));
    common::assert_error(
        &n.put("/v1/register/deeper", &nested(200)),
        400,
        "malformed",
        "recursion limit",
    );
    // A lower limit from the config applies.
    let low = TestNode::start_with("[limits]\nmax_value_depth = 2\n");
    assert_eq!(low.put("/v1/register/r", r#"{"a":[1]}"#).status, 200);
    common::assert_error(
        &low.put("/v1/register/r", r#"{"a":[[1]]}"#),
        413,
        "too_large",
        "2 levels",
    );
}

#[test]
fn batches_are_atomic() {
    let n = TestNode::start();
    let ok = json!({"ops": [
        {"type": "counter", "key": "c", "op": {"add": 2}},
        {"type": "register", "key": "r", "op": {"set": {"v": 1}}},
        {"type": "mvregister", "key": "m", "op": {"set": "x"}},
        {"type": "set", "key": "s", "op": {"add": ["a", "b"], "remove": []}},
        {"type": "flag", "key": "f", "op": {"enable": true}},
        {"type": "counter", "key": "c", "op": {"add": 3}},
    ]});
    let r = n.post("/v1/batch", &ok.to_string());
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.header("x-dotkv-token").is_some());
    assert_eq!(n.get("/v1/counter/c").json()["value"], 5);
    assert_eq!(n.get("/v1/register/r").json()["value"], json!({"v": 1}));
    assert_eq!(n.get("/v1/flag/f").json()["value"], true);

    // One invalid op: nothing applied, 422.
    let bad = json!({"ops": [
        {"type": "counter", "key": "c", "op": {"add": 100}},
        {"type": "flag", "key": "f2", "op": {"add": 1}},
    ]});
    let r = n.post("/v1/batch", &bad.to_string());
    assert_eq!(
        (r.status, r.code().as_str()),
        (422, "invalid_op"),
        "{}",
        r.text()
    );
    assert_eq!(n.get("/v1/counter/c").json()["value"], 5);

    // An overflow in the middle of a batch: nothing applied, 409.
    n.post("/v1/counter/big", &json!({"add": i64::MAX}).to_string());
    let over = json!({"ops": [
        {"type": "counter", "key": "c", "op": {"add": 100}},
        {"type": "set", "key": "s", "op": {"add": ["zzz"]}},
        {"type": "counter", "key": "big", "op": {"add": 1}},
    ]});
    let r = n.post("/v1/batch", &over.to_string());
    assert_eq!(
        (r.status, r.code().as_str()),
        (409, "conflict"),
        "{}",
        r.text()
    );
    assert_eq!(n.get("/v1/counter/c").json()["value"], 5);
    assert_eq!(n.get("/v1/set/s?contains=zzz").json()["contains"], false);

    // Deletes in a batch, and an empty key inside a batch.
    let del = json!({"ops": [{"type": "set", "key": "s", "op": {"delete": true}}]});
    assert_eq!(n.post("/v1/batch", &del.to_string()).status, 200);
    assert_eq!(n.get("/v1/set/s").json()["elements"], json!([]));
    let empty = json!({"ops": [{"type": "flag", "key": "", "op": {"enable": true}}]});
    assert_eq!(n.post("/v1/batch", &empty.to_string()).status, 400);
}

#[test]
fn every_error_status() {
    let n = TestNode::start_with(
        "[limits]\nmax_key_bytes = 16\nmax_body_bytes = 2048\nmax_value_bytes = 512\nmax_elements_per_op = 4\n",
    );
    let expect = |r: common::Resp, status: u16, code: &str| {
        assert_eq!(r.status, status, "{}", r.text());
        assert_eq!(r.code(), code, "{}", r.text());
        assert_eq!(r.header("content-type"), Some("application/json"));
    };
    // 400: malformed JSON, empty key, bad query, bad token, invalid UTF-8 keys.
    expect(n.post("/v1/counter/c", "{\"add\": "), 400, "malformed");
    expect(n.post("/v1/counter/c", ""), 400, "malformed");
    expect(n.get("/v1/counter/"), 400, "malformed");
    expect(n.get("/v1/set/s?limit=abc"), 400, "malformed");
    expect(
        n.post("/v1/counter/c?w=everywhere", r#"{"add":1}"#),
        400,
        "malformed",
    );
    expect(
        n.post("/v1/counter/c?timeout_ms=99999999", r#"{"add":1}"#),
        400,
        "malformed",
    );
    let r = request(
        n.addr,
        "GET",
        "/v1/counter/c",
        &[("x-dotkv-token", "!!notatoken")],
        None,
    );
    expect(r, 400, "malformed");
    expect(n.get("/v1/counter/%FF%FE"), 400, "malformed");
    // A '%' without two hex digits is refused, not taken literally; a key
    // with a '%' in it is sent as %25.
    expect(n.get("/v1/counter/%zz"), 400, "malformed");
    expect(n.post("/v1/counter/100%", r#"{"add":1}"#), 400, "malformed");
    n.post("/v1/counter/100%25", r#"{"add":1}"#);
    assert_eq!(n.get("/v1/counter/100%25").json()["key"], "100%");
    // The same in query strings, where the form decoder would otherwise
    // keep the '%' or turn bytes that are not UTF-8 into U+FFFD.
    for path in [
        "/v1/counter?prefix=%FF",
        "/v1/counter?prefix=%E2",
        "/v1/counter?prefix=100%",
        "/v1/set/s?contains=%E2%9C",
        "/v1/set/s?after=%zz",
    ] {
        expect(n.get(path), 400, "malformed");
    }
    assert_eq!(
        n.get("/v1/counter?prefix=100%25").json()["keys"],
        json!(["100%"])
    );
    // An integer beyond 64 bits is refused, not stored rounded to a float;
    // the ends of the 64-bit range are kept exactly.
    let huge = "123456789012345678901234567890";
    expect(n.put("/v1/register/r", huge), 400, "malformed");
    expect(
        n.post("/v1/set/s", &format!(r#"{{"add":[{huge}]}}"#)),
        400,
        "malformed",
    );
    expect(
        n.get(&format!("/v1/set/s?contains={huge}")),
        400,
        "malformed",
    );
    expect(n.get(&format!("/v1/set/s?after=-{huge}")), 400, "malformed");
    let batch = format!(r#"{{"ops":[{{"type":"register","key":"r","op":{{"set":-{huge}}}}}]}}"#);
    expect(n.post("/v1/batch", &batch), 400, "malformed");
    assert_eq!(n.get("/v1/register/r").status, 404);
    assert_eq!(
        n.put(
            "/v1/register/r",
            "[18446744073709551615, -9223372036854775808]"
        )
        .status,
        200
    );
    assert_eq!(
        n.get("/v1/register/r").text(),
        r#"{"key":"r","value":[18446744073709551615,-9223372036854775808]}"#
    );
    let r = try_request(
        n.addr,
        "POST",
        b"/v1/counter/c",
        &[("content-type", "application/json")],
        Some(b"{\"add\": \"\xff\"}"),
    )
    .unwrap();
    expect(r, 400, "malformed");
    // 404: unknown namespace, unset register, unknown endpoint.
    expect(n.get("/v1/hashmap/k"), 404, "not_found");
    expect(n.get("/v1/hashmap"), 404, "not_found");
    expect(n.get("/v1/register/never"), 404, "not_found");
    expect(n.get("/v2/counter/k"), 404, "not_found");
    // 405: unsupported methods.
    expect(
        n.put("/v1/counter/c", r#"{"add":1}"#),
        405,
        "method_not_allowed",
    );
    expect(n.post("/v1/register/r", "1"), 405, "method_not_allowed");
    expect(
        n.req("PATCH", "/v1/set/s", Some("{}")),
        405,
        "method_not_allowed",
    );
    expect(n.get("/v1/batch"), 405, "method_not_allowed");
    expect(
        n.req("DELETE", "/v1/counter", None),
        405,
        "method_not_allowed",
    );
    expect(n.post("/v1/status", "{}"), 405, "method_not_allowed");
    // A 405 names the methods the route takes in `Allow`.
    let r = n.put("/v1/counter/c", r#"{"add":1}"#);
    assert_eq!(r.header("allow"), Some("GET, HEAD, POST, DELETE"));
    assert_eq!(n.get("/v1/batch").header("allow"), Some("POST"));
    assert_eq!(
        n.req("DELETE", "/v1/counter", None).header("allow"),
        Some("GET, HEAD")
    );
    // HEAD answers as GET would, without the body.
    let got = n.get("/v1/counter/c");
    let head = n.req("HEAD", "/v1/counter/c", None);
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty(), "HEAD answered with a body");
    assert_eq!(
        head.header("content-length"),
        Some(got.body.len().to_string().as_str())
    );
    assert!(head.header("x-dotkv-token").is_some());
    assert_eq!(n.req("HEAD", "/v1/register/never", None).status, 404);
    for path in ["/v1/counter?prefix=", "/v1/status", "/metrics", "/health"] {
        assert_eq!(n.req("HEAD", path, None).status, 200, "HEAD {path}");
    }
    // 409: counter overflow, both ways; the node keeps its value.
    n.post("/v1/counter/big", &json!({"add": i64::MAX}).to_string());
    expect(n.post("/v1/counter/big", r#"{"add": 1}"#), 409, "conflict");
    n.post("/v1/counter/small", &json!({"add": i64::MIN}).to_string());
    expect(
        n.post("/v1/counter/small", r#"{"add": -1}"#),
        409,
        "conflict",
    );
    assert_eq!(n.get("/v1/counter/big").json()["value"], i64::MAX);
    // Only the value's range limits adds: swinging between the ends of it
    // takes the node's running totals of each sign past u64::MAX (from the
    // fourth add on here), and every add still lands.
    let mut want = 0i64;
    for round in 0..3 {
        for add in [i64::MAX, i64::MIN] {
            want += add;
            let r = n.post("/v1/counter/seesaw", &json!({ "add": add }).to_string());
            assert_eq!(r.status, 200, "round {round}, add {add}: {:?}", r.json());
            assert_eq!(r.json()["value"], want);
        }
    }
    assert_eq!(n.get("/v1/counter/seesaw").json()["value"], -3);
    // 413: oversized key, value, body, too many elements.
    expect(
        n.get(&format!("/v1/counter/{}", "k".repeat(17))),
        413,
        "too_large",
    );
    expect(
        n.put("/v1/register/r", &json!("v".repeat(600)).to_string()),
        413,
        "too_large",
    );
    expect(
        n.put("/v1/register/r", &json!("v".repeat(3000)).to_string()),
        413,
        "too_large",
    );
    expect(
        n.post("/v1/set/s", r#"{"add":["a","b","c","d","e"]}"#),
        413,
        "too_large",
    );
    // A body declared over the limit is refused from its Content-Length at
    // once, on an object route and a router route alike, without waiting for
    // a body the client may never send (that wait would last the request
    // timeout, two minutes).
    for path in ["/v1/register/r", "/v1/batch"] {
        let started = std::time::Instant::now();
        let r = declared_but_unsent(n.addr, path, 1 << 30);
        expect(r, 413, "too_large");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "{path}: answered after {:?}",
            started.elapsed()
        );
    }
    // 415: wrong content type.
    let r = request(
        n.addr,
        "POST",
        "/v1/counter/c",
        &[("content-type", "text/plain")],
        Some(b"{\"add\":1}"),
    );
    expect(r, 415, "unsupported_media_type");
    let r = request(
        n.addr,
        "POST",
        "/v1/counter/c",
        &[("content-type", "application/x-www-form-urlencoded")],
        Some(b"add=1"),
    );
    expect(r, 415, "unsupported_media_type");
    // 422: right JSON, wrong shape or type.
    expect(
        n.post("/v1/counter/c", r#"{"add": "five"}"#),
        422,
        "invalid_op",
    );
    expect(
        n.post("/v1/counter/c", r#"{"add": 1.5}"#),
        422,
        "invalid_op",
    );
    expect(n.post("/v1/counter/c", r#"[1]"#), 422, "invalid_op");
    expect(
        n.post("/v1/set/s", r#"{"add": [{"nested": true}]}"#),
        422,
        "invalid_op",
    );
    expect(n.post("/v1/set/s", r#"{"add": [null]}"#), 422, "invalid_op");
    expect(
        n.post("/v1/flag/f", r#"{"enable": "yes"}"#),
        422,
        "invalid_op",
    );
    expect(
        n.post(
            "/v1/batch",
            r#"{"ops": [{"type": "nope", "key": "k", "op": {}}]}"#,
        ),
        422,
        "invalid_op",
    );
    // 504: a causal token this node cannot cover in time.
    let mut vv = dotkv_crdt::VersionVector::new();
    vv.set_max(dotkv_crdt::ReplicaId(12345), 10);
    let token = base64_token(&vv);
    let r = request(
        n.addr,
        "GET",
        "/v1/counter/c?timeout_ms=200",
        &[("x-dotkv-token", &token)],
        None,
    );
    expect(r, 504, "timeout");
    // The node is still serving after all of that.
    assert_eq!(n.get("/health").status, 200);
    assert_eq!(n.post("/v1/counter/c", r#"{"add":1}"#).json()["value"], 1);
}

fn base64_token(vv: &dotkv_crdt::VersionVector) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(dotkv_crdt::encode(vv).unwrap())
}

#[test]
fn tokens_give_read_your_writes() {
    let n = TestNode::start();
    let w = n.post("/v1/counter/c", r#"{"add": 7}"#);
    let token = w.header("x-dotkv-token").unwrap().to_string();
    let r = request(
        n.addr,
        "GET",
        "/v1/counter/c",
        &[("x-dotkv-token", &token)],
        None,
    );
    assert_eq!(r.json()["value"], 7);
    // A read's token covers what it saw.
    let t2 = r.header("x-dotkv-token").unwrap().to_string();
    let r = request(
        n.addr,
        "GET",
        "/v1/counter/c?timeout_ms=100",
        &[("x-dotkv-token", &t2)],
        None,
    );
    assert_eq!(r.status, 200);
    // w=dc and w=all on a single node are satisfied by the local commit.
    for w in ["local", "dc", "all"] {
        let r = n.post(
            &format!("/v1/counter/c?w={w}&timeout_ms=1000"),
            r#"{"add": 1}"#,
        );
        assert_eq!(r.status, 200, "{}", r.text());
    }
}

/// Sends only the head of a JSON `POST` that declares `length` body bytes
/// and reads the answer, which must come without the body.
fn declared_but_unsent(addr: std::net::SocketAddr, path: &str, length: u64) -> common::Resp {
    use std::io::{Read, Write};
    let mut s =
        std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n\
         content-length: {length}\r\n\r\n"
    );
    s.write_all(head.as_bytes()).unwrap();
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    // The answer is complete once the node closes, or once its declared
    // length has arrived (hyper may keep the connection open).
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) => panic!("{path}: no answer without the body: {e}"),
        }
        if let Ok(r) = common::parse_response(&raw) {
            let length = r.header("content-length").and_then(|v| v.parse().ok());
            if length == Some(r.body.len()) {
                return r;
            }
        }
    }
    common::parse_response(&raw).unwrap()
}

#[test]
fn auth_and_overload() {
    let n = TestNode::start_with("[auth]\ntokens = [\"s3cret\", \"other\"]\n");
    let r = n.get("/v1/counter/c");
    assert_eq!((r.status, r.code().as_str()), (401, "unauthorized"));
    assert_eq!(r.header("www-authenticate"), Some("Bearer realm=\"dotkv\""));
    let r = request(
        n.addr,
        "GET",
        "/v1/counter/c",
        &[("authorization", "Bearer wrong")],
        None,
    );
    assert_eq!(r.status, 401);
    let r = request(
        n.addr,
        "GET",
        "/v1/counter/c",
        &[("authorization", "Bearer s3cret")],
        None,
    );
    assert_eq!(r.status, 200);
    // The scheme is case-insensitive; another scheme is no bearer token.
    // Each 401 says which of the two it is, in its message and its
    // challenge.
    let bad_request = Some("Bearer realm=\"dotkv\", error=\"invalid_request\"");
    let bad_token = Some("Bearer realm=\"dotkv\", error=\"invalid_token\"");
    for (value, status, challenge) in [
        ("bearer s3cret", 200, None),
        ("BEARER  s3cret ", 200, None),
        ("Basic czNjcmV0", 401, bad_request),
        ("Bearer", 401, bad_request),
        ("s3cret", 401, bad_request),
        ("Bearer wrong", 401, bad_token),
    ] {
        let r = request(
            n.addr,
            "GET",
            "/v1/counter/c",
            &[("authorization", value)],
            None,
        );
        assert_eq!(r.status, status, "Authorization: {value}: {}", r.text());
        assert_eq!(r.header("www-authenticate"), challenge, "{value}");
        if challenge == bad_request {
            common::assert_error(&r, 401, "unauthorized", "must be Bearer");
        }
    }
    let r = request(
        n.addr,
        "POST",
        "/v1/counter/c",
        &[
            ("authorization", "Bearer other"),
            ("content-type", "application/json"),
        ],
        Some(b"{\"add\":1}"),
    );
    assert_eq!(r.json()["value"], 1);
    // /health and /metrics stay open.
    assert_eq!(n.get("/health").status, 200);
    assert_eq!(n.get("/metrics").status, 200);

    // 503: every in-flight slot taken, and the queue wait runs out.
    let n = TestNode::start_with("");
    let n2 = {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("c.toml");
        let mut text = common::config_text(&dir.path().join("d"), "127.0.0.1:0", "");
        text = text.replace(
            "[http]\n",
            "[http]\nmax_in_flight = 1\nqueue_timeout_ms = 100\n",
        );
        std::fs::write(&cfg, text).unwrap();
        let (child, addr) = common::spawn(&cfg);
        (common::KillOnDrop(child), addr, dir)
    };
    drop(n);
    let (mut child, addr, _dir) = n2;
    let mut vv = dotkv_crdt::VersionVector::new();
    vv.set_max(dotkv_crdt::ReplicaId(99), 1);
    let token = base64_token(&vv);
    let holder = std::thread::spawn(move || {
        request(
            addr,
            "GET",
            "/v1/counter/c?timeout_ms=3000",
            &[("x-dotkv-token", &token)],
            None,
        )
        .status
    });
    std::thread::sleep(std::time::Duration::from_millis(500));
    let r = request(addr, "GET", "/v1/counter/c", &[], None);
    assert_eq!(
        (r.status, r.code().as_str()),
        (503, "not_ready"),
        "{}",
        r.text()
    );
    assert_eq!(holder.join().unwrap(), 504);
    let _ = child.kill();
    let _ = child.wait();
}

/// A client cannot hold the node's connections without sending requests: slow
/// headers and idle keep-alive connections are closed after
/// `http.header_timeout_ms`, a body that never arrives is answered with 504
/// after `http.request_timeout_ms`, and a connection over
/// `http.max_connections` is answered with 503 and closed.
#[test]
fn connections_are_bounded() {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    let text = common::config_text(&dir.path().join("d"), "127.0.0.1:0", "").replace(
        "[http]\n",
        "[http]\nmax_connections = 3\nheader_timeout_ms = 1000\nrequest_timeout_ms = 1500\n",
    );
    std::fs::write(&cfg, text).unwrap();
    let (child, addr) = common::spawn(&cfg);
    let mut child = common::KillOnDrop(child);
    let connect = || {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s
    };
    // Read until the node closes the connection; returns what it sent and
    // how long that took.
    let until_closed = |s: &mut TcpStream| {
        let started = Instant::now();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(e) => panic!("the node kept the connection open: {e}"),
            }
        }
        (got, started.elapsed())
    };

    // Headers that never end.
    let mut s = connect();
    s.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n").unwrap();
    let (got, took) = until_closed(&mut s);
    assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
    assert!(took >= Duration::from_millis(500), "closed after {took:?}");

    // A keep-alive connection that goes quiet after one request.
    let mut s = connect();
    s.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    let (got, _) = until_closed(&mut s);
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&got)
    );

    let metric = |text: &str, name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /metrics"))
    };

    // Bodies that never arrive: a write whose head promises more bytes than
    // it sends, and a read whose chunked body never starts. Each is answered
    // 504 after `http.request_timeout_ms`, only the write's answer warns that
    // it may have been applied, and nothing was written.
    let stalled = [
        (
            &b"POST /v1/counter/c HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"add\":1}"[..],
            true,
        ),
        (
            &b"GET /v1/counter/c HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"[..],
            false,
        ),
    ];
    for (raw, write) in stalled {
        let mut s = connect();
        s.write_all(raw).unwrap();
        let (got, took) = until_closed(&mut s);
        let got = String::from_utf8_lossy(&got);
        assert!(got.starts_with("HTTP/1.1 504"), "{got}");
        assert!(got.contains("\"code\":\"timeout\""), "{got}");
        assert!(got.contains("http.request_timeout_ms"), "{got}");
        assert_eq!(got.contains("write may still"), write, "{got}");
        assert!(
            took >= Duration::from_millis(1000),
            "answered after {took:?}"
        );
    }
    let r = request(addr, "GET", "/v1/counter/c", &[], None);
    assert_eq!(r.json()["value"], 0, "{}", r.text());

    // Three connections held open; a fourth is refused with 503, and once
    // they close a new one is served. The node may still be closing
    // connections this test opened before (the last one asked for the
    // count itself), and one of those in its count would make it refuse a
    // held connection instead; so each try starts when the count is down
    // to the asker's, polls well within the held connections' header
    // timeout, and another try follows if no request was refused.
    let settle = || {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let m = request(addr, "GET", "/metrics", &[], None).text();
            if metric(&m, "dotkv_http_connections_open") == 1 {
                break;
            }
            assert!(Instant::now() < deadline, "connections stayed open: {m}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let mut last = None;
    let mut refused_while_held = None;
    for _ in 0..5 {
        settle();
        let held: Vec<TcpStream> = (0..3).map(|_| connect()).collect();
        let until = Instant::now() + Duration::from_millis(600);
        while Instant::now() < until {
            let r = request(addr, "GET", "/health", &[], None);
            if r.status == 503 {
                refused_while_held = Some((r, held));
                break;
            }
            last = Some(r);
            std::thread::sleep(Duration::from_millis(50));
        }
        if refused_while_held.is_some() {
            break;
        }
    }
    let Some((refused, held)) = refused_while_held else {
        panic!("no fourth connection was refused in five tries; the last answer: {last:?}");
    };
    common::assert_error(&refused, 503, "not_ready", "max_connections");
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match common::try_request(addr, "GET", b"/health", &[], None) {
            Ok(r) if r.status == 200 => break,
            other => {
                assert!(
                    Instant::now() < deadline,
                    "no slot came back: {:?}",
                    other.map(|r| r.status)
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
    let m = request(addr, "GET", "/metrics", &[], None).text();
    assert!(
        metric(&m, "dotkv_http_connections_refused_total") >= 1,
        "{m}"
    );
    assert!(
        metric(&m, "dotkv_http_connections_accepted_total") >= 5,
        "{m}"
    );
    // This request's own connection is open; the held ones are closed.
    assert!(
        (1..=3).contains(&metric(&m, "dotkv_http_connections_open")),
        "{m}"
    );
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn status_health_metrics() {
    let n = TestNode::start();
    n.post("/v1/counter/c", r#"{"add": 1}"#);
    let s = n.get("/v1/status").json();
    assert_eq!(s["datacenter"], "dc1");
    assert_eq!(s["node"], "node1");
    assert!(s["node_id"].as_str().unwrap().len() >= 32);
    // `replica` is the version vector's key for this node: 16 hex digits.
    let replica = s["replica"].as_str().unwrap();
    assert!(
        replica.len() == 16 && replica.bytes().all(|b| b.is_ascii_hexdigit()),
        "{s}"
    );
    assert_eq!(s["version_vector"].as_object().unwrap().len(), 1);
    assert_eq!(s["version_vector"][replica], 1, "{s}");
    assert_eq!(s["peers"], json!([]));
    assert_eq!(n.get("/health").json()["status"], "ok");
    let m = n.get("/metrics").text();
    assert!(m.contains("dotkv_http_requests_total{method=\"POST\",route=\"/v1/counter/{key}\",status=\"200\"} 1"), "{m}");
    assert!(m.contains("dotkv_http_request_duration_seconds_bucket"));
    assert!(m.contains("dotkv_storage_commits_total"));
    assert!(m.contains("dotkv_storage_live_data_bytes"));
}
