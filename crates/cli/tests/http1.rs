//! The HTTP wire as clients see it, served by the node's own HTTP/1 loop
//! (`http.direct_http1 = true`, the default) and by hyper alone
//! (`direct_http1 = false`): the answers must not tell them apart.
//! Pipelined requests, requests split across writes, chunked bodies,
//! `Expect: 100-continue`, HTTP/1.0, HEAD, `Connection: close`, malformed
//! heads, and cleartext HTTP/2 on the same port.

mod common;

use common::{Resp, TestNode};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

fn node(direct: bool) -> TestNode {
    node_with(&format!("direct_http1 = {direct}\n"))
}

/// A node with `http` options added to its config.
fn node_with(http: &str) -> TestNode {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    let text = common::config_text(&dir.path().join("d"), "127.0.0.1:0", "")
        .replace("[http]\n", &format!("[http]\n{http}"));
    std::fs::write(&config, text).unwrap();
    let (child, addr) = common::spawn(&config);
    TestNode {
        child: Some(child),
        addr,
        dir,
        config,
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

/// One answer from a keep-alive connection: its head, then the body its
/// `Content-Length` announces (none after a HEAD). Bytes past it stay in
/// `pending` for the next answer.
fn answer(s: &mut TcpStream, pending: &mut Vec<u8>, head_only: bool) -> Resp {
    loop {
        if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8(pending[..end].to_vec()).unwrap();
            let length = head
                .lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                .map_or(0, |(_, v)| v.trim().parse::<usize>().unwrap());
            let total = end + 4 + if head_only { 0 } else { length };
            if pending.len() >= total {
                let raw: Vec<u8> = pending.drain(..total).collect();
                return common::parse_response(&raw).unwrap();
            }
        }
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).unwrap();
        assert!(
            n > 0,
            "closed before a whole answer: {:?}",
            String::from_utf8_lossy(pending)
        );
        pending.extend_from_slice(&chunk[..n]);
    }
}

/// Reads until the node closes the connection; what it sent after `pending`.
fn until_closed(s: &mut TcpStream, pending: &mut Vec<u8>) -> Vec<u8> {
    s.read_to_end(pending).unwrap();
    std::mem::take(pending)
}

const ADD: &[u8] = b"POST /v1/counter/c HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\ncontent-length: 10\r\n\r\n{\"add\": 2}";

#[test]
fn pipelined_split_and_closing_requests() {
    for direct in [true, false] {
        let n = node(direct);
        let mut s = connect(n.addr);
        let mut pending = Vec::new();
        // Two requests in one write.
        s.write_all(&[ADD, ADD].concat()).unwrap();
        for want in [2, 4] {
            let r = answer(&mut s, &mut pending, false);
            assert_eq!((r.status, r.json()["value"].as_i64()), (200, Some(want)));
            assert!(r.header("x-dotkv-token").is_some(), "{:?}", r.headers);
            assert!(r.header("date").is_some(), "{:?}", r.headers);
            assert_eq!(r.header("content-type"), Some("application/json"));
            assert_eq!(r.header("connection"), None);
        }
        // One request in four writes: the head cut mid-line and
        // mid-header, the body sent after it.
        let cuts = [0, 10, 40, ADD.len() - 10, ADD.len()];
        for w in cuts.windows(2) {
            s.write_all(&ADD[w[0]..w[1]]).unwrap();
            std::thread::sleep(Duration::from_millis(30));
        }
        let r = answer(&mut s, &mut pending, false);
        assert_eq!((r.status, r.json()["value"].as_i64()), (200, Some(6)));
        // HEAD has GET's length and no body.
        s.write_all(b"HEAD /v1/counter/c HTTP/1.1\r\nhost: t\r\n\r\n")
            .unwrap();
        let head = answer(&mut s, &mut pending, true);
        assert_eq!(head.status, 200);
        assert!(head.body.is_empty());
        // Connection: close is answered, said back, and closes.
        s.write_all(b"GET /v1/counter/c HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n")
            .unwrap();
        let r = answer(&mut s, &mut pending, false);
        assert_eq!((r.status, r.json()["value"].as_i64()), (200, Some(6)));
        assert_eq!(r.header("connection"), Some("close"));
        assert_eq!(
            head.header("content-length").map(str::to_string),
            Some(r.body.len().to_string()),
            "direct: {direct}"
        );
        let rest = until_closed(&mut s, &mut pending);
        assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    }
}

