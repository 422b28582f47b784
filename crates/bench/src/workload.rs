//! Workloads: what operations a run sends, independent of the protocol.
//!
//! A [`Workload`] turns a per-connection [`OpStream`] state into the next
//! abstract [`Op`]; a [`Target`](crate::target::Target) decides how that op
//! looks on the wire (HTTP JSON, the QUIC envelope, RESP). Keeping the two
//! apart is what lets one run drive dotkv and Redis with the same operation
//! mix, so results are ratios measured side by side.
//!
//! The YCSB core workloads ([`Ycsb`]) map a record to a dotkv register (a
//! Redis string) holding one value of `value_bytes` bytes: a read is a
//! register get, an update overwrites the whole value, and YCSB's
//! read-modify-write is a get followed by a put of the same record, timed as
//! one operation. Keys are drawn from YCSB's scrambled zipfian distribution
//! ([`Zipfian`]).

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
    /// Read register `key`, then overwrite it with `value` (YCSB F's
    /// read-modify-write): two requests, one measured operation.
    ReadModifyWrite { key: u64, value: Bytes },
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
        // Every SplitMix64 state walks the same lattice (`+ GAMMA` per
        // step), so two streams whose start states differ by a small
        // multiple of GAMMA replay each other a few steps apart. Starting
        // from `seed ^ connection * GAMMA` did exactly that (connection `c`
        // replayed connection 0 from step `c`), so all connections drew the
        // same keys. Hashing the start state puts each stream at an
        // unrelated point of the 2^64-long cycle.
        let start = mix64(mix64(seed) ^ mix64((connection as u64).wrapping_add(1)));
        OpStream {
            connection,
            seq: 0,
            rng: SplitMix64(start),
        }
    }

    /// A uniformly random number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        // Lemire's multiply-shift; the tiny bias is irrelevant for key choice.
        ((self.rng.next() as u128 * n as u128) >> 64) as u64
    }

    /// A uniformly random number in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        // The top 53 bits: every double this gives is exact.
        (self.rng.next() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// SplitMix64: small, fast, and good enough to spread keys. The load generator
/// must stay cheap because it shares the CPU with the server it measures.
#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix64(self.0)
    }
}

/// SplitMix64's output function: a bijective mix of 64 bits.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
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
    Ycsb(Ycsb),
}

