//! dotkv-node: one dotkv node. It opens the store, starts the writer, serves the
//! HTTP API and answers with causal tokens, and shuts down cleanly.
//!
//! - [`config`]: the TOML configuration, its embedded default and `DOTKV_*`
//!   environment overrides;
//! - [`http`]: the HTTP API of the contract (`DESIGN.md`), on axum;
//! - [`server`]: the HTTP listener and the bounds on its connections;
//! - [`h1`]: the node's own HTTP/1.1 loop for plain requests, handing
//!   anything else to hyper;
//! - [`token`]: causal tokens (`X-Dotkv-Token`);
//! - [`metrics`]: Prometheus text metrics;
//! - [`node`]: wiring and lifecycle.

pub mod config;
pub mod h1;
pub mod http;
pub mod metrics;
pub mod node;
pub mod quic_api;
pub mod server;
pub mod token;

pub use config::Config;
pub use node::{run, Node, NodeError};
