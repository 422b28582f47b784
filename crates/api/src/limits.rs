//! Size limits of the API (keys, values, bodies, elements per op, batch size,
//! page size), read from config with defaults, and the checks that apply them.

use std::io;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::element::Element;
use crate::error::ApiError;

/// The limits a node enforces on requests. Every field has a default, so a
/// config section may name only the ones it changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Limits {
    /// Longest key, in UTF-8 bytes.
    pub max_key_bytes: usize,
    /// Largest register value (its compact JSON text) and largest set element
    /// (its [`Element::key_len`]), in bytes.
    pub max_value_bytes: usize,
    /// Deepest nesting of arrays and objects in a register value (a scalar
    /// is depth 0, `[1]` depth 1). Every value accepted can be sent back in
    /// any answer or batch and read by a JSON parser with the usual nesting
    /// limit of 128 (serde_json's), which the answer's own wrapping counts
    /// against: hence at most [`MAX_VALUE_DEPTH`].
    pub max_value_depth: usize,
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// Most set elements in one op (`add` and `remove` together).
    pub max_elements_per_op: usize,
    /// Most ops in one batch.
    pub max_batch_ops: usize,
    /// Largest `limit` a page may ask for; larger ones are lowered to it.
    pub max_page_limit: usize,
    /// Page size when a request gives no `limit`.
    pub default_page_limit: usize,
}

/// The default and highest `max_value_depth`, as in MongoDB. A value is
/// wrapped at most four levels deep in a request or an answer (a batch's
/// `{"ops":[{"op":{"set": v}}]}`), and common JSON parsers stop at 128
/// levels (serde_json's limit).
pub const MAX_VALUE_DEPTH: usize = 100;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_key_bytes: 1024,
            max_value_bytes: 1024 * 1024,
            max_value_depth: MAX_VALUE_DEPTH,
            max_body_bytes: 4 * 1024 * 1024,
            max_elements_per_op: 10_000,
            max_batch_ops: 1_000,
            max_page_limit: 10_000,
            default_page_limit: 1_000,
        }
    }
}

impl Limits {
    /// The page size to use for a request's `limit`: the default when absent,
    /// lowered to `max_page_limit` when larger. `0` is `malformed`.
    pub fn page_limit(&self, requested: Option<usize>) -> Result<usize, ApiError> {
        let max = self.max_page_limit.max(1);
        match requested {
            None => Ok(self.default_page_limit.clamp(1, max)),
            Some(0) => Err(ApiError::malformed("limit must be at least 1")),
            Some(n) => Ok(n.min(max)),
        }
    }

    /// Checks a register or mvregister value against `max_value_bytes`
    /// (measured as compact JSON) and `max_value_depth`: `too_large` if over.
    pub fn validate_value(&self, value: &Value) -> Result<(), ApiError> {
        self.validate_value_depth(value)?;
        self.validate_value_len(json_len(value))
    }

    /// Checks a register or mvregister value's nesting against
    /// `max_value_depth`: `too_large` if deeper.
    pub fn validate_value_depth(&self, value: &Value) -> Result<(), ApiError> {
        if json_depth_exceeds(value, self.max_value_depth) {
            return Err(ApiError::too_large(format!(
                "value nests arrays and objects more than {} levels deep",
                self.max_value_depth
            )));
        }
        Ok(())
    }

    /// Checks the length of a value's compact JSON text against
    /// `max_value_bytes`, for a caller that has that text already.
    pub fn validate_value_len(&self, len: usize) -> Result<(), ApiError> {
        if len > self.max_value_bytes {
            return Err(ApiError::too_large(format!(
                "value is {len} bytes of JSON; the limit is {}",
                self.max_value_bytes
            )));
        }
        Ok(())
    }

    /// Checks one set element against `max_value_bytes`: `too_large` if over.
    pub fn validate_element(&self, element: &Element) -> Result<(), ApiError> {
        let len = element.key_len();
        if len > self.max_value_bytes {
            return Err(ApiError::too_large(format!(
                "set element is {len} bytes; the limit is {}",
                self.max_value_bytes
            )));
        }
        Ok(())
    }

    /// Checks the elements of one set op: their count against
    /// `max_elements_per_op` and each one's size.
    pub fn validate_elements(&self, add: &[Element], remove: &[Element]) -> Result<(), ApiError> {
        let count = add.len() + remove.len();
        if count > self.max_elements_per_op {
            return Err(ApiError::too_large(format!(
                "set op has {count} elements; the limit is {}",
                self.max_elements_per_op
            )));
        }
        add.iter()
            .chain(remove)
            .try_for_each(|e| self.validate_element(e))
    }
}

/// Checks a key: 1 to `max_key_bytes` bytes of UTF-8. Empty is `malformed`
/// (400), too long is `too_large` (413).
pub fn validate_key(key: &str, limits: &Limits) -> Result<(), ApiError> {
    if key.is_empty() {
        return Err(ApiError::malformed("key is empty"));
    }
    if key.len() > limits.max_key_bytes {
        return Err(ApiError::too_large(format!(
            "key is {} bytes; the limit is {}",
            key.len(),
            limits.max_key_bytes
        )));
    }
    Ok(())
}

/// Whether `value` nests arrays and objects more than `max` levels deep.
/// The recursion goes at most `max + 1` calls deep, whatever the value.
pub fn json_depth_exceeds(value: &Value, max: usize) -> bool {
    let deeper = |c: &Value| json_depth_exceeds(c, max - 1);
    match value {
        Value::Array(a) => max == 0 || a.iter().any(deeper),
        Value::Object(o) => max == 0 || o.values().any(deeper),
        _ => false,
    }
}

