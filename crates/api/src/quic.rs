//! The QUIC client protocol: the HTTP API's requests and answers as binary
//! frames, so that one implementation of the API (the node's HTTP router)
//! serves both transports.
//!
//! # Wire format
//!
//! - QUIC on the node's QUIC port (default 7701, shared with the peers), TLS
//!   1.3 with ALPN `dotkv-client/1`. The client checks the node's certificate
//!   against the cluster CA and presents no certificate of its own (unless
//!   the cluster requires one); it authenticates with the API's bearer token,
//!   as over HTTP.
//! - After the handshake the node sends a greeting on a unidirectional stream
//!   (consumed by the transport, see `dotkv-replication`).
//! - One request per bidirectional stream, opened by the client: it writes one
//!   frame holding a [`QuicRequest`] and finishes its side; the node answers
//!   with one frame holding a [`QuicResponse`] on the same stream. Requests on
//!   different streams run concurrently, up to the connection's stream limit.
//! - A frame is a `u32` big-endian payload length, then the payload. The
//!   payload is capped (16 MiB by default, the node's transport setting); a
//!   longer length prefix is refused before anything is allocated.
//! - A payload is one format-version byte ([`QUIC_FORMAT_VERSION`]), then the
//!   envelope in postcard 1.x (fields in declaration order; strings and byte
//!   strings as a varint length and the bytes; options as a 0/1 tag).
//!
//! The envelope carries what an HTTP request carries: method, path and query,
//! and the three headers that mean something to the API. The answer's body is
//! byte for byte what HTTP answers (the contract's JSON, or its JSON errors),
//! and its status is the HTTP status. A frame the node cannot read gets a
//! `400 malformed` answer in a [`QuicResponse`], never a closed connection.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::JSON_CONTENT_TYPE;

/// The format version in front of every [`QuicRequest`] and [`QuicResponse`]
/// this build writes. Readers match on it; an unknown version is an error the
/// node answers with `400 malformed`.
pub const QUIC_FORMAT_VERSION: u8 = 1;

/// One API request: an HTTP request in an envelope.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuicRequest {
    /// The HTTP method: `GET`, `POST`, `PUT`, `DELETE`, ...
    pub method: String,
    /// Path and query as they would appear in an HTTP request line, e.g.
    /// `/v1/counter/visits?w=dc&timeout_ms=500`, percent-encoded the same way.
    pub path_and_query: String,
    /// The causal token (`X-Dotkv-Token`) the request must come after.
    pub token: Option<String>,
    /// The whole `Authorization` header value, scheme included:
    /// `Bearer <token>`. It is handed to the API unchanged, so the rules (and
    /// the error messages) are exactly those of HTTP.
    pub authorization: Option<String>,
    /// The body's media type (`application/json` whenever there is a body).
    pub content_type: Option<String>,
    /// The request body: the same JSON bytes HTTP sends; empty for none.
    pub body: Vec<u8>,
}

/// The answer to one [`QuicRequest`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuicResponse {
    /// The HTTP status.
    pub status: u16,
    /// The answer's causal token (`X-Dotkv-Token`), on every `/v1` answer.
    pub token: Option<String>,
    /// The answer's media type (`application/json` for the API, text for
    /// `/metrics`).
    pub content_type: Option<String>,
    /// The same bytes HTTP answers: the contract's JSON, or a JSON error.
    pub body: Vec<u8>,
}

impl QuicRequest {
    /// The frame payload of this request.
    pub fn to_frame(&self) -> Result<Vec<u8>, QuicCodecError> {
        encode(self, "QuicRequest")
    }

    /// Reads a frame payload written by [`QuicRequest::to_frame`]. Any input
    /// gives a request or an error, never a panic.
    pub fn from_frame(frame: &[u8]) -> Result<QuicRequest, QuicCodecError> {
        decode(frame, "QuicRequest")
    }
}

impl QuicResponse {
    /// The frame payload of this answer.
    pub fn to_frame(&self) -> Result<Vec<u8>, QuicCodecError> {
        encode(self, "QuicResponse")
    }

    /// Reads a frame payload written by [`QuicResponse::to_frame`]. Any input
    /// gives an answer or an error, never a panic.
    pub fn from_frame(frame: &[u8]) -> Result<QuicResponse, QuicCodecError> {
        decode(frame, "QuicResponse")
    }

    /// The answer carrying `error`, as HTTP would send it.
    pub fn error(error: &ApiError) -> QuicResponse {
        QuicResponse {
            status: error.status(),
            token: None,
            content_type: Some(JSON_CONTENT_TYPE.to_owned()),
            body: error.to_json().into_bytes(),
        }
    }
}

