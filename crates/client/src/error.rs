//! The client's error type: what failed (configuration, the request, the
//! connection, the clock, the answer) and, for error answers, the server's
//! [`ApiError`].

use std::time::Duration;

use dotkv_api::{ApiError, ErrorCode};

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The client was built with something unusable (a bad URL or token).
    #[error("invalid client configuration: {0}")]
    Config(String),
    /// The request could not be built from the arguments (an empty key, a
    /// causal token that is not a valid header value).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The server answered with a non-2xx status.
    #[error("{error} (HTTP {status})")]
    Api { status: u16, error: ApiError },
    /// No answer: the connection could not be made or broke.
    #[error("transport error on {method} {url}: {message}")]
    Transport {
        method: String,
        url: String,
        message: String,
    },
    /// No complete answer within the client's timeout.
    #[error("{method} {url} timed out after {after:?}")]
    Timeout {
        method: String,
        url: String,
        after: Duration,
    },
    /// A 2xx answer whose body is not what the contract says.
    #[error("unexpected answer to {method} {url}: {message}")]
    Decode {
        method: String,
        url: String,
        message: String,
    },
}

impl ClientError {
    /// The server's error, for [`ClientError::Api`].
    pub fn api_error(&self) -> Option<&ApiError> {
        match self {
            ClientError::Api { error, .. } => Some(error),
            _ => None,
        }
    }

    /// The server's error code, for [`ClientError::Api`].
    pub fn code(&self) -> Option<ErrorCode> {
        self.api_error().map(|e| e.code)
    }

    /// The HTTP status, for [`ClientError::Api`].
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Whether the server said `not_found` (e.g. a register never written).
    pub fn is_not_found(&self) -> bool {
        self.code() == Some(ErrorCode::NotFound)
    }
}

/// The messages of an error and of all its sources, joined with `: `, so
/// that "client error (Connect)" also says "Connection refused".
pub(crate) fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = s.source();
    }
    message
}
