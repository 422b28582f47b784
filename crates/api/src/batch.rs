//! Batches (`POST /v1/batch`): the body's shape ([`Batch`], [`BatchOp`],
//! [`OpBody`]), parsed from JSON with messages that say what is wrong, and the
//! validation that turns each op into a [`ValidOp`] that fits its type and the
//! limits. One invalid op rejects the whole batch.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::crdt_type::CrdtType;
use crate::element::{json_type_name, Element};
use crate::error::ApiError;
use crate::limits::{validate_key, Limits};

/// Body of `POST /v1/batch`: ops applied atomically, all or none, and visible
/// together at every replica.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Batch {
    pub ops: Vec<BatchOp>,
}

/// One op of a batch: `{"type":"counter","key":"k","op":{"add":1}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchOp {
    #[serde(rename = "type")]
    pub crdt_type: CrdtType,
    pub key: String,
    pub op: OpBody,
}

/// The `op` object of a batch op, by shape. Which shapes fit which type is
/// checked later, by [`BatchOp::validate`].
#[derive(Debug, Clone, PartialEq)]
pub enum OpBody {
    /// `{"add": n}` (counter).
    CounterAdd(i64),
    /// `{"set": value}` (register, mvregister).
    Assign(Value),
    /// `{"add": [..], "remove": [..]}`, either list optional (set).
    SetUpdate {
        add: Vec<Element>,
        remove: Vec<Element>,
    },
    /// `{"enable": b}` (flag).
    Enable(bool),
    /// `{"delete": true}` (any type).
    Delete,
}

/// A batch op checked against its type and the limits: what the node applies.
#[derive(Debug, Clone, PartialEq)]
pub enum ValidOp {
    CounterAdd(i64),
    RegisterSet(Value),
    MvRegisterSet(Value),
    SetUpdate {
        add: Vec<Element>,
        remove: Vec<Element>,
    },
    FlagEnable(bool),
    Delete,
}

/// A [`ValidOp`] with the object it applies to.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyedOp {
    pub crdt_type: CrdtType,
    pub key: String,
    pub op: ValidOp,
}

const OP_FIELDS: &str = "add, remove, set, enable or delete";

impl OpBody {
    /// Reads an op object, saying exactly what is wrong when it fits no shape.
    /// Errors are `invalid_op`.
    pub fn from_value(value: Value) -> Result<OpBody, ApiError> {
        let mut map = match value {
            Value::Object(map) => map,
            other => {
                return Err(ApiError::invalid_op(format!(
                    "op must be a JSON object such as {{\"add\":1}}, got {}",
                    json_type_name(&other)
                )))
            }
        };
        if let Some(unknown) = map
            .keys()
            .find(|k| !matches!(k.as_str(), "add" | "remove" | "set" | "enable" | "delete"))
        {
            return Err(ApiError::invalid_op(format!(
                "unknown field `{}` in op; expected {OP_FIELDS}",
                crate::crdt_type::truncate_for_message(unknown)
            )));
        }
        let present: Vec<&str> = ["add/remove", "set", "enable", "delete"]
            .into_iter()
            .filter(|kind| match *kind {
                "add/remove" => map.contains_key("add") || map.contains_key("remove"),
                field => map.contains_key(field),
            })
            .collect();
        match present.as_slice() {
            [] => Err(ApiError::invalid_op(format!(
                "op is empty; expected one of {OP_FIELDS}"
            ))),
            ["add/remove"] => Self::add_remove(&mut map),
            ["set"] => Ok(OpBody::Assign(map.remove("set").unwrap_or(Value::Null))),
            ["enable"] => match map.remove("enable") {
                Some(Value::Bool(b)) => Ok(OpBody::Enable(b)),
                other => Err(ApiError::invalid_op(format!(
                    "`enable` must be a boolean, got {}",
                    type_of(other.as_ref())
                ))),
            },
            ["delete"] => match map.remove("delete") {
                Some(Value::Bool(true)) => Ok(OpBody::Delete),
                Some(Value::Bool(false)) => Err(ApiError::invalid_op(
                    "`delete` must be true; to keep the object, leave the op out",
                )),
                other => Err(ApiError::invalid_op(format!(
                    "`delete` must be true, got {}",
                    type_of(other.as_ref())
                ))),
            },
            kinds => Err(ApiError::invalid_op(format!(
                "op mixes {}; one op does one thing",
                kinds
                    .iter()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(" and ")
            ))),
        }
    }

