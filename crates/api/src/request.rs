//! Request bodies and query parameters of the single-key routes, and
//! [`from_json_body`], which turns serde's errors into API errors with the
//! right status. Batch bodies are in [`crate::batch`].

use std::fmt;
use std::str::FromStr;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::crdt_type::truncate_for_message;
use crate::element::Element;
use crate::error::ApiError;
use crate::limits::Limits;

/// Body of `POST /v1/counter/{key}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CounterAdd {
    pub add: i64,
}

/// Body of `POST /v1/set/{key}`. Both lists may be absent or empty.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetUpdate {
    #[serde(default)]
    pub add: Vec<Element>,
    #[serde(default)]
    pub remove: Vec<Element>,
}

impl SetUpdate {
    /// Checks the element count and each element's size (`too_large`).
    pub fn validate(&self, limits: &Limits) -> Result<(), ApiError> {
        limits.validate_elements(&self.add, &self.remove)
    }
}

/// Body of `POST /v1/flag/{key}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlagUpdate {
    pub enable: bool,
}

/// How far a write must have replicated before it is acknowledged (`?w=`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WriteLevel {
    /// After the local commit.
    #[default]
    Local,
    /// After every reachable node of the local datacenter has applied it.
    Dc,
    /// After every datacenter has applied it.
    All,
}

impl WriteLevel {
    pub const fn as_str(self) -> &'static str {
        match self {
            WriteLevel::Local => "local",
            WriteLevel::Dc => "dc",
            WriteLevel::All => "all",
        }
    }
}

impl fmt::Display for WriteLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for WriteLevel {
    type Err = ApiError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "local" => Ok(WriteLevel::Local),
            "dc" => Ok(WriteLevel::Dc),
            "all" => Ok(WriteLevel::All),
            other => Err(ApiError::malformed(format!(
                "unknown write level w=`{}`; expected local, dc or all",
                truncate_for_message(other)
            ))),
        }
    }
}

/// Query parameters of every write: `?w=local|dc|all&timeout_ms=`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub w: Option<WriteLevel>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

/// Query parameters of `GET /v1/set/{key}`: `?contains=x` asks about one
/// element (read with [`Element::parse_query`]); otherwise `?limit=&after=` pages.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contains: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
}

/// Query parameters of `GET /v1/{type}`: `?prefix=&limit=&after=`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
}

/// Parses a JSON request body. Text that is not JSON (or is cut short) is
/// `malformed` (400); JSON of the wrong shape is `invalid_op` (422). So is an
/// integer outside the 64-bit range (`malformed`, as serde_json's own "number
/// out of range" for `1e400` is): serde_json would read it as the nearest
/// `f64`, and a register or a set would then keep a number the client never
/// sent.
pub fn from_json_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let value = serde_json::from_slice(body).map_err(|e| {
        use serde_json::error::Category;
        match e.classify() {
            Category::Data => ApiError::invalid_op(format!("invalid request body: {e}")),
            Category::Syntax | Category::Eof | Category::Io => {
                ApiError::malformed(format!("request body is not valid JSON: {e}"))
            }
        }
    })?;
    if let Some(at) = integer_beyond_64_bits(body) {
        let end = body[at..]
            .iter()
            .position(|b| !(b.is_ascii_digit() || *b == b'-'))
            .map_or(body.len(), |n| at + n);
        let shown = String::from_utf8_lossy(&body[at..end.min(at + 40)]);
        return Err(ApiError::malformed(format!(
            "request body has the integer {shown}{} at byte {at}, outside the 64-bit range \
             (-2^63 to 2^64-1): it would lose precision; send it as a string",
            if end > at + 40 { "…" } else { "" }
        )));
    }
    Ok(value)
}

