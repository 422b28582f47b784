//! Workloads: what operations a run sends, independent of the protocol.
//!
//! A [`Workload`] turns a per-connection [`OpStream`] state into the next
//! abstract [`Op`]; a [`Target`](crate::target::Target) decides how that op
//! looks on the wire (HTTP JSON today; QUIC frames and RESP later). Keeping the
//! two apart is what lets one run drive dotkv and its peers with the same
//! operation mix, so results are ratios measured side by side. YCSB workloads
//! (read/update/insert/scan with zipfian keys) will be more implementations of
//! the same trait.

use bytes::Bytes;

/// One abstract operation. Keys are numbers; the target names them
/// (`bench-{n}` over HTTP), so every target sees the same key space.
#[derive(Debug, Clone)]
pub enum Op {
    /// The cheapest request the target's protocol has (HTTP: `GET /`), used to
    /// measure the ceiling of the protocol stack itself.
    Ping,
    /// Add `delta` to counter `key`.
    CounterAdd { key: u64, delta: i64 },
    /// Set register `key` to `value`, already encoded as JSON.
    RegisterPut { key: u64, value: Bytes },
    /// Read register `key`.
    RegisterGet { key: u64 },
    /// Add one element (a string) to set `key`.
    SetAdd { key: u64, element: String },
}

/// Per-connection state a workload draws from: which connection this is, how
/// many ops it has produced, and a private random stream (no shared state, so
/// connections never contend on the hot path).
#[derive(Debug)]
pub struct OpStream {
    pub connection: usize,
    pub seq: u64,
    rng: SplitMix64,
}

impl OpStream {
    pub fn new(connection: usize, seed: u64) -> OpStream {
        OpStream {
            connection,
            seq: 0,
            rng: SplitMix64(seed ^ (connection as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)),
        }
    }

    /// A uniformly random number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        // Lemire's multiply-shift; the tiny bias is irrelevant for key choice.
        ((self.rng.next() as u128 * n as u128) >> 64) as u64
    }
}

/// SplitMix64: small, fast, and good enough to spread keys. The load generator
/// must stay cheap because it shares the CPU with the server it measures.
#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// A source of operations, shared by all connections of a run.
pub trait Workload: Send + Sync + 'static {
    /// Short name for tables and JSON.
    fn name(&self) -> String;
    /// The next operation for the connection whose state is `s`.
    fn next_op(&self, s: &mut OpStream) -> Op;
}

/// The workloads the command line knows. Each one is a plain struct so that a
/// benchmark can also build them directly.
#[derive(Debug, Clone)]
pub enum Builtin {
    Ping(Ping),
    CounterAdd(CounterAdd),
    RegisterPut(RegisterPut),
    RegisterGet(RegisterGet),
    SetAdd(SetAdd),
}

impl Builtin {
    /// Parse `ping`, `counter-add`, `register-put`, `register-get`, `set-add`
    /// with the given key count and register value size.
    pub fn parse(name: &str, keys: u64, value_bytes: usize) -> Option<Builtin> {
        Some(match name {
            "ping" => Builtin::Ping(Ping),
            "counter-add" => Builtin::CounterAdd(CounterAdd { keys }),
            "register-put" => Builtin::RegisterPut(RegisterPut::new(keys, value_bytes)),
            "register-get" => Builtin::RegisterGet(RegisterGet { keys }),
            "set-add" => Builtin::SetAdd(SetAdd::new(keys)),
            _ => return None,
        })
    }
}

impl Workload for Builtin {
    fn name(&self) -> String {
        match self {
            Builtin::Ping(w) => w.name(),
            Builtin::CounterAdd(w) => w.name(),
            Builtin::RegisterPut(w) => w.name(),
            Builtin::RegisterGet(w) => w.name(),
            Builtin::SetAdd(w) => w.name(),
        }
    }

    fn next_op(&self, s: &mut OpStream) -> Op {
        match self {
            Builtin::Ping(w) => w.next_op(s),
            Builtin::CounterAdd(w) => w.next_op(s),
            Builtin::RegisterPut(w) => w.next_op(s),
            Builtin::RegisterGet(w) => w.next_op(s),
            Builtin::SetAdd(w) => w.next_op(s),
        }
    }
}

/// Nothing but pings.
#[derive(Debug, Clone)]
pub struct Ping;

impl Workload for Ping {
    fn name(&self) -> String {
        "ping".into()
    }
    fn next_op(&self, s: &mut OpStream) -> Op {
        s.seq += 1;
        Op::Ping
    }
}

