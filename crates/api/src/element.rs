//! Set elements: a JSON string or a JSON number, with their canonical byte form
//! (used as a storage key and for ordering), their query-string form
//! (`?contains=x`, paging cursors, the CLI) and their JSON form.

use std::fmt;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Number, Value};

use crate::error::ApiError;

/// Tag byte of a string element in [`Element::to_key_bytes`].
const TAG_STRING: u8 = 0x01;
/// Tag byte of a number element in [`Element::to_key_bytes`].
const TAG_NUMBER: u8 = 0x02;

/// One element of a set: a JSON string or a JSON number. Other JSON types are
/// refused when parsing.
///
/// Numbers keep serde_json's distinction between integers and floats: `1` and
/// `1.0` are two elements, as their JSON texts differ. A float `-0.0` is stored
/// as `0.0`, so that equal elements always have equal key bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(untagged)]
pub enum Element {
    String(String),
    Number(Number),
}

impl Element {
    /// A number element, with `-0.0` made `0.0`.
    pub fn number(n: Number) -> Element {
        match n.as_f64() {
            Some(f) if n.is_f64() && f == 0.0 && f.is_sign_negative() => {
                Element::Number(Number::from_f64(0.0).unwrap_or(n))
            }
            _ => Element::Number(n),
        }
    }

    /// A float element; `None` for NaN and infinities, which JSON cannot carry.
    pub fn from_f64(f: f64) -> Option<Element> {
        Number::from_f64(f).map(Element::number)
    }

    /// The element of a JSON value, or an `invalid_op` error saying what the value
    /// is instead.
    pub fn from_json(value: Value) -> Result<Element, ApiError> {
        match value {
            Value::String(s) => Ok(Element::String(s)),
            Value::Number(n) => Ok(Element::number(n)),
            other => Err(ApiError::invalid_op(format!(
                "a set element must be a JSON string or number, got {}",
                json_type_name(&other)
            ))),
        }
    }

    /// The element as a JSON value.
    pub fn to_json(&self) -> Value {
        match self {
            Element::String(s) => Value::String(s.clone()),
            Element::Number(n) => Value::Number(n.clone()),
        }
    }