/// The length of a value's compact JSON text, counted without building it.
pub fn json_len(value: &Value) -> usize {
    struct Counter(usize);
    impl io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    // Writing a Value to a writer that never fails cannot fail.
    let _ = serde_json::to_writer(&mut counter, value);
    counter.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorCode;
    use serde_json::json;

    #[test]
    fn defaults() {
        let l = Limits::default();
        assert_eq!(l.max_key_bytes, 1024);
        assert_eq!(l.max_value_bytes, 1 << 20);
        assert_eq!(l.max_body_bytes, 4 << 20);
        assert_eq!(l.max_value_depth, 100);
        assert_eq!(l.max_elements_per_op, 10_000);
        assert_eq!(l.max_batch_ops, 1_000);
        assert_eq!(l.max_page_limit, 10_000);
        assert_eq!(l.default_page_limit, 1_000);
        // A partial config keeps the other defaults.
        let partial: Limits = serde_json::from_str(r#"{"max_key_bytes": 10}"#).unwrap();
        assert_eq!(partial.max_key_bytes, 10);
        assert_eq!(partial.max_batch_ops, 1_000);
    }

    #[test]
    fn keys() {
        let l = Limits::default();
        assert_eq!(validate_key("", &l).unwrap_err().code, ErrorCode::Malformed);
        assert_eq!(validate_key("", &l).unwrap_err().status(), 400);
        assert!(validate_key("k", &l).is_ok());
        assert!(validate_key(&"k".repeat(1024), &l).is_ok());
        let err = validate_key(&"k".repeat(1025), &l).unwrap_err();
        assert_eq!(err.code, ErrorCode::TooLarge);
        assert_eq!(err.status(), 413);
        assert!(err.message.contains("1025"), "{}", err.message);
        // Bytes, not chars: 512 two-byte chars fit, 513 do not.
        assert!(validate_key(&"é".repeat(512), &l).is_ok());
        assert!(validate_key(&"é".repeat(513), &l).is_err());
    }

    #[test]
    fn page_limits() {
        let l = Limits::default();
        assert_eq!(l.page_limit(None).unwrap(), 1_000);
        assert_eq!(l.page_limit(Some(5)).unwrap(), 5);
        assert_eq!(l.page_limit(Some(1_000_000)).unwrap(), 10_000);
        assert_eq!(
            l.page_limit(Some(0)).unwrap_err().code,
            ErrorCode::Malformed
        );
        // A config whose default is above its max still gives a sane answer.
        let odd = Limits {
            default_page_limit: 50,
            max_page_limit: 10,
            ..Limits::default()
        };
        assert_eq!(odd.page_limit(None).unwrap(), 10);
    }

    /// `n` arrays, one inside the other, around `inner`.
    fn nested(n: usize, inner: &str) -> Value {
        serde_json::from_str(&format!("{}{inner}{}", "[".repeat(n), "]".repeat(n))).unwrap()
    }

    #[test]
    fn value_depth() {
        let l = Limits::default();
        assert!(!json_depth_exceeds(&json!(5), 0));
        assert!(json_depth_exceeds(&json!([]), 0));
        assert!(!json_depth_exceeds(&json!([]), 1));
        assert!(!json_depth_exceeds(&json!({"a": [1, {"b": 2}]}), 3));
        assert!(json_depth_exceeds(&json!({"a": [1, {"b": {}}]}), 3));
        // The deepest branch counts, wherever it is.
        assert!(json_depth_exceeds(&json!([1, 2, [3, [4]], 5]), 2));
        assert!(l.validate_value(&nested(100, "1")).is_ok());
        let err = l.validate_value(&nested(101, "1")).unwrap_err();
        assert_eq!(err.code, ErrorCode::TooLarge);
        assert!(err.message.contains("100 levels"), "{}", err.message);
        // Every accepted value still parses inside the deepest wrapping an
        // answer or a batch gives it.
        let wrapped = format!(
            r#"{{"ops":[{{"type":"register","key":"k","op":{{"set":{}}}}}]}}"#,
            nested(MAX_VALUE_DEPTH, "{}")
        );
        assert!(serde_json::from_str::<Value>(&wrapped).is_ok());
        let lower = Limits {
            max_value_depth: 2,
            ..Limits::default()
        };
        assert!(lower.validate_value(&json!({"a": [1]})).is_ok());
        assert!(lower.validate_value(&json!({"a": [[1]]})).is_err());
    }

    #[test]
    fn values_and_elements() {
        let l = Limits {
            max_value_bytes: 10,
            max_elements_per_op: 3,
            ..Limits::default()
        };
        assert_eq!(json_len(&json!("12345678")), 10);
        assert!(l.validate_value(&json!("12345678")).is_ok());
        let err = l.validate_value(&json!("123456789")).unwrap_err();
        assert_eq!(err.code, ErrorCode::TooLarge);
        assert_eq!(json_len(&json!({"a": [1, 2]})), r#"{"a":[1,2]}"#.len());

        let e = |s: &str| Element::from(s);
        assert!(l.validate_elements(&[e("a"), e("b")], &[e("c")]).is_ok());
        let err = l
            .validate_elements(&[e("a"), e("b")], &[e("c"), e("d")])
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::TooLarge);
        assert!(err.message.contains("4 elements"), "{}", err.message);
        assert!(l.validate_elements(&[e("123456789")], &[]).is_ok());
        assert_eq!(
            l.validate_elements(&[], &[e("1234567890")])
                .unwrap_err()
                .code,
            ErrorCode::TooLarge
        );
    }
}