/// A frame payload that cannot be encoded or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuicCodecError {
    /// The payload is empty: not even a format version.
    #[error("empty {what} frame: expected a format version byte")]
    Empty { what: &'static str },
    /// The payload starts with a version this build does not read.
    #[error(
        "{what} frame has unknown format version {version} \
         (this build reads version {QUIC_FORMAT_VERSION})"
    )]
    UnknownVersion { what: &'static str, version: u8 },
    /// The payload is not a valid envelope.
    #[error("malformed {what} frame: {reason}")]
    Malformed { what: &'static str, reason: String },
    /// A valid envelope followed by more bytes.
    #[error("malformed {what} frame: {extra} bytes after the envelope")]
    TrailingBytes { what: &'static str, extra: usize },
    /// The envelope could not be encoded.
    #[error("cannot encode a {what} frame: {reason}")]
    Encode { what: &'static str, reason: String },
}

fn encode<T: Serialize>(value: &T, what: &'static str) -> Result<Vec<u8>, QuicCodecError> {
    let out = vec![QUIC_FORMAT_VERSION];
    postcard::to_extend(value, out).map_err(|e| QuicCodecError::Encode {
        what,
        reason: e.to_string(),
    })
}

fn decode<T: DeserializeOwned>(frame: &[u8], what: &'static str) -> Result<T, QuicCodecError> {
    let (&version, body) = frame.split_first().ok_or(QuicCodecError::Empty { what })?;
    if version != QUIC_FORMAT_VERSION {
        return Err(QuicCodecError::UnknownVersion { what, version });
    }
    let (value, rest) = postcard::take_from_bytes(body).map_err(|e| QuicCodecError::Malformed {
        what,
        reason: e.to_string(),
    })?;
    if !rest.is_empty() {
        return Err(QuicCodecError::TrailingBytes {
            what,
            extra: rest.len(),
        });
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorCode;
    use proptest::prelude::*;

    fn request() -> QuicRequest {
        QuicRequest {
            method: "POST".into(),
            path_and_query: "/v1/counter/a%2Fb?w=dc".into(),
            token: Some("tok".into()),
            authorization: Some("Bearer s3cret".into()),
            content_type: Some(JSON_CONTENT_TYPE.into()),
            body: br#"{"add":5}"#.to_vec(),
        }
    }

    #[test]
    fn round_trips_with_a_version_byte() {
        let req = request();
        let frame = req.to_frame().unwrap();
        assert_eq!(frame[0], QUIC_FORMAT_VERSION);
        assert_eq!(QuicRequest::from_frame(&frame).unwrap(), req);

        let resp = QuicResponse {
            status: 200,
            token: Some("t".into()),
            content_type: Some(JSON_CONTENT_TYPE.into()),
            body: br#"{"key":"a","value":5}"#.to_vec(),
        };
        let frame = resp.to_frame().unwrap();
        assert_eq!(frame[0], QUIC_FORMAT_VERSION);
        assert_eq!(QuicResponse::from_frame(&frame).unwrap(), resp);
    }

    /// The layout is part of the protocol: pin it, so a change to the
    /// envelope cannot slip through without a new format version.
    #[test]
    fn layout_is_stable() {
        let req = QuicRequest {
            method: "GET".into(),
            path_and_query: "/x".into(),
            token: None,
            authorization: Some("B".into()),
            content_type: None,
            body: vec![7],
        };
        assert_eq!(
            req.to_frame().unwrap(),
            [1, 3, b'G', b'E', b'T', 2, b'/', b'x', 0, 1, 1, b'B', 0, 1, 7]
        );
        let resp = QuicResponse {
            status: 404,
            token: Some("t".into()),
            content_type: None,
            body: vec![],
        };
        // 404 is the varint 0x94 0x03.
        assert_eq!(resp.to_frame().unwrap(), [1, 0x94, 0x03, 1, 1, b't', 0, 0]);
    }

    #[test]
    fn bad_frames_are_errors() {
        let frame = request().to_frame().unwrap();
        assert_eq!(
            QuicRequest::from_frame(&[]),
            Err(QuicCodecError::Empty {
                what: "QuicRequest"
            })
        );
        let mut wrong = frame.clone();
        wrong[0] = 9;
        assert!(matches!(
            QuicRequest::from_frame(&wrong),
            Err(QuicCodecError::UnknownVersion { version: 9, .. })
        ));
        let mut long = frame.clone();
        long.push(0);
        assert!(matches!(
            QuicRequest::from_frame(&long),
            Err(QuicCodecError::TrailingBytes { extra: 1, .. })
        ));
        for cut in 1..frame.len() {
            assert!(
                QuicRequest::from_frame(&frame[..cut]).is_err(),
                "a frame cut at {cut} bytes was accepted"
            );
        }
        // A method that is not UTF-8.
        assert!(matches!(
            QuicRequest::from_frame(&[1, 1, 0xff, 0, 0, 0, 0, 0]),
            Err(QuicCodecError::Malformed { .. })
        ));
    }

    #[test]
    fn error_answers_are_the_http_json() {
        let e = ApiError::new(ErrorCode::InvalidOp, "no");
        let resp = QuicResponse::error(&e);
        assert_eq!(resp.status, 422);
        assert_eq!(resp.body, e.to_json().into_bytes());
        assert_eq!(ApiError::from_response(resp.status, &resp.body), e);
    }

    proptest! {
        #[test]
        fn any_bytes_decode_or_fail_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = QuicRequest::from_frame(&bytes);
            let _ = QuicResponse::from_frame(&bytes);
        }

        #[test]
        fn any_request_round_trips(
            method in "[A-Z]{0,8}",
            path in ".{0,40}",
            token in proptest::option::of(".{0,20}"),
            body in proptest::collection::vec(any::<u8>(), 0..100),
        ) {
            let req = QuicRequest {
                method,
                path_and_query: path,
                token,
                authorization: None,
                content_type: None,
                body,
            };
            prop_assert_eq!(QuicRequest::from_frame(&req.to_frame().unwrap()).unwrap(), req);
        }
    }
}
