//! dotkv-client: an async Rust client of dotkv's API, over HTTP or QUIC.
//!
//! [`Client`] has one method per operation of the API contract (`DESIGN.md`),
//! over HTTP/1.1 with a keep-alive connection pool ([`Client::new`]), or over
//! the QUIC client protocol ([`Client::quic`]: ALPN `dotkv-client/1`, one
//! stream per request, the node's certificate checked against the cluster
//! CA). Both carry the same requests and answers. Every answer comes back as a
//! [`Response`] that also carries the answer's causal token (`X-Dotkv-Token`);
//! pass it in [`ReadOptions::token`] or [`WriteOptions::token`] of a later
//! request, on any node, to read your writes. Error answers become
//! [`ClientError::Api`], with the code and message the server sent.
//!
//! ```no_run
//! # async fn example() -> Result<(), dotkv_client::ClientError> {
//! use dotkv_client::{Client, ReadOptions, WriteOptions};
//!
//! let client = Client::new("http://127.0.0.1:7700")?;
//! let added = client.counter_add("visits", 1, &WriteOptions::default()).await?;
//! let read = ReadOptions { token: added.token.clone() };
//! assert!(client.counter_get("visits", &read).await?.value.value >= 1);
//! # Ok(())
//! # }
//! ```

mod backend;
mod client;
mod encode;
mod error;
#[cfg(any(test, feature = "test-util"))]
pub mod testing;
#[cfg(test)]
mod tests;

pub use client::{
    Client, ClientBuilder, Page, ReadOptions, Response, WriteOptions, DEFAULT_TIMEOUT,
};
pub use dotkv_api as api;
pub use error::ClientError;
