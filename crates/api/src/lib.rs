//! dotkv-api: the request and answer types of dotkv's client API, shared by the
//! server (`dotkv-node`) and its clients (`dotkv-client`, the `dotkv` CLI).
//!
//! This crate owns the shapes of the HTTP JSON contract written down in
//! `DESIGN.md` ("API contract"): the CRDT namespaces ([`CrdtType`]), set elements
//! ([`Element`]), request bodies and their validation ([`request`], [`batch`]),
//! answer bodies ([`response`]), errors with their HTTP status ([`ApiError`]) and
//! the configurable size limits ([`Limits`]). It does no I/O and is kept small on
//! purpose, so a client can depend on it without pulling in the server.

pub mod batch;
pub mod crdt_type;
pub mod element;
pub mod error;
pub mod limits;
pub mod quic;
pub mod request;
pub mod response;

pub use batch::{Batch, BatchOp, KeyedOp, OpBody, ValidOp};
pub use crdt_type::CrdtType;
pub use element::Element;
pub use error::{ApiError, ErrorCode};
pub use limits::{json_depth_exceeds, json_len, validate_key, Limits, MAX_VALUE_DEPTH};
pub use quic::{QuicCodecError, QuicRequest, QuicResponse, QUIC_FORMAT_VERSION};
pub use request::{
    from_json_body, CounterAdd, FlagUpdate, ListQuery, SetQuery, SetUpdate, WriteLevel, WriteQuery,
};
pub use response::{
    BatchResponse, CounterValue, FlagValue, KeyList, KeyResponse, LwwOrder, MvRegisterValues,
    PeerStatus, RegisterValue, SetContains, SetPage, Status,
};

/// Header that carries a causal token, on requests (wait until the node has
/// applied what the token names) and on every answer (what this answer saw).
pub const TOKEN_HEADER: &str = "x-dotkv-token";

/// Header of register `PUT` and `GET` answers: the [`LwwOrder`] of the write
/// made, or of the value read.
pub const HLC_HEADER: &str = "x-dotkv-hlc";

/// Default TCP port of the HTTP API.
pub const DEFAULT_HTTP_PORT: u16 = 7700;

/// Default UDP port of QUIC (peers and clients, told apart by ALPN).
pub const DEFAULT_QUIC_PORT: u16 = 7701;

/// Path prefix of every versioned API route (`/health` and `/metrics` sit outside it).
pub const API_PREFIX: &str = "/v1";

/// Content type of every JSON request and answer body.
pub const JSON_CONTENT_TYPE: &str = "application/json";
