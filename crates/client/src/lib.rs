//! dotkv-client: an async Rust client of dotkv's HTTP API.
//!
//! [`Client`] has one method per operation of the API contract (`DESIGN.md`),
//! over HTTP/1.1 with a keep-alive connection pool. Every answer comes back as a
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