/// The byte offset of the first integer literal outside strings (no `.`, `e`
/// or `E`) that fits neither `i64` nor `u64`, in a body that is valid JSON.
pub(crate) fn integer_beyond_64_bits(json: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i < json.len() {
        match json[i] {
            b'"' => {
                // Skip the string, escapes included.
                i += 1;
                while i < json.len() && json[i] != b'"' {
                    i += if json[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                let negative = json[i] == b'-';
                let digits_start = i + usize::from(negative);
                let mut end = digits_start;
                while end < json.len() && json[end].is_ascii_digit() {
                    end += 1;
                }
                let fraction = end < json.len() && matches!(json[end], b'.' | b'e' | b'E');
                let digits = &json[digits_start..end];
                // JSON has no leading zeros, so the digit count orders them.
                let limit: &[u8] = if negative {
                    b"9223372036854775808"
                } else {
                    b"18446744073709551615"
                };
                let too_big =
                    digits.len() > limit.len() || (digits.len() == limit.len() && digits > limit);
                if !fraction && too_big {
                    return Some(start);
                }
                i = end;
                // Skip the rest of a number with a fraction or an exponent.
                while i < json.len()
                    && matches!(json[i], b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-')
                {
                    i += 1;
                }
            }
            _ => i += 1,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorCode;

    #[test]
    fn integers_beyond_64_bits_are_refused_not_rounded() {
        for ok in [
            &br#"18446744073709551615"#[..],
            br#"-9223372036854775808"#,
            br#"{"a": [1, -2, 3.5e300, 123456789012345678901234567890.5]}"#,
            br#""123456789012345678901234567890""#,
            br#"["x\"123456789012345678901234567890", 1e400]"#,
            br#"1.8446744073709551616e19"#,
        ] {
            assert_eq!(
                integer_beyond_64_bits(ok),
                None,
                "{}",
                String::from_utf8_lossy(ok)
            );
        }
        for (bad, at) in [
            (&br#"18446744073709551616"#[..], 0),
            (br#"-9223372036854775809"#, 0),
            (br#"{"add": [1, 123456789012345678901234567890]}"#, 12),
            (br#"["\\", 99999999999999999999999]"#, 7),
        ] {
            assert_eq!(
                integer_beyond_64_bits(bad),
                Some(at),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let err = from_json_body::<serde_json::Value>(br#"{"v": 123456789012345678901234567890}"#)
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::Malformed);
        assert!(
            err.message.contains("123456789012345678901234567890"),
            "{}",
            err.message
        );
        let v: serde_json::Value =
            from_json_body(br#"[18446744073709551615, -9223372036854775808]"#).unwrap();
        assert_eq!(v[0], u64::MAX);
        assert_eq!(v[1], i64::MIN);
    }

    #[test]
    fn counter_add_body() {
        let ok: CounterAdd = from_json_body(br#"{"add": -5}"#).unwrap();
        assert_eq!(ok, CounterAdd { add: -5 });
        for bad in [
            &br#"{"add": 1.5}"#[..],
            br#"{"add": "5"}"#,
            br#"{"add": 9223372036854775808}"#,
            br#"{}"#,
            br#"{"add": 1, "x": 2}"#,
        ] {
            let err = from_json_body::<CounterAdd>(bad).unwrap_err();
            assert_eq!(
                err.code,
                ErrorCode::InvalidOp,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        for bad in [&b"{\"add\": "[..], b"", b"nope", b"{\"add\":1}}"] {
            let err = from_json_body::<CounterAdd>(bad).unwrap_err();
            assert_eq!(
                err.code,
                ErrorCode::Malformed,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn set_update_body() {
        let u: SetUpdate = from_json_body(br#"{"add": ["a", 1]}"#).unwrap();
        assert_eq!(u.add, vec![Element::from("a"), Element::from(1u64)]);
        assert!(u.remove.is_empty());
        let u: SetUpdate = from_json_body(br#"{}"#).unwrap();
        assert_eq!(u, SetUpdate::default());
        // A typo must not be dropped silently.
        let err = from_json_body::<SetUpdate>(br#"{"add": [], "remvoe": ["a"]}"#).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidOp);
        assert!(err.message.contains("remvoe"), "{}", err.message);
        let err = from_json_body::<SetUpdate>(br#"{"add": [true]}"#).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidOp);
        assert!(err.message.contains("string or number"), "{}", err.message);

        let limits = Limits {
            max_elements_per_op: 1,
            ..Limits::default()
        };
        let two = SetUpdate {
            add: vec![Element::from("a")],
            remove: vec![Element::from("b")],
        };
        assert_eq!(two.validate(&limits).unwrap_err().code, ErrorCode::TooLarge);
        assert!(two.validate(&Limits::default()).is_ok());
    }

    #[test]
    fn flag_body() {
        let f: FlagUpdate = from_json_body(br#"{"enable": true}"#).unwrap();
        assert!(f.enable);
        let err = from_json_body::<FlagUpdate>(br#"{"enable": 1}"#).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidOp);
    }

    #[test]
    fn write_levels() {
        for w in [WriteLevel::Local, WriteLevel::Dc, WriteLevel::All] {
            assert_eq!(w.as_str().parse::<WriteLevel>().unwrap(), w);
            assert_eq!(
                serde_json::to_string(&w).unwrap(),
                format!("\"{}\"", w.as_str())
            );
        }
        assert_eq!(WriteLevel::default(), WriteLevel::Local);
        let err = "quorum".parse::<WriteLevel>().unwrap_err();
        assert_eq!(err.code, ErrorCode::Malformed);
        assert!(err.message.contains("quorum"));
    }

    #[test]
    fn query_structs_deserialize_from_maps() {
        let q: WriteQuery = serde_json::from_str(r#"{"w":"dc","timeout_ms":50}"#).unwrap();
        assert_eq!(q.w, Some(WriteLevel::Dc));
        assert_eq!(q.timeout_ms, Some(50));
        let q: SetQuery = serde_json::from_str(r#"{"contains":"x"}"#).unwrap();
        assert_eq!(q.contains.as_deref(), Some("x"));
        let q: ListQuery = serde_json::from_str(r#"{}"#).unwrap();
        assert_eq!(q, ListQuery::default());
    }
}
