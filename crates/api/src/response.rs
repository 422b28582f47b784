//! Answer bodies of the API routes, as the server writes them and clients read
//! them. [`Status`] and [`PeerStatus`] default every field, so a newer server
//! can add fields and an older client still reads the answer.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::element::Element;

/// Answer of writes that return nothing else (`PUT` register, `POST` set, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyResponse {
    pub key: String,
}

/// Answer of `GET` and `POST /v1/counter/{key}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterValue {
    pub key: String,
    pub value: i64,
}

/// Answer of `GET /v1/register/{key}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterValue {
    pub key: String,
    pub value: Value,
}

/// The last-writer-wins order key of a register write, as the `X-Dotkv-Hlc`
/// header shows it: `<hlc>.<replica>`, the HLC timestamp as a decimal `u64`
/// and the writer's replica id as 16 lowercase hex digits. Registers keep the
/// greatest key; the derived order (timestamp, then replica) is that order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LwwOrder {
    pub hlc: u64,
    pub replica: u64,
}

impl LwwOrder {
    /// Longest text of a key: 20 decimal digits, the dot, 16 hex digits.
    pub const MAX_LEN: usize = 37;

    /// The key's text, written into `buf` (every answer to a register write
    /// carries one, so this does without `fmt`'s machinery).
    pub fn encode<'b>(&self, buf: &'b mut [u8; Self::MAX_LEN]) -> &'b [u8] {
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        let mut n = self.hlc;
        loop {
            at -= 1;
            digits[at] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        let decimal = &digits[at..];
        buf[..decimal.len()].copy_from_slice(decimal);
        let mut len = decimal.len();
        buf[len] = b'.';
        len += 1;
        for shift in (0..16).rev() {
            buf[len] = b"0123456789abcdef"[((self.replica >> (shift * 4)) & 0xf) as usize];
            len += 1;
        }
        &buf[..len]
    }
}

impl std::fmt::Display for LwwOrder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut buf = [0u8; Self::MAX_LEN];
        // Digits, a dot and hex digits: always ASCII.
        f.write_str(std::str::from_utf8(self.encode(&mut buf)).unwrap_or_default())
    }
}

impl std::str::FromStr for LwwOrder {
    type Err = String;

    /// Only the exact form [`Display`](std::fmt::Display) writes, so two texts
    /// of one key are always equal.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("not an LWW order key (<decimal u64>.<16 hex digits>): {s:?}");
        let (hlc, replica) = s.split_once('.').ok_or_else(bad)?;
        let digits = |t: &str, hex: bool| {
            !t.is_empty()
                && t.bytes()
                    .all(|b| b.is_ascii_digit() || (hex && (b'a'..=b'f').contains(&b)))
        };
        if !digits(hlc, false) || (hlc.len() > 1 && hlc.starts_with('0')) {
            return Err(bad());
        }
        if replica.len() != 16 || !digits(replica, true) {
            return Err(bad());
        }
        Ok(LwwOrder {
            hlc: hlc.parse().map_err(|_| bad())?,
            replica: u64::from_str_radix(replica, 16).map_err(|_| bad())?,
        })
    }
}

/// Answer of `GET /v1/mvregister/{key}`: every concurrent value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MvRegisterValues {
    pub key: String,
    pub values: Vec<Value>,
}

/// One page of `GET /v1/set/{key}`. `next`, when present, is the `after` of
/// the next page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetPage {
    pub key: String,
    pub elements: Vec<Element>,
    #[serde(default)]
    pub next: Option<String>,
}

/// Answer of `GET /v1/set/{key}?contains=x`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetContains {
    pub key: String,
    pub contains: bool,
}

/// Answer of `GET /v1/flag/{key}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlagValue {
    pub key: String,
    pub value: bool,
}

/// One page of `GET /v1/{type}`. `next`, when present, is the `after` of the
/// next page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyList {
    pub keys: Vec<String>,
    #[serde(default)]
    pub next: Option<String>,
}

/// Answer of `POST /v1/batch`: how many ops were applied (all of them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchResponse {
    pub applied: usize,
}