    /// `{"add": n}` for a counter, or `{"add": [..], "remove": [..]}` for a set.
    fn add_remove(map: &mut Map<String, Value>) -> Result<OpBody, ApiError> {
        let add = map.remove("add");
        let remove = map.remove("remove");
        match (add, remove) {
            (Some(Value::Number(n)), None) => n.as_i64().map(OpBody::CounterAdd).ok_or_else(|| {
                ApiError::invalid_op(format!(
                    "counter `add` must be an integer from {} to {}, got {n}",
                    i64::MIN,
                    i64::MAX
                ))
            }),
            (Some(Value::Number(_)), Some(_)) => Err(ApiError::invalid_op(
                "a counter op {\"add\":n} cannot have `remove`; set ops take arrays: {\"add\":[..],\"remove\":[..]}",
            )),
            (add, remove) => Ok(OpBody::SetUpdate {
                add: elements("add", add)?,
                remove: elements("remove", remove)?,
            }),
        }
    }

    /// The op as JSON, in the shape [`OpBody::from_value`] reads.
    pub fn to_value(&self) -> Value {
        let mut map = Map::new();
        match self {
            OpBody::CounterAdd(n) => {
                map.insert("add".into(), Value::from(*n));
            }
            OpBody::Assign(v) => {
                map.insert("set".into(), v.clone());
            }
            OpBody::SetUpdate { add, remove } => {
                map.insert("add".into(), add.iter().map(Element::to_json).collect());
                map.insert(
                    "remove".into(),
                    remove.iter().map(Element::to_json).collect(),
                );
            }
            OpBody::Enable(b) => {
                map.insert("enable".into(), Value::Bool(*b));
            }
            OpBody::Delete => {
                map.insert("delete".into(), Value::Bool(true));
            }
        }
        Value::Object(map)
    }

    /// What kind of op this is, for messages.
    fn describe(&self) -> &'static str {
        match self {
            OpBody::CounterAdd(_) => "a counter add {\"add\":n}",
            OpBody::Assign(_) => "a register write {\"set\":value}",
            OpBody::SetUpdate { .. } => "a set update {\"add\":[..],\"remove\":[..]}",
            OpBody::Enable(_) => "a flag update {\"enable\":bool}",
            OpBody::Delete => "a delete",
        }
    }
}

/// The ops a type takes, for messages.
fn ops_of(crdt_type: CrdtType) -> &'static str {
    match crdt_type {
        CrdtType::Counter => "{\"add\":n} or {\"delete\":true}",
        CrdtType::Register | CrdtType::MvRegister => "{\"set\":value} or {\"delete\":true}",
        CrdtType::Set => "{\"add\":[..],\"remove\":[..]} or {\"delete\":true}",
        CrdtType::Flag => "{\"enable\":bool} or {\"delete\":true}",
    }
}

fn type_of(value: Option<&Value>) -> &'static str {
    value.map_or("nothing", json_type_name)
}

/// Reads an optional array of elements named `field`.
fn elements(field: &str, value: Option<Value>) -> Result<Vec<Element>, ApiError> {
    match value {
        None => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .into_iter()
            .enumerate()
            .map(|(i, item)| {
                Element::from_json(item).map_err(|e| e.context(format!("{field}[{i}]")))
            })
            .collect(),
        Some(other) => Err(ApiError::invalid_op(format!(
            "`{field}` must be an array of set elements, got {}",
            json_type_name(&other)
        ))),
    }
}

impl Serialize for OpBody {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_value().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for OpBody {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        OpBody::from_value(value).map_err(|e| D::Error::custom(e.message))
    }
}

impl BatchOp {
    /// Checks that the op fits its type (else `invalid_op`, 422), that the key
    /// is valid (400 or 413) and that values and elements are within the
    /// limits (413), and returns the typed op.
    pub fn validate(&self, limits: &Limits) -> Result<ValidOp, ApiError> {
        validate_key(&self.key, limits)?;
        into_valid_op(self.crdt_type, self.op.clone(), limits)
    }

    /// [`BatchOp::validate`], consuming the op so that nothing is copied.
    pub fn into_valid(self, limits: &Limits) -> Result<KeyedOp, ApiError> {
        validate_key(&self.key, limits)?;
        let op = into_valid_op(self.crdt_type, self.op, limits)?;
        Ok(KeyedOp {
            crdt_type: self.crdt_type,
            key: self.key,
            op,
        })
    }
}