/// `+1` on a uniformly random counter among `keys`.
#[derive(Debug, Clone)]
pub struct CounterAdd {
    pub keys: u64,
}

impl Workload for CounterAdd {
    fn name(&self) -> String {
        format!("counter add ({} keys)", self.keys)
    }
    fn next_op(&self, s: &mut OpStream) -> Op {
        s.seq += 1;
        Op::CounterAdd {
            key: s.below(self.keys),
            delta: 1,
        }
    }
}

/// Overwrite a uniformly random register among `keys` with a fixed-size value.
#[derive(Debug, Clone)]
pub struct RegisterPut {
    pub keys: u64,
    value: Bytes,
    value_bytes: usize,
}

impl RegisterPut {
    /// `value_bytes` is the size of the JSON value on the wire (a string of
    /// `value_bytes - 2` letters plus its quotes), at least 2.
    pub fn new(keys: u64, value_bytes: usize) -> RegisterPut {
        let value_bytes = value_bytes.max(2);
        let mut v = Vec::with_capacity(value_bytes);
        v.push(b'"');
        v.extend((0..value_bytes - 2).map(|i| b'a' + (i % 26) as u8));
        v.push(b'"');
        RegisterPut {
            keys,
            value: Bytes::from(v),
            value_bytes,
        }
    }

    /// Every key this workload can write, once each (for a prefill).
    pub fn all_keys(&self) -> impl Iterator<Item = Op> + '_ {
        (0..self.keys).map(|key| Op::RegisterPut {
            key,
            value: self.value.clone(),
        })
    }
}

impl Workload for RegisterPut {
    fn name(&self) -> String {
        format!("register put ({} B, {} keys)", self.value_bytes, self.keys)
    }
    fn next_op(&self, s: &mut OpStream) -> Op {
        s.seq += 1;
        Op::RegisterPut {
            key: s.below(self.keys),
            value: self.value.clone(),
        }
    }
}

/// Read a uniformly random register among `keys` (write them first, or the
/// target answers 404, which counts as an error).
#[derive(Debug, Clone)]
pub struct RegisterGet {
    pub keys: u64,
}

impl Workload for RegisterGet {
    fn name(&self) -> String {
        format!("register get ({} keys)", self.keys)
    }
    fn next_op(&self, s: &mut OpStream) -> Op {
        s.seq += 1;
        Op::RegisterGet {
            key: s.below(self.keys),
        }
    }
}

/// Add a never-before-used element to a uniformly random set among `sets`, so
/// sets grow for the whole run (the expensive case for an OR-set).
#[derive(Debug, Clone)]
pub struct SetAdd {
    pub sets: u64,
    /// Distinguishes runs, so repeated runs against one server still add new
    /// elements.
    salt: u64,
}

impl SetAdd {
    pub fn new(sets: u64) -> SetAdd {
        let salt = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        SetAdd { sets, salt }
    }
}

impl Workload for SetAdd {
    fn name(&self) -> String {
        format!("set add (unique, {} sets)", self.sets)
    }
    fn next_op(&self, s: &mut OpStream) -> Op {
        s.seq += 1;
        Op::SetAdd {
            key: s.below(self.sets),
            element: format!("e{:x}-{}-{}", self.salt, s.connection, s.seq),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn below_stays_in_range_and_spreads() {
        let mut s = OpStream::new(3, 42);
        let mut seen = [0u32; 10];
        for _ in 0..10_000 {
            let k = s.below(10);
            assert!(k < 10);
            seen[k as usize] += 1;
        }
        assert!(seen.iter().all(|&c| c > 800), "{seen:?}");
    }

    #[test]
    fn set_elements_are_unique_across_connections() {
        let w = SetAdd::new(100);
        let mut all = std::collections::HashSet::new();
        for c in 0..4 {
            let mut s = OpStream::new(c, 7);
            for _ in 0..1000 {
                let Op::SetAdd { element, .. } = w.next_op(&mut s) else {
                    panic!("not a set add")
                };
                assert!(all.insert(element));
            }
        }
    }

    #[test]
    fn register_value_has_the_asked_size_and_is_json() {
        let w = RegisterPut::new(10, 100);
        let Op::RegisterPut { value, .. } = w.next_op(&mut OpStream::new(0, 1)) else {
            panic!("not a put")
        };
        assert_eq!(value.len(), 100);
        let v: serde_json::Value = serde_json::from_slice(&value).unwrap();
        assert!(v.is_string());
    }
}
