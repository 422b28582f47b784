//! API errors: the [`ErrorCode`]s of the contract with their HTTP status, and
//! [`ApiError`], which travels as `{"error":{"code":"...","message":"..."}}`.
//! Servers build them; clients parse them back with [`ApiError::from_response`].

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::crdt_type::truncate_for_message;

/// What went wrong, as a stable machine-readable code with one HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// 400: the request cannot be parsed (bad JSON, bad query, empty key).
    Malformed,
    /// 401: missing or bad bearer token.
    Unauthorized,
    /// 404: no such object or route.
    NotFound,
    /// 405: the route exists but not with this method.
    MethodNotAllowed,
    /// 409: the request conflicts with the current state.
    Conflict,
    /// 413: a key, value, body, page or batch is over its limit.
    TooLarge,
    /// 415: the body is not `application/json`.
    UnsupportedMediaType,
    /// 422: well-formed JSON that is not a valid operation (e.g. `{"add":5}` on a flag).
    InvalidOp,
    /// 503: the node is not ready to serve.
    NotReady,
    /// 504: a wait (causal token, replication level) ran out of time.
    Timeout,
    /// 500: a bug or a failure of the node itself.
    Internal,
}

impl ErrorCode {
    /// Every code, in a stable order.
    pub const ALL: [ErrorCode; 11] = [
        ErrorCode::Malformed,
        ErrorCode::Unauthorized,
        ErrorCode::NotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::Conflict,
        ErrorCode::TooLarge,
        ErrorCode::UnsupportedMediaType,
        ErrorCode::InvalidOp,
        ErrorCode::NotReady,
        ErrorCode::Timeout,
        ErrorCode::Internal,
    ];

    /// The HTTP status that goes with this code.
    pub const fn status(self) -> u16 {
        match self {
            ErrorCode::Malformed => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::NotFound => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::Conflict => 409,
            ErrorCode::TooLarge => 413,
            ErrorCode::UnsupportedMediaType => 415,
            ErrorCode::InvalidOp => 422,
            ErrorCode::NotReady => 503,
            ErrorCode::Timeout => 504,
            ErrorCode::Internal => 500,
        }
    }

    /// The snake_case name used in the JSON body.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Malformed => "malformed",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::Conflict => "conflict",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::InvalidOp => "invalid_op",
            ErrorCode::NotReady => "not_ready",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Internal => "internal",
        }
    }

    /// Best guess at the code of an error answer that carried no JSON body (a
    /// proxy's 502, say). Unknown 4xx become `malformed`, anything else `internal`.
    pub fn from_status(status: u16) -> ErrorCode {
        ErrorCode::ALL
            .into_iter()
            .find(|c| c.status() == status)
            .unwrap_or(if (400..500).contains(&status) {
                ErrorCode::Malformed
            } else {
                ErrorCode::Internal
            })
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The name given to [`ErrorCode::from_str`] is not a known code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown error code `{0}`")]
pub struct UnknownErrorCode(pub String);

impl FromStr for ErrorCode {
    type Err = UnknownErrorCode;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ErrorCode::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| UnknownErrorCode(truncate_for_message(s)))
    }
}

/// An error answer of the API: a code (which fixes the HTTP status) and a
/// message for people that says what failed and with what input.
///
/// On the wire it is `{"error":{"code":"invalid_op","message":"..."}}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
        }
    }

    pub fn malformed(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Malformed, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unauthorized, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::TooLarge, message)
    }

    pub fn invalid_op(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidOp, message)
    }

    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Timeout, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }

    /// The HTTP status of this error.
    pub fn status(&self) -> u16 {
        self.code.status()
    }

    /// Puts `context: ` in front of the message, keeping the code.
    pub fn context(mut self, context: impl fmt::Display) -> Self {
        self.message = format!("{context}: {}", self.message);
        self
    }

    /// The JSON body of this error.
    pub fn to_json(&self) -> String {
        // Serializing two strings into a String cannot fail.
        serde_json::to_string(self).unwrap_or_else(|_| {
            format!(
                r#"{{"error":{{"code":"{}","message":"unprintable error"}}}}"#,
                self.code
            )
        })
    }

    /// Reads an error answer back, for clients. A body in the contract's shape
    /// gives its code and message; anything else (no body, HTML from a proxy, a
    /// code this client does not know) falls back to the code of the status and
    /// the start of the body as the message. Never fails.
    pub fn from_response(status: u16, body: &[u8]) -> ApiError {
        if let Ok(envelope) = serde_json::from_slice::<LooseEnvelope>(body) {
            let code = envelope
                .error
                .code
                .parse()
                .unwrap_or_else(|_| ErrorCode::from_status(status));
            return ApiError::new(code, envelope.error.message);
        }
        let text = String::from_utf8_lossy(body);
        let text = text.trim();
        let message = if text.is_empty() {
            format!("HTTP {status} with no error body")
        } else {
            let cut = truncate_for_message(text);
            format!("HTTP {status}: {cut}")
        };
        ApiError::new(ErrorCode::from_status(status), message)
    }
}