    /// The canonical bytes of the element: `0x01` then the UTF-8 of a string, or
    /// `0x02` then the canonical serde_json text of a number. Equal elements have
    /// equal bytes; sets are ordered by these bytes (so numbers sort as text).
    pub fn to_key_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.key_len());
        match self {
            Element::String(s) => {
                out.push(TAG_STRING);
                out.extend_from_slice(s.as_bytes());
            }
            Element::Number(n) => {
                out.push(TAG_NUMBER);
                out.extend_from_slice(n.to_string().as_bytes());
            }
        }
        out
    }

    /// The length of [`Element::to_key_bytes`], which is how limits measure an element.
    pub fn key_len(&self) -> usize {
        match self {
            Element::String(s) => 1 + s.len(),
            Element::Number(n) => 1 + n.to_string().len(),
        }
    }

    /// Reads [`Element::to_key_bytes`] back. Anything that `to_key_bytes` could
    /// not have written (unknown tag, bad UTF-8, a number in non-canonical form
    /// such as `1e2` or `01`) is a `malformed` error.
    pub fn from_key_bytes(bytes: &[u8]) -> Result<Element, ApiError> {
        let Some((&tag, rest)) = bytes.split_first() else {
            return Err(ApiError::malformed("element key is empty"));
        };
        match tag {
            TAG_STRING => match std::str::from_utf8(rest) {
                Ok(s) => Ok(Element::String(s.to_owned())),
                Err(e) => Err(ApiError::malformed(format!(
                    "string element key is not UTF-8: {e}"
                ))),
            },
            TAG_NUMBER => {
                let text = std::str::from_utf8(rest).map_err(|e| {
                    ApiError::malformed(format!("number element key is not UTF-8: {e}"))
                })?;
                let number: Number = text.parse().map_err(|e| {
                    ApiError::malformed(format!(
                        "number element key `{}` is not a JSON number: {e}",
                        crate::crdt_type::truncate_for_message(text)
                    ))
                })?;
                let element = Element::number(number);
                match &element {
                    Element::Number(n) if n.to_string() == text => Ok(element),
                    _ => Err(ApiError::malformed(format!(
                        "number element key `{}` is not in canonical form",
                        crate::crdt_type::truncate_for_message(text)
                    ))),
                }
            }
            other => Err(ApiError::malformed(format!(
                "element key has unknown tag byte 0x{other:02x}"
            ))),
        }
    }

    /// The element named by a query parameter or a command-line argument:
    /// - text that starts with `"` and is a whole JSON string literal is that
    ///   string (`"5"` is the string 5, `"\u0041"` is `A`);
    /// - else text that is a whole JSON number is that number (`5`, `-1.5e3`);
    /// - else it is the text itself as a string (`apple`, `"unclosed`).
    ///
    /// An integer outside the 64-bit range is `malformed`: as a number it
    /// would be rounded to a float, and request bodies refuse it too.
    pub fn parse_query(text: &str) -> Result<Element, ApiError> {
        if text.len() >= 2 && text.starts_with('"') && text.ends_with('"') {
            if let Ok(s) = serde_json::from_str::<String>(text) {
                return Ok(Element::String(s));
            }
        }
        if let Ok(n) = text.parse::<Number>() {
            if crate::request::integer_beyond_64_bits(text.as_bytes()).is_some() {
                let mut shown: String = text.chars().take(40).collect();
                if shown.len() < text.len() {
                    shown.push('…');
                }
                return Err(ApiError::malformed(format!(
                    "the element {shown} is an integer outside the 64-bit range, which a set \
                     cannot hold as a number; quote it (\"{shown}\") to mean the string"
                )));
            }
            return Ok(Element::number(n));
        }
        Ok(Element::String(text.to_owned()))
    }

    /// The shortest text that [`Element::parse_query`] reads back as this element:
    /// numbers as their JSON text, strings as they are unless they would read as
    /// a number or a JSON string literal, in which case they are JSON-quoted.
    /// This is also the [`Display`](fmt::Display) form.
    pub fn to_query(&self) -> String {
        match self {
            Element::Number(n) => n.to_string(),
            Element::String(s) => {
                if matches!(Element::parse_query(s), Ok(Element::String(ref back)) if back == s) {
                    s.clone()
                } else {
                    // A JSON string literal always reads back as itself.
                    Value::String(s.clone()).to_string()
                }
            }
        }
    }
}

impl fmt::Display for Element {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_query())
    }
}

impl From<String> for Element {
    fn from(s: String) -> Self {
        Element::String(s)
    }
}

impl From<&str> for Element {
    fn from(s: &str) -> Self {
        Element::String(s.to_owned())
    }
}

impl From<i64> for Element {
    fn from(n: i64) -> Self {
        Element::Number(n.into())
    }
}

impl From<u64> for Element {
    fn from(n: u64) -> Self {
        Element::Number(n.into())
    }
}

impl<'de> Deserialize<'de> for Element {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ElementVisitor)
    }
}

struct ElementVisitor;

