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
    /// The compact replica id used in dots.
    pub replica: u64,
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
        assert_eq!(status.replica, 0);
        assert!(status.peers[0].connected);
        assert_eq!(status.peers[0].lag_ms, 0);
        let round: Status = serde_json::from_value(serde_json::to_value(&status).unwrap()).unwrap();
        assert_eq!(round, status);
    }
}
