//! The CRDT namespaces. Each key lives in the namespace of one type, so the same
//! key name under two types is two objects and there are no type conflicts.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::ApiError;

/// A CRDT type, which is also the namespace of its keys (`/v1/{type}/{key}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CrdtType {
    /// PN-counter with an `i64` value.
    Counter,
    /// Last-writer-wins register holding any JSON value.
    Register,
    /// Multi-value register: concurrent writes are all kept.
    #[serde(rename = "mvregister")]
    MvRegister,
    /// Add-wins observed-remove set of [`Element`](crate::Element)s.
    Set,
    /// Enable-wins flag.
    Flag,
}

impl CrdtType {
    /// Every type, in a stable order.
    pub const ALL: [CrdtType; 5] = [
        CrdtType::Counter,
        CrdtType::Register,
        CrdtType::MvRegister,
        CrdtType::Set,
        CrdtType::Flag,
    ];

    /// The namespace name, as it appears in paths and in batch ops.
    pub const fn as_str(self) -> &'static str {
        match self {
            CrdtType::Counter => "counter",
            CrdtType::Register => "register",
            CrdtType::MvRegister => "mvregister",
            CrdtType::Set => "set",
            CrdtType::Flag => "flag",
        }
    }
}

impl fmt::Display for CrdtType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CrdtType {
    type Err = ApiError;

    /// Parses a namespace name. An unknown one is `not_found`: in a path such as
    /// `/v1/map/k` there is no such resource.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CrdtType::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| {
                ApiError::not_found(format!(
                    "unknown type `{}`; expected one of counter, register, mvregister, set, flag",
                    truncate_for_message(s)
                ))
            })
    }
}

/// Cuts user input quoted in an error message to a readable length.
pub(crate) fn truncate_for_message(s: &str) -> String {
    const MAX: usize = 64;
    if s.len() <= MAX {
        return s.to_owned();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorCode;

    #[test]
    fn names_round_trip_through_from_str_and_serde() {
        for t in CrdtType::ALL {
            assert_eq!(t.as_str().parse::<CrdtType>().unwrap(), t);
            assert_eq!(t.to_string(), t.as_str());
            let json = serde_json::to_string(&t).unwrap();
            assert_eq!(json, format!("\"{}\"", t.as_str()));
            assert_eq!(serde_json::from_str::<CrdtType>(&json).unwrap(), t);
        }
    }

    #[test]
    fn unknown_namespace_is_not_found() {
        let err = "map".parse::<CrdtType>().unwrap_err();
        assert_eq!(err.code, ErrorCode::NotFound);
        assert!(err.message.contains("`map`"), "{}", err.message);
        // Case matters: namespaces are lowercase.
        assert!("Counter".parse::<CrdtType>().is_err());
        assert!("".parse::<CrdtType>().is_err());
        assert!(serde_json::from_str::<CrdtType>("\"MvRegister\"").is_err());
    }

    #[test]
    fn long_input_is_cut_in_messages_without_splitting_chars() {
        let long = "é".repeat(100);
        let err = long.parse::<CrdtType>().unwrap_err();
        assert!(err.message.len() < 150, "{}", err.message);
    }
}