impl Visitor<'_> for ElementVisitor {
    type Value = Element;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a set element (a JSON string or number)")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Element, E> {
        Ok(Element::String(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Element, E> {
        Ok(Element::String(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Element, E> {
        Ok(Element::Number(v.into()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Element, E> {
        Ok(Element::Number(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Element, E> {
        Element::from_f64(v).ok_or_else(|| E::custom("a set element number must be finite"))
    }
}

/// The JSON type of a value, for error messages.
pub(crate) fn json_type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorCode;
    use proptest::prelude::*;

    fn num(text: &str) -> Element {
        Element::number(text.parse().unwrap())
    }

    #[test]
    fn serde_accepts_strings_and_numbers_only() {
        let elements: Vec<Element> = serde_json::from_str(r#"["a", 5, -3, 1.5, ""]"#).unwrap();
        assert_eq!(
            elements,
            vec![
                Element::from("a"),
                Element::from(5u64),
                Element::from(-3i64),
                Element::from_f64(1.5).unwrap(),
                Element::from(""),
            ]
        );
        assert_eq!(
            serde_json::to_string(&elements).unwrap(),
            r#"["a",5,-3,1.5,""]"#
        );
        for bad in ["true", "null", "[1]", r#"{"a":1}"#] {
            let err = serde_json::from_str::<Element>(bad)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("expected a set element (a JSON string or number)"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn from_json_names_the_wrong_type() {
        let err = Element::from_json(serde_json::json!({"a": 1})).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidOp);
        assert!(err.message.contains("an object"), "{}", err.message);
        assert_eq!(
            Element::from_json(serde_json::json!(7)).unwrap(),
            Element::from(7u64)
        );
    }

    #[test]
    fn key_bytes_layout() {
        assert_eq!(Element::from("ab").to_key_bytes(), b"\x01ab");
        assert_eq!(Element::from(-12i64).to_key_bytes(), b"\x02-12");
        assert_eq!(Element::from_f64(0.5).unwrap().to_key_bytes(), b"\x020.5");
        assert_eq!(Element::from("").to_key_bytes(), b"\x01");
        for e in [Element::from("héllo"), num("1e300"), num("-7")] {
            assert_eq!(e.key_len(), e.to_key_bytes().len());
        }
    }

    #[test]
    fn negative_zero_is_zero() {
        let a = Element::from_f64(-0.0).unwrap();
        let b = Element::from_f64(0.0).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.to_key_bytes(), b.to_key_bytes());
        let parsed: Element = serde_json::from_str("-0.0").unwrap();
        assert_eq!(parsed.to_key_bytes(), b.to_key_bytes());
        assert_eq!(
            Element::parse_query("-0.0").unwrap().to_key_bytes(),
            b.to_key_bytes()
        );
    }

    #[test]
    fn from_key_bytes_rejects_garbage() {
        let cases: &[&[u8]] = &[
            b"",
            b"\x03abc",
            b"\x01\xff",
            b"\x02",
            b"\x02abc",
            b"\x02 5",
            b"\x0201",
            b"\x021e2",
            b"\x02-0",
            b"\x02\xff",
            b"\x021e400",
        ];
        for bytes in cases {
            let err = Element::from_key_bytes(bytes).unwrap_err();
            assert_eq!(err.code, ErrorCode::Malformed, "{bytes:?}");
        }
    }

    #[test]
    fn parse_query_rules() {
        assert_eq!(
            Element::parse_query("apple").unwrap(),
            Element::from("apple")
        );
        assert_eq!(Element::parse_query("5").unwrap(), Element::from(5u64));
        assert_eq!(Element::parse_query("-5").unwrap(), Element::from(-5i64));
        assert_eq!(Element::parse_query("2.5e1").unwrap(), num("25.0"));
        assert_eq!(Element::parse_query(r#""5""#).unwrap(), Element::from("5"));
        assert_eq!(
            Element::parse_query(r#""a\"b""#).unwrap(),
            Element::from("a\"b")
        );
        assert_eq!(
            Element::parse_query(r#""\u0041""#).unwrap(),
            Element::from("A")
        );
        // Not a whole JSON string literal or number: the raw text.
        assert_eq!(
            Element::parse_query(r#""open"#).unwrap(),
            Element::from(r#""open"#)
        );
        assert_eq!(Element::parse_query(r#"""#).unwrap(), Element::from(r#"""#));
        assert_eq!(
            Element::parse_query(r#""a" "#).unwrap(),
            Element::from(r#""a" "#)
        );
        assert_eq!(
            Element::parse_query(r#""a"x""#).unwrap(),
            Element::from(r#""a"x""#)
        );
        assert_eq!(Element::parse_query(" 5").unwrap(), Element::from(" 5"));
        assert_eq!(Element::parse_query("5 ").unwrap(), Element::from("5 "));
        assert_eq!(Element::parse_query("05").unwrap(), Element::from("05"));
        assert_eq!(Element::parse_query("NaN").unwrap(), Element::from("NaN"));
        assert_eq!(
            Element::parse_query("1e400").unwrap(),
            Element::from("1e400")
        );
        assert_eq!(Element::parse_query("").unwrap(), Element::from(""));
        assert_eq!(Element::parse_query("true").unwrap(), Element::from("true"));
        // Integers: the 64-bit range, and nothing beyond it as a number.
        assert_eq!(
            Element::parse_query("18446744073709551615").unwrap(),
            Element::from(u64::MAX)
        );
        assert_eq!(
            Element::parse_query("-9223372036854775808").unwrap(),
            Element::from(i64::MIN)
        );
        for big in [
            "18446744073709551616",
            "-9223372036854775809",
            "123456789012345678901234567890",
        ] {
            let err = Element::parse_query(big).unwrap_err();
            assert_eq!(err.code, crate::ErrorCode::Malformed, "{big}");
            assert!(
                err.message.contains(&format!("(\"{big}\")")),
                "{}",
                err.message
            );
            // As a string it is quoted, and reads back as that string.
            let s = Element::from(big);
            assert_eq!(s.to_query(), format!("\"{big}\""));
            assert_eq!(Element::parse_query(&s.to_query()).unwrap(), s);
        }
    }

    #[test]
    fn display_is_the_query_form() {
        assert_eq!(Element::from("apple").to_string(), "apple");
        assert_eq!(Element::from(5u64).to_string(), "5");
        assert_eq!(Element::from("5").to_string(), r#""5""#);
        assert_eq!(Element::from(r#""q""#).to_string(), r#""\"q\"""#);
        assert_eq!(Element::from(r#""open"#).to_string(), r#""open"#);
        assert_eq!(Element::from("").to_string(), "");
    }

    fn any_element() -> impl Strategy<Value = Element> {
        prop_oneof![
            any::<String>().prop_map(Element::String),
            "[-0-9.e\" a]{0,8}".prop_map(Element::String),
            any::<i64>().prop_map(Element::from),
            any::<u64>().prop_map(Element::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(|f| Element::from_f64(f).unwrap()),
        ]
    }

    proptest! {
        #[test]
        fn key_bytes_round_trip(e in any_element()) {
            let bytes = e.to_key_bytes();
            prop_assert_eq!(Element::from_key_bytes(&bytes).unwrap(), e.clone());
            prop_assert_eq!(bytes.len(), e.key_len());
        }

        #[test]
        fn query_form_round_trips(e in any_element()) {
            prop_assert_eq!(Element::parse_query(&e.to_query()).unwrap(), e);
        }

        #[test]
        fn json_round_trips(e in any_element()) {
            let json = serde_json::to_string(&e).unwrap();
            let back: Element = serde_json::from_str(&json).unwrap();
            prop_assert_eq!(back.to_key_bytes(), e.to_key_bytes());
            prop_assert_eq!(back, e);
        }

        #[test]
        fn from_key_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..32)) {
            if let Ok(e) = Element::from_key_bytes(&bytes) {
                // Whatever it accepts is canonical.
                prop_assert_eq!(e.to_key_bytes(), bytes);
            }
        }

        #[test]
        fn parse_query_never_panics(text in "\\PC{0,16}") {
            // Only an integer beyond 64 bits is refused, and it needs more
            // than 16 characters; any other text is an element.
            let e = Element::parse_query(&text).unwrap();
            prop_assert_eq!(Element::parse_query(&e.to_query()).unwrap(), e);
        }
    }
}