fn into_valid_op(crdt_type: CrdtType, op: OpBody, limits: &Limits) -> Result<ValidOp, ApiError> {
    match (crdt_type, op) {
        (_, OpBody::Delete) => Ok(ValidOp::Delete),
        (CrdtType::Counter, OpBody::CounterAdd(n)) => Ok(ValidOp::CounterAdd(n)),
        (CrdtType::Register, OpBody::Assign(v)) => {
            limits.validate_value(&v)?;
            Ok(ValidOp::RegisterSet(v))
        }
        (CrdtType::MvRegister, OpBody::Assign(v)) => {
            limits.validate_value(&v)?;
            Ok(ValidOp::MvRegisterSet(v))
        }
        (CrdtType::Set, OpBody::SetUpdate { add, remove }) => {
            limits.validate_elements(&add, &remove)?;
            Ok(ValidOp::SetUpdate { add, remove })
        }
        (CrdtType::Flag, OpBody::Enable(b)) => Ok(ValidOp::FlagEnable(b)),
        (t, op) => Err(ApiError::invalid_op(format!(
            "{} is not an op of type {t}; {t} takes {}",
            op.describe(),
            ops_of(t)
        ))),
    }
}

impl Batch {
    /// Checks the whole batch: its size (`too_large` over `max_batch_ops`,
    /// `invalid_op` when empty) and every op. The answer is in op order. An
    /// error names the op: `ops[3] (flag/k): ...`.
    pub fn validate(&self, limits: &Limits) -> Result<Vec<ValidOp>, ApiError> {
        self.check_size(limits)?;
        self.ops
            .iter()
            .enumerate()
            .map(|(i, op)| op.validate(limits).map_err(|e| e.context(op_label(i, op))))
            .collect()
    }

    /// [`Batch::validate`], consuming the batch so that nothing is copied.
    pub fn into_valid(self, limits: &Limits) -> Result<Vec<KeyedOp>, ApiError> {
        self.check_size(limits)?;
        self.ops
            .into_iter()
            .enumerate()
            .map(|(i, op)| {
                let label = op_label(i, &op);
                op.into_valid(limits).map_err(|e| e.context(label))
            })
            .collect()
    }

    fn check_size(&self, limits: &Limits) -> Result<(), ApiError> {
        if self.ops.is_empty() {
            return Err(ApiError::invalid_op("batch has no ops"));
        }
        if self.ops.len() > limits.max_batch_ops {
            return Err(ApiError::too_large(format!(
                "batch has {} ops; the limit is {}",
                self.ops.len(),
                limits.max_batch_ops
            )));
        }
        Ok(())
    }
}