/// Answer of `GET /v1/status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Status {
    /// The node's replica UUID.
    pub node_id: String,
    /// The compact replica id used in dots, as 16 lowercase hex digits: the
    /// form the version vector's keys and `X-Dotkv-Hlc` use (a JSON number
    /// would lose precision above 2^53 in many clients).
    pub replica: String,
    pub datacenter: String,
    /// The node's name in the cluster config.
    pub node: String,
    /// Highest contiguous sequence applied, by origin node id.
    pub version_vector: BTreeMap<String, u64>,
    pub peers: Vec<PeerStatus>,
}

/// One peer as seen from the answering node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PeerStatus {
    pub name: String,
    pub datacenter: String,
    pub address: String,
    pub connected: bool,
    /// Sequence numbers this node has applied and the peer has not
    /// acknowledged (one per op: a write of one op is one).
    pub lag_groups: u64,
    /// Age of the oldest group this node has and the peer has not
    /// acknowledged, in milliseconds.
    pub lag_ms: u64,
    /// What the peer has acknowledged, by origin node id.
    pub acked: BTreeMap<String, u64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lww_order_keys_print_parse_and_compare() {
        let k = LwwOrder {
            hlc: 112_233_445_566,
            replica: 0xab,
        };
        assert_eq!(k.to_string(), "112233445566.00000000000000ab");
        assert_eq!("112233445566.00000000000000ab".parse(), Ok(k));
        let max = LwwOrder {
            hlc: u64::MAX,
            replica: u64::MAX,
        };
        assert_eq!(max.to_string().parse(), Ok(max));
        assert_eq!(max.to_string(), "18446744073709551615.ffffffffffffffff");
        assert_eq!(max.to_string().len(), LwwOrder::MAX_LEN);
        let zero = LwwOrder { hlc: 0, replica: 0 };
        assert_eq!(zero.to_string(), "0.0000000000000000");
        for bad in [
            "",
            "1",
            "1.ab",
            "01.00000000000000ab",
            "1.00000000000000AB",
            "-1.00000000000000ab",
            "x.00000000000000ab",
            "18446744073709551616.0000000000000000",
            "1.00000000000000ab.1",
        ] {
            assert!(bad.parse::<LwwOrder>().is_err(), "{bad:?}");
        }
        // Timestamp first, then replica.
        let a = LwwOrder { hlc: 5, replica: 9 };
        let b = LwwOrder { hlc: 6, replica: 1 };
        let c = LwwOrder { hlc: 6, replica: 2 };
        assert!(a < b && b < c);
    }

    #[test]
    fn shapes_match_the_contract() {
        let page = SetPage {
            key: "k".into(),
            elements: vec!["a".into(), 5u64.into()],
            next: None,
        };
        assert_eq!(
            serde_json::to_value(&page).unwrap(),
            json!({"key": "k", "elements": ["a", 5], "next": null})
        );
        let list: KeyList = serde_json::from_value(json!({"keys": ["a"]})).unwrap();
        assert_eq!(list.next, None);
        assert_eq!(
            serde_json::to_value(CounterValue {
                key: "c".into(),
                value: -3
            })
            .unwrap(),
            json!({"key": "c", "value": -3})
        );
        assert_eq!(
            serde_json::to_value(BatchResponse { applied: 2 }).unwrap(),
            json!({"applied": 2})
        );
    }

    #[test]
    fn status_tolerates_missing_and_extra_fields() {
        let status: Status = serde_json::from_value(json!({
            "node_id": "n1",
            "peers": [{"name": "b", "connected": true, "future_field": 1}],
            "future_field": {"x": 1}
        }))
        .unwrap();
        assert_eq!(status.node_id, "n1");
        assert_eq!(status.replica, "");
        assert!(status.peers[0].connected);
        assert_eq!(status.peers[0].lag_ms, 0);
        let round: Status = serde_json::from_value(serde_json::to_value(&status).unwrap()).unwrap();
        assert_eq!(round, status);
    }
}
