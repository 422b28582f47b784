//! `dotkv-bench hello`: the smallest useful axum server (`GET /` answers
//! `hello`), served by `axum::serve` with its defaults. dotkv runs on the same
//! stack (axum on hyper-util's connection builder), so hello's throughput under
//! the same load generator is the ceiling any dotkv route can reach on this
//! machine. dotkv's listener adds what hello leaves out: a cap on open
//! connections and a header timeout, whose timer is reset on every request.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address to listen on; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
}

pub async fn run(args: Args) -> Result<()> {
    let app = Router::new().route("/", get(|| async { "hello" }));
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    // One machine-readable line on stdout, like `dotkv serve`.
    println!("hello: listening on http://{addr}");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("serving")
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