fn op_label(i: usize, op: &BatchOp) -> String {
    format!(
        "ops[{i}] ({}/{})",
        op.crdt_type,
        crate::crdt_type::truncate_for_message(&op.key)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::from_json_body;
    use crate::ErrorCode;
    use serde_json::json;

    fn op(value: Value) -> Result<OpBody, ApiError> {
        OpBody::from_value(value)
    }

    fn batch_op(t: CrdtType, op_json: Value) -> BatchOp {
        BatchOp {
            crdt_type: t,
            key: "k".into(),
            op: OpBody::from_value(op_json).unwrap(),
        }
    }

    #[test]
    fn op_shapes() {
        assert_eq!(op(json!({"add": 5})).unwrap(), OpBody::CounterAdd(5));
        assert_eq!(op(json!({"add": -5})).unwrap(), OpBody::CounterAdd(-5));
        assert_eq!(
            op(json!({"set": {"a": 1}})).unwrap(),
            OpBody::Assign(json!({"a": 1}))
        );
        assert_eq!(
            op(json!({"set": null})).unwrap(),
            OpBody::Assign(Value::Null)
        );
        assert_eq!(op(json!({"enable": false})).unwrap(), OpBody::Enable(false));
        assert_eq!(op(json!({"delete": true})).unwrap(), OpBody::Delete);
        assert_eq!(
            op(json!({"add": ["a", 1], "remove": ["b"]})).unwrap(),
            OpBody::SetUpdate {
                add: vec!["a".into(), 1u64.into()],
                remove: vec!["b".into()]
            }
        );
        assert_eq!(
            op(json!({"remove": ["b"]})).unwrap(),
            OpBody::SetUpdate {
                add: vec![],
                remove: vec!["b".into()]
            }
        );
        assert_eq!(
            op(json!({"add": []})).unwrap(),
            OpBody::SetUpdate {
                add: vec![],
                remove: vec![]
            }
        );
    }

    #[test]
    fn op_shape_errors_say_what_is_wrong() {
        let cases = [
            (json!(5), "must be a JSON object"),
            (json!([]), "got an array"),
            (json!({}), "op is empty"),
            (json!({"ad": 1}), "unknown field `ad`"),
            (json!({"add": 1.5}), "must be an integer"),
            (
                json!({"add": 9_223_372_036_854_775_808u64}),
                "must be an integer",
            ),
            (
                json!({"add": "5"}),
                "`add` must be an array of set elements, got a string",
            ),
            (json!({"add": 1, "remove": [1]}), "cannot have `remove`"),
            (json!({"remove": 1}), "`remove` must be an array"),
            (
                json!({"add": [1, {"x": 1}]}),
                "add[1]: a set element must be a JSON string or number, got an object",
            ),
            (json!({"remove": [null]}), "remove[0]"),
            (
                json!({"enable": "yes"}),
                "`enable` must be a boolean, got a string",
            ),
            (json!({"delete": false}), "`delete` must be true"),
            (json!({"delete": 1}), "`delete` must be true, got a number"),
            (
                json!({"set": 1, "enable": true}),
                "op mixes `set` and `enable`",
            ),
            (
                json!({"add": 1, "delete": true}),
                "op mixes `add/remove` and `delete`",
            ),
        ];
        for (value, needle) in cases {
            let err = op(value.clone()).unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidOp, "{value}");
            assert!(err.message.contains(needle), "{value}: {}", err.message);
        }
    }

    #[test]
    fn op_json_round_trips() {
        for value in [
            json!({"add": 3}),
            json!({"set": [1, "x"]}),
            json!({"add": ["a"], "remove": [2]}),
            json!({"enable": true}),
            json!({"delete": true}),
        ] {
            let parsed = op(value).unwrap();
            let back: OpBody =
                serde_json::from_value(serde_json::to_value(&parsed).unwrap()).unwrap();
            assert_eq!(back, parsed);
        }
    }

    #[test]
    fn ops_must_fit_their_type() {
        let l = Limits::default();
        let ok = [
            (CrdtType::Counter, json!({"add": 5}), ValidOp::CounterAdd(5)),
            (
                CrdtType::Register,
                json!({"set": "v"}),
                ValidOp::RegisterSet(json!("v")),
            ),
            (
                CrdtType::MvRegister,
                json!({"set": 1}),
                ValidOp::MvRegisterSet(json!(1)),
            ),
            (
                CrdtType::Set,
                json!({"add": ["a"]}),
                ValidOp::SetUpdate {
                    add: vec!["a".into()],
                    remove: vec![],
                },
            ),
            (
                CrdtType::Flag,
                json!({"enable": true}),
                ValidOp::FlagEnable(true),
            ),
        ];
        for (t, body, expected) in ok {
            assert_eq!(batch_op(t, body).validate(&l).unwrap(), expected);
        }
        for t in CrdtType::ALL {
            assert_eq!(
                batch_op(t, json!({"delete": true})).validate(&l).unwrap(),
                ValidOp::Delete
            );
        }
        let bad = [
            (CrdtType::Flag, json!({"add": 5})),
            (CrdtType::Counter, json!({"add": ["a"]})),
            (CrdtType::Counter, json!({"set": 1})),
            (CrdtType::Set, json!({"add": 1})),
            (CrdtType::Set, json!({"enable": true})),
            (CrdtType::Register, json!({"enable": true})),
            (CrdtType::MvRegister, json!({"add": []})),
            (CrdtType::Flag, json!({"set": true})),
        ];
        for (t, body) in bad {
            let err = batch_op(t, body.clone()).validate(&l).unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidOp, "{t} {body}");
            assert_eq!(err.status(), 422);
            assert!(
                err.message.contains(&format!("not an op of type {t}")),
                "{}",
                err.message
            );
        }
        let err = batch_op(CrdtType::Flag, json!({"add": 5}))
            .validate(&l)
            .unwrap_err();
        assert_eq!(
            err.message,
            "a counter add {\"add\":n} is not an op of type flag; flag takes {\"enable\":bool} or {\"delete\":true}"
        );
    }

    #[test]
    fn op_limits() {
        let l = Limits {
            max_key_bytes: 3,
            max_value_bytes: 8,
            max_elements_per_op: 2,
            ..Limits::default()
        };
        let mut o = batch_op(CrdtType::Counter, json!({"add": 1}));
        o.key = String::new();
        assert_eq!(o.validate(&l).unwrap_err().code, ErrorCode::Malformed);
        o.key = "long".into();
        assert_eq!(o.validate(&l).unwrap_err().code, ErrorCode::TooLarge);

        let big = batch_op(CrdtType::Register, json!({"set": "123456789"}));
        assert_eq!(big.validate(&l).unwrap_err().code, ErrorCode::TooLarge);
        let big = batch_op(CrdtType::MvRegister, json!({"set": "123456789"}));
        assert_eq!(big.validate(&l).unwrap_err().code, ErrorCode::TooLarge);
        let many = batch_op(CrdtType::Set, json!({"add": [1, 2], "remove": [3]}));
        assert_eq!(many.validate(&l).unwrap_err().code, ErrorCode::TooLarge);
        let long = batch_op(CrdtType::Set, json!({"add": ["123456789"]}));
        assert_eq!(long.validate(&l).unwrap_err().code, ErrorCode::TooLarge);
    }

    #[test]
    fn batches() {
        let body = br#"{"ops":[
            {"type":"counter","key":"c","op":{"add":2}},
            {"type":"set","key":"s","op":{"add":["x"],"remove":[1]}},
            {"type":"flag","key":"f","op":{"delete":true}}
        ]}"#;
        let batch: Batch = from_json_body(body).unwrap();
        let l = Limits::default();
        assert_eq!(
            batch.validate(&l).unwrap(),
            vec![
                ValidOp::CounterAdd(2),
                ValidOp::SetUpdate {
                    add: vec!["x".into()],
                    remove: vec![1u64.into()]
                },
                ValidOp::Delete
            ]
        );
        let keyed = batch.clone().into_valid(&l).unwrap();
        assert_eq!(keyed[2].crdt_type, CrdtType::Flag);
        assert_eq!(keyed[2].key, "f");
        assert_eq!(keyed[0].op, ValidOp::CounterAdd(2));
        // Serialization reads back the same.
        let back: Batch = serde_json::from_str(&serde_json::to_string(&batch).unwrap()).unwrap();
        assert_eq!(back, batch);
    }

    #[test]
    fn one_bad_op_rejects_the_batch_and_is_named() {
        let body = br#"{"ops":[
            {"type":"counter","key":"c","op":{"add":2}},
            {"type":"flag","key":"f","op":{"add":5}}
        ]}"#;
        let batch: Batch = from_json_body(body).unwrap();
        let err = batch.validate(&Limits::default()).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidOp);
        assert!(
            err.message.starts_with("ops[1] (flag/f): "),
            "{}",
            err.message
        );
        let err = batch.into_valid(&Limits::default()).unwrap_err();
        assert!(
            err.message.starts_with("ops[1] (flag/f): "),
            "{}",
            err.message
        );
    }

    #[test]
    fn batch_size_limits() {
        let l = Limits {
            max_batch_ops: 1,
            ..Limits::default()
        };
        let empty = Batch { ops: vec![] };
        assert_eq!(empty.validate(&l).unwrap_err().code, ErrorCode::InvalidOp);
        let two = Batch {
            ops: vec![
                batch_op(CrdtType::Counter, json!({"add": 1})),
                batch_op(CrdtType::Counter, json!({"add": 1})),
            ],
        };
        assert_eq!(two.validate(&l).unwrap_err().code, ErrorCode::TooLarge);
        assert_eq!(two.into_valid(&l).unwrap_err().code, ErrorCode::TooLarge);
    }

    #[test]
    fn batch_body_errors() {
        let cases: [(&[u8], ErrorCode, &str); 6] = [
            (
                br#"{"ops":[{"type":"map","key":"k","op":{"delete":true}}]}"#,
                ErrorCode::InvalidOp,
                "unknown variant `map`",
            ),
            (
                br#"{"ops":[{"type":"flag","key":"k","op":{"enable":"on"}}]}"#,
                ErrorCode::InvalidOp,
                "`enable` must be a boolean",
            ),
            (
                br#"{"ops":[{"type":"flag","key":"k"}]}"#,
                ErrorCode::InvalidOp,
                "missing field `op`",
            ),
            (
                br#"{"ops":[{"type":"flag","key":"k","op":{"enable":true},"x":1}]}"#,
                ErrorCode::InvalidOp,
                "unknown field `x`",
            ),
            (br#"{"op":[]}"#, ErrorCode::InvalidOp, "unknown field `op`"),
            (
                br#"{"ops":[{"type":"flag""#,
                ErrorCode::Malformed,
                "not valid JSON",
            ),
        ];
        for (body, code, needle) in cases {
            let err = from_json_body::<Batch>(body).unwrap_err();
            assert_eq!(err.code, code, "{}", String::from_utf8_lossy(body));
            assert!(err.message.contains(needle), "{}", err.message);
        }
    }
}