#[test]
fn chunked_continue_http10_and_malformed_requests() {
    for direct in [true, false] {
        let n = node(direct);
        // A chunked body, then a plain request on the same connection.
        let mut s = connect(n.addr);
        let mut pending = Vec::new();
        s.write_all(b"POST /v1/counter/k HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n4\r\n{\"ad\r\n6\r\nd\": 5}\r\n0\r\n\r\n")
            .unwrap();
        let r = answer(&mut s, &mut pending, false);
        assert_eq!((r.status, r.json()["value"].as_i64()), (200, Some(5)));
        s.write_all(b"GET /v1/counter/k HTTP/1.1\r\nhost: t\r\n\r\n")
            .unwrap();
        let r = answer(&mut s, &mut pending, false);
        assert_eq!((r.status, r.json()["value"].as_i64()), (200, Some(5)));

        // Expect: 100-continue: the body is sent once the node asks for it.
        let mut s = connect(n.addr);
        let mut pending = Vec::new();
        s.write_all(b"POST /v1/counter/k HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\nexpect: 100-continue\r\ncontent-length: 10\r\n\r\n")
            .unwrap();
        let go = answer(&mut s, &mut pending, true);
        assert_eq!(go.status, 100, "direct: {direct}");
        s.write_all(b"{\"add\": 1}").unwrap();
        let r = answer(&mut s, &mut pending, false);
        assert_eq!((r.status, r.json()["value"].as_i64()), (200, Some(6)));

        // HTTP/1.0, which closes after its answer.
        let mut s = connect(n.addr);
        let mut pending = Vec::new();
        s.write_all(b"GET /v1/counter/k HTTP/1.0\r\n\r\n").unwrap();
        let raw = until_closed(&mut s, &mut pending);
        let r = common::parse_response(&raw).unwrap();
        assert_eq!((r.status, r.json()["value"].as_i64()), (200, Some(6)));

        // A head that does not parse, after a good request on the same
        // connection: the good one is answered, the bad one gets an empty
        // 400 and the connection closes.
        let mut s = connect(n.addr);
        let mut pending = Vec::new();
        s.write_all(
            b"GET /health HTTP/1.1\r\nhost: t\r\n\r\nGET /health HTTP/1.1\r\nbad header\r\n\r\n",
        )
        .unwrap();
        let r = answer(&mut s, &mut pending, false);
        assert_eq!(r.status, 200);
        let raw = until_closed(&mut s, &mut pending);
        let r = common::parse_response(&raw).unwrap();
        assert_eq!((r.status, r.body.len()), (400, 0), "direct: {direct}");

        // A body over the limit is refused from its length, unread.
        let r = common::request(
            n.addr,
            "POST",
            "/v1/counter/k",
            &[
                ("content-type", "application/json"),
                ("content-length", "4194305"),
            ],
            None,
        );
        common::assert_error(&r, 413, "too_large", "Content-Length");
    }
}

#[test]
fn cleartext_http2_shares_the_port() {
    use http_body_util::{BodyExt, Full};
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for direct in [true, false] {
        let n = node(direct);
        rt.block_on(async {
            let tcp = tokio::net::TcpStream::connect(n.addr).await.unwrap();
            let (mut send, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                    .await
                    .unwrap();
            tokio::spawn(conn);
            for want in [3, 6] {
                let req = hyper::Request::post(format!("http://{}/v1/counter/h2", n.addr))
                    .header("content-type", "application/json")
                    .body(Full::new(bytes::Bytes::from_static(b"{\"add\": 3}")))
                    .unwrap();
                let resp = send.send_request(req).await.unwrap();
                assert_eq!(resp.version(), hyper::Version::HTTP_2);
                assert_eq!(resp.status(), 200);
                assert!(resp.headers().contains_key("x-dotkv-token"));
                let body = resp.into_body().collect().await.unwrap().to_bytes();
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                assert_eq!(v["value"].as_i64(), Some(want), "direct: {direct}");
            }
        });
    }
}

/// The longest header timeout TOML can hold is served, not an overflow.
#[test]
fn the_longest_header_timeout_is_served() {
    let n = node_with(&format!("header_timeout_ms = {}\n", i64::MAX));
    let mut s = connect(n.addr);
    let mut pending = Vec::new();
    for _ in 0..2 {
        s.write_all(ADD).unwrap();
        let r = answer(&mut s, &mut pending, false);
        assert_eq!(r.status, 200, "{}", r.text());
    }
}