impl Builtin {
    /// Parse `ping`, `counter-add`, `register-put`, `register-get`, `set-add`,
    /// `ycsb-a`, `ycsb-b`, `ycsb-c`, `ycsb-f` with the given key (record)
    /// count and register value size.
    pub fn parse(name: &str, keys: u64, value_bytes: usize) -> Option<Builtin> {
        Some(match name {
            "ping" => Builtin::Ping(Ping),
            "counter-add" => Builtin::CounterAdd(CounterAdd { keys }),
            "register-put" => Builtin::RegisterPut(RegisterPut::new(keys, value_bytes)),
            "register-get" => Builtin::RegisterGet(RegisterGet { keys }),
            "set-add" => Builtin::SetAdd(SetAdd::new(keys)),
            other => {
                let kind = YcsbKind::parse(other.strip_prefix("ycsb-")?)?;
                Builtin::Ycsb(Ycsb::new(kind, keys, value_bytes))
            }
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
            Builtin::Ycsb(w) => w.name(),
        }
    }

    fn next_op(&self, s: &mut OpStream) -> Op {
        match self {
            Builtin::Ping(w) => w.next_op(s),
            Builtin::CounterAdd(w) => w.next_op(s),
            Builtin::RegisterPut(w) => w.next_op(s),
            Builtin::RegisterGet(w) => w.next_op(s),
            Builtin::SetAdd(w) => w.next_op(s),
            Builtin::Ycsb(w) => w.next_op(s),
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
        let value = json_string_value(value_bytes);
        RegisterPut {
            keys,
            value_bytes: value.len(),
            value,
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

/// A JSON string of exactly `bytes` bytes on the wire (quotes included, at
/// least 2): letters, so it needs no escaping.
pub fn json_string_value(bytes: usize) -> Bytes {
    let bytes = bytes.max(2);
    let mut v = Vec::with_capacity(bytes);
    v.push(b'"');
    v.extend((0..bytes - 2).map(|i| b'a' + (i % 26) as u8));
    v.push(b'"');
    Bytes::from(v)
}

/// Which YCSB core workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum YcsbKind {
    /// Update heavy: 50 % reads, 50 % updates.
    A,
    /// Read mostly: 95 % reads, 5 % updates.
    B,
    /// Read only.
    C,
    /// Read-modify-write: 50 % reads, 50 % read-modify-writes.
    F,
}

impl YcsbKind {
    pub fn parse(s: &str) -> Option<YcsbKind> {
        Some(match s {
            "a" | "A" => YcsbKind::A,
            "b" | "B" => YcsbKind::B,
            "c" | "C" => YcsbKind::C,
            "f" | "F" => YcsbKind::F,
            _ => return None,
        })
    }

    pub fn letter(self) -> char {
        match self {
            YcsbKind::A => 'A',
            YcsbKind::B => 'B',
            YcsbKind::C => 'C',
            YcsbKind::F => 'F',
        }
    }

    /// The share of plain reads; the rest are updates (A, B) or
    /// read-modify-writes (F).
    fn read_share(self) -> f64 {
        match self {
            YcsbKind::A | YcsbKind::F => 0.5,
            YcsbKind::B => 0.95,
            YcsbKind::C => 1.0,
        }
    }
}

/// A YCSB core workload over `records` registers of `value_bytes` each,
/// keys drawn from a scrambled zipfian distribution (constant 0.99).
#[derive(Debug, Clone)]
pub struct Ycsb {
    pub kind: YcsbKind,
    pub records: u64,
    value: Bytes,
    keys: Zipfian,
}

impl Ycsb {
    /// `value_bytes` as for [`RegisterPut::new`]. Builds the zipfian table
    /// (linear in `records`: about 20 ms for a million).
    pub fn new(kind: YcsbKind, records: u64, value_bytes: usize) -> Ycsb {
        Ycsb {
            kind,
            records,
            value: json_string_value(value_bytes),
            keys: Zipfian::new(records, ZIPFIAN_CONSTANT),
        }
    }

    /// The load phase: every record written once, in key order.
    pub fn load_ops(&self) -> impl Iterator<Item = Op> + '_ {
        (0..self.records).map(|key| Op::RegisterPut {
            key,
            value: self.value.clone(),
        })
    }
}

impl Workload for Ycsb {
    fn name(&self) -> String {
        format!(
            "YCSB {} ({} records of {} B, zipfian)",
            self.kind.letter(),
            self.records,
            self.value.len()
        )
    }

    fn next_op(&self, s: &mut OpStream) -> Op {
        s.seq += 1;
        let read = self.kind == YcsbKind::C || s.unit() < self.kind.read_share();
        let key = self.keys.next(s);
        if read {
            Op::RegisterGet { key }
        } else if self.kind == YcsbKind::F {
            Op::ReadModifyWrite {
                key,
                value: self.value.clone(),
            }
        } else {
            Op::RegisterPut {
                key,
                value: self.value.clone(),
            }
        }
    }
}

/// YCSB's zipfian constant.
pub const ZIPFIAN_CONSTANT: f64 = 0.99;

/// Zipfian ranks over `0..n` with the constant-time method of Gray et al.
/// ("Quickly generating billion-record synthetic databases", SIGMOD 1994),
/// which YCSB uses: rank 0 is the most popular, rank `i` is drawn with
/// probability close to `1 / (i + 1)^theta` (exact for ranks 0 and 1; the
/// formula approximates the rest, closely over ranges of ranks).
///
/// Ranks are then scrambled onto keys (`key = (rank * step + offset) mod n`
/// with `step` coprime to `n`, a bijection), so the popular keys are spread
/// over the key space rather than being its first few, as with YCSB's
/// scrambled zipfian. Unlike YCSB's hash, this keeps every rank on its own
/// key: the popularity of each key is exactly the zipfian one.
#[derive(Debug, Clone)]
pub struct Zipfian {
    n: u64,
    alpha: f64,
    zetan: f64,
    eta: f64,
    /// `1 + 0.5^theta`: below it (and above 1) the draw is rank 1.
    two_cut: f64,
    step: u64,
    offset: u64,
}

impl Zipfian {
    /// `n >= 1` items; `0 < theta < 1`.
    pub fn new(n: u64, theta: f64) -> Zipfian {
        let n = n.max(1);
        let zetan: f64 = (1..=n).map(|i| (i as f64).powf(-theta)).sum();
        let zeta2 = 1.0 + 0.5f64.powf(theta);
        let eta = if n > 2 {
            (1.0 - (2.0 / n as f64).powf(1.0 - theta)) / (1.0 - zeta2 / zetan)
        } else {
            0.0
        };
        // A step near n times the golden ratio's fraction spreads neighbouring
        // ranks far apart; nudge it until it is coprime to n (a bijection).
        let mut step = ((n as f64 * 0.618_033_988_749_895) as u64).max(1);
        while gcd(step, n) != 1 {
            step += 1;
        }
        Zipfian {
            n,
            alpha: 1.0 / (1.0 - theta),
            zetan,
            eta,
            two_cut: zeta2,
            step,
            offset: n / 3,
        }
    }

    /// The popularity rank of the next draw (0 = most popular).
    pub fn rank(&self, s: &mut OpStream) -> u64 {
        let u = s.unit();
        let uz = u * self.zetan;
        if uz < 1.0 || self.n == 1 {
            return 0;
        }
        if uz < self.two_cut || self.n == 2 {
            return 1;
        }
        let r = (self.n as f64 * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64;
        r.min(self.n - 1)
    }

    /// The key of the next draw.
    pub fn next(&self, s: &mut OpStream) -> u64 {
        self.key_of_rank(self.rank(s))
    }

    /// Where rank `r` lives in the key space.
    pub fn key_of_rank(&self, r: u64) -> u64 {
        ((r as u128 * self.step as u128 + self.offset as u128) % self.n as u128) as u64
    }

    /// The exact probability of rank `r` (for `theta` = YCSB's constant),
    /// for tests.
    #[cfg(test)]
    fn probability(&self, r: u64) -> f64 {
        ((r + 1) as f64).powf(-ZIPFIAN_CONSTANT) / self.zetan
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
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
    fn connections_draw_independent_keys() {
        // 50 connections of 2,000 draws over 100,000 keys: independent
        // streams cover about 1 - e^-1 = 63 % of the keys. (Streams that
        // replay each other cover about 2 %.)
        let mut seen = std::collections::HashSet::new();
        for c in 0..50 {
            let mut s = OpStream::new(c, 1);
            for _ in 0..2000 {
                seen.insert(s.below(100_000));
            }
        }
        assert!(seen.len() > 60_000, "{} distinct keys", seen.len());
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

    #[test]
    fn zipfian_matches_its_distribution() {
        let z = Zipfian::new(1000, ZIPFIAN_CONSTANT);
        let mut s = OpStream::new(0, 9);
        let draws = 200_000;
        let mut count = vec![0u32; 1000];
        for _ in 0..draws {
            let r = z.rank(&mut s);
            count[r as usize] += 1;
        }
        // The two head ranks are drawn exactly; beyond them Gray et al.'s
        // formula (like YCSB) approximates the distribution, closely over
        // any range of ranks but not rank by rank.
        for r in 0..2 {
            let want = z.probability(r) * draws as f64;
            let got = count[r as usize] as f64;
            assert!(
                (got - want).abs() < 0.05 * want,
                "rank {r}: {got} vs {want}"
            );
        }
        for (lo, hi) in [(0, 10), (0, 100), (100, 1000)] {
            let want: f64 = (lo..hi).map(|r| z.probability(r)).sum::<f64>() * draws as f64;
            let got: f64 = count[lo as usize..hi as usize]
                .iter()
                .map(|&c| c as f64)
                .sum();
            assert!(
                (got - want).abs() < 0.1 * want,
                "ranks {lo}..{hi}: {got} vs {want}"
            );
        }
        // Rank 0 holds about 13 % of draws at n = 1000, theta = 0.99.
        assert!(count[0] > draws / 10, "{}", count[0]);
        // The tail is reached.
        assert!(count[500..].iter().any(|&c| c > 0));
    }

    #[test]
    fn zipfian_scramble_is_a_bijection() {
        for n in [1u64, 2, 3, 10, 1000, 100_000] {
            let z = Zipfian::new(n, ZIPFIAN_CONSTANT);
            let mut seen = vec![false; n as usize];
            for r in 0..n {
                let k = z.key_of_rank(r);
                assert!(k < n);
                assert!(!seen[k as usize], "n {n}: key {k} twice");
                seen[k as usize] = true;
            }
        }
        // The two hottest keys are not neighbours.
        let z = Zipfian::new(100_000, ZIPFIAN_CONSTANT);
        assert!(z.key_of_rank(0).abs_diff(z.key_of_rank(1)) > 1000);
    }

    #[test]
    fn ycsb_mixes_have_their_proportions() {
        for (kind, reads) in [
            (YcsbKind::A, 0.5),
            (YcsbKind::B, 0.95),
            (YcsbKind::C, 1.0),
            (YcsbKind::F, 0.5),
        ] {
            let w = Ycsb::new(kind, 1000, 1000);
            let mut s = OpStream::new(1, 3);
            let n = 20_000;
            let mut got = 0;
            for _ in 0..n {
                match w.next_op(&mut s) {
                    Op::RegisterGet { key } => {
                        assert!(key < 1000);
                        got += 1;
                    }
                    Op::RegisterPut { value, .. } => {
                        assert_ne!(kind, YcsbKind::F);
                        assert_eq!(value.len(), 1000);
                    }
                    Op::ReadModifyWrite { .. } => assert_eq!(kind, YcsbKind::F),
                    other => panic!("unexpected {other:?}"),
                }
            }
            let share = got as f64 / n as f64;
            assert!((share - reads).abs() < 0.02, "{kind:?}: {share}");
        }
        assert_eq!(Ycsb::new(YcsbKind::A, 10, 1000).load_ops().count(), 10);
    }

    #[test]
    fn unit_is_in_range() {
        let mut s = OpStream::new(0, 5);
        for _ in 0..10_000 {
            let u = s.unit();
            assert!((0.0..1.0).contains(&u));
        }
    }
}
