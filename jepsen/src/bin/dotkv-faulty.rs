//! `dotkv-faulty`: a dotkv node with a deliberate bug, to show that the
//! harness catches one. It exists only as a binary of the test harness: the
//! production `dotkv` binary has no way to turn any of this on, and dotkv-node
//! has no feature or hook for it.
//!
//! It runs a real node through the dotkv-node library (storage, replication,
//! the QUIC endpoint, the same HTTP handlers), and puts one fault in front of
//! the HTTP API:
//! - `lose-writes[:P]`: with probability P (default 0.1) a write is answered
//!   `200` with a plausible body and token, but never applied (an
//!   "acknowledged but lost" write: what acknowledging before a commit that
//!   then fails looks like to a client);
//! - `skip-causal-wait`: the `X-Dotkv-Token` of every request is dropped, so
//!   reads no longer wait for what the client has seen.
//!
//! Usage: `dotkv-faulty --fault FAULT -c CONFIG` (same config as `dotkv serve`).

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use clap::Parser;
use dotkv_node::{Config, Node};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "dotkv-faulty",
    about = "A dotkv node with a deliberate fault (test harness only)"
)]
struct Args {
    /// lose-writes[:P] or skip-causal-wait.
    #[arg(long)]
    fault: String,
    #[arg(long, short = 'c')]
    config: PathBuf,
}

#[derive(Clone, Copy, Debug)]
enum Fault {
    LoseWrites(f64),
    SkipCausalWait,
}

fn parse(s: &str) -> Option<Fault> {
    match s.split_once(':') {
        None if s == "lose-writes" => Some(Fault::LoseWrites(0.1)),
        Some(("lose-writes", p)) => p
            .parse()
            .ok()
            .filter(|p| (0.0..=1.0).contains(p))
            .map(Fault::LoseWrites),
        None if s == "skip-causal-wait" => Some(Fault::SkipCausalWait),
        _ => None,
    }
}

#[derive(Clone)]
struct FaultState {
    fault: Fault,
    node: Arc<Node>,
}

/// The answer a successful write would have had.
fn fake_body(method: &Method, path: &str) -> Option<String> {
    let key = |prefix: &str| path.strip_prefix(prefix).map(str::to_string);
    let j = |v: serde_json::Value| v.to_string();
    match *method {
        Method::POST => {
            if let Some(k) = key("/v1/set/") {
                Some(j(serde_json::json!({"key": k})))
            } else if let Some(k) = key("/v1/counter/") {
                Some(j(serde_json::json!({"key": k, "value": 0})))
            } else if path == "/v1/batch" {
                Some(j(serde_json::json!({"applied": 0})))
            } else {
                None
            }
        }
        Method::PUT => key("/v1/register/").map(|k| j(serde_json::json!({"key": k}))),
        _ => None,
    }
}

async fn inject(State(s): State<FaultState>, mut req: Request, next: Next) -> Response {
    match s.fault {
        Fault::SkipCausalWait => {
            req.headers_mut().remove(dotkv_api::TOKEN_HEADER);
        }
        Fault::LoseWrites(p) => {
            let path = req.uri().path().to_string();
            if let Some(body) = fake_body(req.method(), &path) {
                if rand::random::<f64>() < p {
                    let token = s.node.read_token().await;
                    let mut r = Response::new(Body::from(body));
                    *r.status_mut() = StatusCode::OK;
                    r.headers_mut()
                        .insert("content-type", HeaderValue::from_static("application/json"));
                    r.headers_mut().insert(dotkv_api::TOKEN_HEADER, token);
                    return r;
                }
            }
        }
    }
    next.run(req).await
}

async fn run(mut config: Config, fault: Fault) -> anyhow::Result<()> {
    let public: SocketAddr = config.http.listen;
    // The library's own server listens on loopback; clients use the faulty one.
    config.http.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    let node = Node::open(config)?;
    let inner = dotkv_node::node::bind(&node.config).await?;
    let app = axum::Router::new()
        .fallback_service(dotkv_node::http::api(node.clone()))
        .layer(axum::middleware::from_fn_with_state(
            FaultState {
                fault,
                node: node.clone(),
            },
            inject,
        ));
    let listener = tokio::net::TcpListener::bind(public).await?;
    println!("dotkv: listening on http://{public}");
    if let Some(q) = node.quic_addr() {
        println!("dotkv: quic on {q}");
    }
    tracing::warn!(?fault, "dotkv-faulty: this node has a deliberate fault");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let (shutdown, hurry) = dotkv_node::node::stop_signals();
    dotkv_node::node::serve(node, inner, shutdown, hurry).await?;
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let Some(fault) = parse(&args.fault) else {
        eprintln!(
            "error: unknown fault {:?} (lose-writes[:P], skip-causal-wait)",
            args.fault
        );
        return ExitCode::from(2);
    };
    let config = match Config::load(Some(&args.config)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let filter = EnvFilter::try_new(&config.log.level).unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config, fault)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
