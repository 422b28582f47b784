//! dotkv-replication: how nodes talk to each other.
//!
//! - [`tls`]: the cluster CA, node certificates, and the mutual-TLS
//!   configuration of QUIC (ALPN `dotkv-peer/1` between nodes,
//!   `dotkv-client/1` for API clients, on one port).
//! - [`transport`]: the one type that hides quinn ([`Transport`]): a UDP
//!   endpoint, a per-peer connection cache, length-delimited frames with a size
//!   cap and a timeout on every read, and failure detection by QUIC keep-alives.
//!
//! - [`protocol`]: the peer protocol's messages and the compact wire form of
//!   delta groups.
//! - [`causal`]: causal delivery at the receiver (no I/O).
//! - [`engine`]: the [`Replicator`]: delta streams with acknowledgements and
//!   forwarding, the inbox that applies remote groups, anti-entropy, delta-log
//!   retention, write-level waits and replication figures.

pub mod causal;
pub mod engine;
pub mod protocol;
pub mod tls;
pub mod transport;

pub use engine::{PeerInfo, PeerSpec, ReplicationConfig, Replicator, Scope, SessionError};

pub use tls::{
    default_sans, init_ca, issue_node_cert, load_client_trust, load_node_identity,
    load_node_identity_with, Alpn, CertFiles, ClientCertPolicy, NodeTls, TlsError, CLIENT_ALPN,
    PEER_ALPN,
};
pub use tokio_util::sync::CancellationToken;
pub use transport::{
    Connection, FrameReceiver, FrameSender, IncomingConnections, PeerTraffic, Transport,
    TransportConfig, TransportError, TransportMetrics,
};