#[derive(Serialize, Deserialize)]
struct Envelope<D> {
    error: D,
}

#[derive(Serialize, Deserialize)]
struct Detail<C, M> {
    code: C,
    message: M,
}

/// The error shape with a code that may be unknown to this version.
#[derive(Deserialize)]
struct LooseEnvelope {
    error: LooseDetail,
}

#[derive(Deserialize)]
struct LooseDetail {
    code: String,
    #[serde(default)]
    message: String,
}

impl Serialize for ApiError {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        Envelope {
            error: Detail {
                code: self.code,
                message: &self.message,
            },
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for ApiError {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let envelope = Envelope::<Detail<ErrorCode, String>>::deserialize(deserializer)?;
        Ok(ApiError::new(envelope.error.code, envelope.error.message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_its_status_and_name() {
        let expected = [
            (ErrorCode::Malformed, 400, "malformed"),
            (ErrorCode::Unauthorized, 401, "unauthorized"),
            (ErrorCode::NotFound, 404, "not_found"),
            (ErrorCode::MethodNotAllowed, 405, "method_not_allowed"),
            (ErrorCode::Conflict, 409, "conflict"),
            (ErrorCode::TooLarge, 413, "too_large"),
            (
                ErrorCode::UnsupportedMediaType,
                415,
                "unsupported_media_type",
            ),
            (ErrorCode::InvalidOp, 422, "invalid_op"),
            (ErrorCode::NotReady, 503, "not_ready"),
            (ErrorCode::Timeout, 504, "timeout"),
            (ErrorCode::Internal, 500, "internal"),
        ];
        assert_eq!(expected.len(), ErrorCode::ALL.len());
        for (code, status, name) in expected {
            assert_eq!(code.status(), status);
            assert_eq!(code.as_str(), name);
            assert_eq!(code.to_string(), name);
            assert_eq!(name.parse::<ErrorCode>().unwrap(), code);
            assert_eq!(ErrorCode::from_status(status), code);
            // serde agrees with as_str.
            assert_eq!(serde_json::to_string(&code).unwrap(), format!("\"{name}\""));
        }
        assert!("nope".parse::<ErrorCode>().is_err());
    }

    #[test]
    fn error_json_shape() {
        let err = ApiError::invalid_op("`add` must be an integer");
        let value: serde_json::Value = serde_json::from_str(&err.to_json()).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"error": {"code": "invalid_op", "message": "`add` must be an integer"}})
        );
        assert_eq!(err.status(), 422);
        assert_eq!(err.to_string(), "invalid_op: `add` must be an integer");
        let back: ApiError = serde_json::from_value(value).unwrap();
        assert_eq!(back, err);
    }

    #[test]
    fn from_response_reads_the_contract_shape() {
        let body = br#"{"error":{"code":"too_large","message":"key is 2000 bytes"}}"#;
        let err = ApiError::from_response(413, body);
        assert_eq!(err, ApiError::too_large("key is 2000 bytes"));
        // The code in the body wins over the status.
        assert_eq!(ApiError::from_response(400, body).code, ErrorCode::TooLarge);
    }

    #[test]
    fn from_response_falls_back_on_the_status() {
        let err = ApiError::from_response(502, b"<html>Bad Gateway</html>");
        assert_eq!(err.code, ErrorCode::Internal);
        assert_eq!(err.message, "HTTP 502: <html>Bad Gateway</html>");

        let err = ApiError::from_response(504, b"");
        assert_eq!(err.code, ErrorCode::Timeout);
        assert_eq!(err.message, "HTTP 504 with no error body");

        let err = ApiError::from_response(403, b"\xff\xfe");
        assert_eq!(err.code, ErrorCode::Malformed);

        // A code from a newer server maps by status; its message is kept.
        let body = br#"{"error":{"code":"quota_exceeded","message":"slow down"}}"#;
        let err = ApiError::from_response(409, body);
        assert_eq!(err, ApiError::new(ErrorCode::Conflict, "slow down"));

        // Long bodies are cut.
        let long = vec![b'x'; 10_000];
        assert!(ApiError::from_response(500, &long).message.len() < 200);
    }

    #[test]
    fn strict_deserialize_rejects_unknown_codes() {
        let body = r#"{"error":{"code":"quota_exceeded","message":"x"}}"#;
        assert!(serde_json::from_str::<ApiError>(body).is_err());
    }

    #[test]
    fn context_prefixes_the_message() {
        let err = ApiError::malformed("key is empty").context("ops[3]");
        assert_eq!(err.message, "ops[3]: key is empty");
        assert_eq!(err.code, ErrorCode::Malformed);
    }
}
