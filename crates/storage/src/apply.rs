//! Applying operations and delta groups to the stored state, through an overlay
//! that holds what the current commit group has written so far.
//!
//! Objects kept by a node under causal delivery have the node's version vector
//! as their causal context, so rows hold only live dots: a dot the vector
//! covers but no row holds was removed. Local operations allocate dots from the
//! vector; remote groups are joined with it.

use crate::db::{encode_state, Store, CF_DELTAS, CF_OBJECTS, CF_SET_ELEMS};
use crate::keys;
use crate::model::{
    CounterState, DeltaGroup, DeltaOp, FlagState, MvRegisterState, ObjectKind, Op, OpOutput,
    RegisterState,
};
use crate::StorageError;
use dotkv_crdt::{
    decode, CausalContext, Dot, DotFun, DotSet, DotStore, HlcClock, LwwValue, ReplicaId,
    VersionVector, WallClock,
};
use rocksdb::WriteBatch;
use std::collections::BTreeMap;

/// The writer's maps of rows. Their keys are bounded in number (a commit
/// group, or the row cache's budget) and hashed with a per-process random
/// seed; foldhash does that in a fraction of SipHash's time.
type RowMap = std::collections::HashMap<Vec<u8>, Option<Vec<u8>>, foldhash::fast::RandomState>;

/// Rows by column family and key; `None` is a deletion. One map per column
/// family, so a row is looked up by a borrowed key.
///
/// `cleared` holds key prefixes whose every row was deleted at once (a range
/// deletion, one per cleared set, however many elements it had). The rows in
/// the maps were all written after those deletions: clearing a prefix drops
/// the rows under it that were written before.
#[derive(Default)]
pub(crate) struct Rows {
    by_cf: Vec<(&'static str, RowMap)>,
    cleared: Vec<(&'static str, Vec<u8>)>,
}

impl Rows {
    fn map(&self, cf: &str) -> Option<&RowMap> {
        self.by_cf.iter().find(|(c, _)| *c == cf).map(|(_, m)| m)
    }

    fn map_mut(&mut self, cf: &'static str) -> &mut RowMap {
        let i = match self.by_cf.iter().position(|(c, _)| *c == cf) {
            Some(i) => i,
            None => {
                self.by_cf.push((cf, RowMap::default()));
                self.by_cf.len() - 1
            }
        };
        &mut self.by_cf[i].1
    }

    fn get(&self, cf: &str, key: &[u8]) -> Option<&Option<Vec<u8>>> {
        self.map(cf)?.get(key)
    }

    pub(crate) fn insert(&mut self, cf: &'static str, key: Vec<u8>, value: Option<Vec<u8>>) {
        self.map_mut(cf).insert(key, value);
    }

    fn is_empty(&self) -> bool {
        self.by_cf.iter().all(|(_, m)| m.is_empty()) && self.cleared.is_empty()
    }

    fn clear(&mut self) {
        self.by_cf.iter_mut().for_each(|(_, m)| m.clear());
        self.cleared.clear();
    }

    /// Delete every row of `cf` under `prefix`, those written here and those
    /// further down.
    fn clear_prefix(&mut self, cf: &'static str, prefix: Vec<u8>) {
        if let Some(m) = self
            .by_cf
            .iter_mut()
            .find(|(c, _)| *c == cf)
            .map(|(_, m)| m)
        {
            m.retain(|k, _| !k.starts_with(&prefix));
        }
        // A prefix under one already cleared adds nothing; one over earlier
        // ones replaces them.
        if self.is_cleared(cf, &prefix) {
            return;
        }
        self.cleared
            .retain(|(c, p)| !(*c == cf && p.starts_with(&prefix)));
        self.cleared.push((cf, prefix));
    }

    /// Whether a clear at this layer deleted `key` of `cf`, as a row further
    /// down holds it.
    fn is_cleared(&self, cf: &str, key: &[u8]) -> bool {
        self.cleared
            .iter()
            .any(|(c, p)| *c == cf && key.starts_with(p))
    }

    /// Move every row and clear of `other` into this one, over what is here:
    /// `other`'s clears first, as they came before its rows.
    fn take_all(&mut self, other: &mut Rows) {
        for (cf, prefix) in other.cleared.drain(..) {
            self.clear_prefix(cf, prefix);
        }
        for (cf, m) in &mut other.by_cf {
            self.map_mut(cf).extend(m.drain());
        }
    }

    fn iter(&self) -> impl Iterator<Item = (&'static str, &Vec<u8>, &Option<Vec<u8>>)> {
        self.by_cf
            .iter()
            .flat_map(|(cf, m)| m.iter().map(move |(k, v)| (*cf, k, v)))
    }
}

/// Bytes a cached row is charged on top of its key and value: the map entry,
/// the two vectors' headers and the allocator's rounding.
const ROW_OVERHEAD: usize = 96;

fn row_cost(key: &[u8], value: &Option<Vec<u8>>) -> usize {
    // The value's capacity, not its length: encoded rows start with room to
    // spare (`dotkv_crdt::encode`), and the budget is memory.
    key.len() + value.as_ref().map_or(0, Vec::capacity) + ROW_OVERHEAD
}

/// One generation of [`RowCache`]: object rows and set-element rows.
#[derive(Default)]
struct RowGen {
    objects: RowMap,
    elems: RowMap,
    bytes: usize,
}

impl RowGen {
    fn map(&self, cf: &str) -> Option<&RowMap> {
        match cf {
            CF_OBJECTS => Some(&self.objects),
            CF_SET_ELEMS => Some(&self.elems),
            _ => None,
        }
    }
}

/// The rows the writer committed or read most recently (`None`: deleted or
/// absent), so that a read-modify-write of a hot row does not search
/// RocksDB's memtable for the value the writer itself wrote a moment ago.
///
/// Exact, not a hint: only the writer changes object and set-element rows,
/// and it fills the cache only after a commit succeeded (and empties it when
/// one fails). A row it read from the database is the committed one, since
/// every commit before the read had been applied. Bounded by bytes with two
/// generations: rows go into the young one; when it passes half the budget
/// it becomes the old one and the previous old one is dropped. A lookup
/// tries young, then old.
pub(crate) struct RowCache {
    budget: usize,
    young: RowGen,
    old: RowGen,
}

impl RowCache {
    /// A cache of at most `budget_bytes` (0 turns it off).
    pub(crate) fn new(budget_bytes: usize) -> RowCache {
        RowCache {
            budget: budget_bytes,
            young: RowGen::default(),
            old: RowGen::default(),
        }
    }

    /// `Some(row)` if the cache knows the row's committed value (`Some(None)`:
    /// known to be absent).
    fn get(&self, cf: &str, key: &[u8]) -> Option<&Option<Vec<u8>>> {
        self.young
            .map(cf)?
            .get(key)
            .or_else(|| self.old.map(cf).and_then(|m| m.get(key)))
    }

    /// Whether the cache takes in the rows of column family `cf` that a
    /// group read. Only object rows: a set element a group reads it also
    /// writes or deletes (an add or a remove), except for the remove of an
    /// element that is not there, so recording the read would be work done
    /// twice. An object row may be read on every write and written rarely
    /// (a set's marker row).
    fn keeps_reads_of(&self, cf: &str) -> bool {
        self.budget > 0 && cf == CF_OBJECTS
    }

    /// Take in the rows of a group that has just been committed.
    pub(crate) fn absorb(&mut self, rows: Rows) {
        if self.budget == 0 {
            return;
        }
        // Rows under a cleared prefix are gone, but those the group wrote
        // after the clear, which follow.
        for (cf, prefix) in &rows.cleared {
            for generation in [&mut self.young, &mut self.old] {
                let map = match *cf {
                    CF_OBJECTS => &mut generation.objects,
                    CF_SET_ELEMS => &mut generation.elems,
                    _ => continue,
                };
                let mut freed = 0;
                map.retain(|k, v| {
                    let keep = !k.starts_with(prefix);
                    if !keep {
                        freed += row_cost(k, v);
                    }
                    keep
                });
                generation.bytes -= freed;
            }
        }
        for (cf, key, value) in rows
            .by_cf
            .into_iter()
            .flat_map(|(cf, m)| m.into_iter().map(move |(k, v)| (cf, k, v)))
        {
            let cost = row_cost(&key, &value);
            let (young, old) = match cf {
                CF_OBJECTS => (&mut self.young.objects, &mut self.old.objects),
                CF_SET_ELEMS => (&mut self.young.elems, &mut self.old.elems),
                _ => continue,
            };
            let in_young = young.remove(&key).map_or(0, |v| row_cost(&key, &v));
            self.young.bytes -= in_young;
            if cost > self.budget / 8 {
                // Too big to be worth a slot; forget any older copy.
                let in_old = old.remove(&key).map_or(0, |v| row_cost(&key, &v));
                self.old.bytes -= in_old;
                continue;
            }
            if self.young.bytes + cost > self.budget / 2 {
                self.old = std::mem::take(&mut self.young);
            }
            let young = match cf {
                CF_OBJECTS => &mut self.young.objects,
                _ => &mut self.young.elems,
            };
            young.insert(key, value);
            self.young.bytes += cost;
        }
    }

    /// Forget everything (after a failed commit, when the database's state is
    /// not known).
    pub(crate) fn clear(&mut self) {
        self.young = RowGen::default();
        self.old = RowGen::default();
    }

    /// Rows held, for tests.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.young.objects.len()
            + self.young.elems.len()
            + self.old.objects.len()
            + self.old.elems.len()
    }
}

/// Pending writes layered over the database: `staged` for the request being
/// applied (dropped if it fails), `group` for the requests already accepted into
/// this commit, then the writer's cache of rows it committed recently.
pub(crate) struct Overlay<'s> {
    store: &'s Store,
    cache: &'s RowCache,
    group: Rows,
    staged: Rows,
    /// Object rows this group read from the database, as committed: the
    /// row cache takes them in with the group's writes, so a row that is
    /// read on every write but rarely written (a set's marker row) is not
    /// searched for in the memtable every time.
    read: std::cell::RefCell<Rows>,
}

impl<'s> Overlay<'s> {
    pub(crate) fn new(store: &'s Store, cache: &'s RowCache) -> Self {
        Overlay {
            store,
            cache,
            group: Rows::default(),
            staged: Rows::default(),
            read: std::cell::RefCell::default(),
        }
    }

    /// The row as this group sees it, borrowed where the overlay or the
    /// cache holds it.
    fn get(
        &self,
        cf: &'static str,
        key: &[u8],
    ) -> Result<Option<std::borrow::Cow<'_, [u8]>>, StorageError> {
        // Each layer's rows, then its clears, hide what lies below.
        let mut known = None;
        for layer in [&self.staged, &self.group] {
            if let Some(v) = layer.get(cf, key) {
                known = Some(v);
                break;
            }
            if layer.is_cleared(cf, key) {
                return Ok(None);
            }
        }
        if let Some(v) = known.or_else(|| self.cache.get(cf, key)) {
            return Ok(v.as_deref().map(std::borrow::Cow::Borrowed));
        }
        let value = self.store.db().get_cf(self.store.cf(cf), key)?;
        if self.cache.keeps_reads_of(cf) {
            self.read
                .borrow_mut()
                .insert(cf, key.to_vec(), value.clone());
        }
        Ok(value.map(std::borrow::Cow::Owned))
    }

    fn get_decoded<T: serde::de::DeserializeOwned>(
        &self,
        cf: &'static str,
        key: &[u8],
        what: &str,
    ) -> Result<Option<T>, StorageError> {
        match self.get(cf, key)? {
            Some(raw) => decode(&raw)
                .map(Some)
                .map_err(|e| StorageError::codec(what, e)),
            None => Ok(None),
        }
    }

    fn put(&mut self, cf: &'static str, key: Vec<u8>, value: Vec<u8>) {
        self.staged.insert(cf, key, Some(value));
    }

    fn delete(&mut self, cf: &'static str, key: Vec<u8>) {
        self.staged.insert(cf, key, None);
    }

    /// Delete every row of `cf` under `prefix`: one range deletion when
    /// committed, whatever the number of rows.
    fn delete_prefix(&mut self, cf: &'static str, prefix: Vec<u8>) -> Result<(), StorageError> {
        if keys::prefix_end(&prefix).is_some() {
            self.staged.clear_prefix(cf, prefix);
        } else {
            // Only a prefix of 0xff bytes has no end; dotkv's (a length,
            // then UTF-8, which has no 0xff byte) always have one.
            for (k, _) in self.scan_prefix(cf, &prefix)? {
                self.delete(cf, k);
            }
        }
        Ok(())
    }

    /// Whether the group left a row live (`Some(true)`), deleted it or
    /// cleared it (`Some(false)`), or did not touch it (`None`).
    fn written(&self, cf: &str, key: &[u8]) -> Option<bool> {
        for layer in [&self.staged, &self.group] {
            if let Some(v) = layer.get(cf, key) {
                return Some(v.is_some());
            }
            if layer.is_cleared(cf, key) {
                return Some(false);
            }
        }
        None
    }

    /// Call `f` with every live row under `prefix` as this group sees it,
    /// in no particular order, holding none of them: committed rows are
    /// streamed from the database, then come the rows the group wrote.
    fn visit_prefix(
        &self,
        cf: &'static str,
        prefix: &[u8],
        mut f: impl FnMut(&[u8], &[u8]) -> Result<(), StorageError>,
    ) -> Result<(), StorageError> {
        if !self.cleared(cf, prefix) {
            for item in self.store.prefix_rows(cf, prefix, prefix) {
                let (k, v) = item?;
                if self.written(cf, &k).is_none() {
                    f(&k, &v)?;
                }
            }
        }
        let mut ours = std::collections::BTreeSet::new();
        for layer in [&self.staged, &self.group] {
            if let Some(rows) = layer.map(cf) {
                ours.extend(rows.keys().filter(|k| k.starts_with(prefix)));
            }
        }
        for k in ours {
            if let Some(v) = self.get(cf, k)? {
                f(k, &v)?;
            }
        }
        Ok(())
    }

    /// Whether more than `n` committed rows of `cf` start with `prefix`
    /// (reading at most `n + 1` of them).
    fn committed_more_than(
        &self,
        cf: &'static str,
        prefix: &[u8],
        n: usize,
    ) -> Result<bool, StorageError> {
        let mut seen = 0;
        for item in self.store.prefix_rows(cf, prefix, prefix).take(n + 1) {
            item?;
            seen += 1;
        }
        Ok(seen > n)
    }

    /// Whether this group cleared `key` of `cf` (or a prefix of it).
    fn cleared(&self, cf: &str, key: &[u8]) -> bool {
        self.staged.is_cleared(cf, key) || self.group.is_cleared(cf, key)
    }

    /// Every live row under `prefix`, the overlay's view merged over the
    /// database's.
    fn scan_prefix(
        &self,
        cf: &'static str,
        prefix: &[u8],
    ) -> Result<BTreeMap<Vec<u8>, Vec<u8>>, StorageError> {
        let mut rows = BTreeMap::new();
        if !self.cleared(cf, prefix) {
            for item in self.store.prefix_rows(cf, prefix, prefix) {
                let (k, v) = item?;
                rows.insert(k.to_vec(), v.to_vec());
            }
        }
        for layer in [&self.group, &self.staged] {
            rows.retain(|k, _| !layer.is_cleared(cf, k));
            for (c, k, v) in layer.iter() {
                if c == cf && k.starts_with(prefix) {
                    match v {
                        Some(v) => rows.insert(k.clone(), v.clone()),
                        None => rows.remove(k),
                    };
                }
            }
        }
        Ok(rows)
    }

    /// Whether any live row starts with `prefix`, as this group sees it.
    /// Looks at the group's rows of `cf` (a commit group is bounded) and
    /// reads at most one committed row more than the group has written
    /// under `prefix`.
    fn any_with_prefix(&self, cf: &'static str, prefix: &[u8]) -> Result<bool, StorageError> {
        let written = |k: &[u8]| self.written(cf, k);
        for layer in [&self.staged, &self.group] {
            let Some(rows) = layer.map(cf) else {
                continue;
            };
            if rows
                .keys()
                .any(|k| k.starts_with(prefix) && written(k) == Some(true))
            {
                return Ok(true);
            }
        }
        if self.cleared(cf, prefix) {
            // The group cleared every committed row under `prefix`.
            return Ok(false);
        }
        for item in self.store.prefix_rows(cf, prefix, prefix) {
            let (k, _) = item?;
            // A committed row the group has not touched (nor cleared) is
            // live; one it wrote was judged above.
            if written(&k).is_none() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    pub(crate) fn accept_staged(&mut self) {
        self.group.take_all(&mut self.staged);
    }

    pub(crate) fn discard_staged(&mut self) {
        self.staged.clear();
    }

    /// Copy the group's writes into a write batch; returns the rows it read
    /// from the database overlaid with the ones it wrote: what they hold once
    /// the batch is committed, for the row cache.
    pub(crate) fn into_batch(mut self, batch: &mut WriteBatch) -> Rows {
        debug_assert!(self.staged.is_empty());
        // Clears first: the group's rows under a cleared prefix were written
        // after it, and a later entry of a batch wins.
        for (cf, prefix) in &self.group.cleared {
            // `delete_prefix` clears only prefixes that have an end.
            if let Some(end) = keys::prefix_end(prefix) {
                batch.delete_range_cf(self.store.cf(cf), prefix, &end);
            }
        }
        for (cf, k, v) in self.group.iter() {
            let handle = self.store.cf(cf);
            match v {
                Some(v) => batch.put_cf(handle, k, v),
                None => batch.delete_cf(handle, k),
            }
        }
        let mut rows = self.read.take();
        rows.take_all(&mut self.group);
        rows
    }
}

/// A local delete of a set with more committed elements than this removes
/// them with one range deletion instead of one deletion each.
const CLEAR_BY_RANGE_ABOVE: usize = 64;

fn ctx_of(dots: impl IntoIterator<Item = Dot>) -> CausalContext {
    dots.into_iter().collect()
}

/// State one request works on; copied from the group's and kept only if the
/// request succeeds.
pub(crate) struct Applier<'a, C> {
    pub(crate) me: ReplicaId,
    pub(crate) vv: &'a mut VersionVector,
    pub(crate) hlc: &'a mut HlcClock<C>,
    /// Whether local deltas must carry, in their context, the dots a write
    /// overwrites. Only a delta that is kept for peers needs them: a write
    /// that replaces a row (a register, a flag, a set element's add) builds
    /// its new state without the old one, so with this off it reads nothing,
    /// and its delta lacks those dots and must not be shipped.
    pub(crate) delta_ctx: bool,
}

impl<C: WallClock> Applier<'_, C> {
    fn next_dot(&mut self) -> Dot {
        self.vv.increment(self.me)
    }

    /// The state of an `objects` row a local write replaces, read only for
    /// the delta's context (see [`Applier::delta_ctx`]); empty without it.
    fn overwritten<T: serde::de::DeserializeOwned + Default>(
        &self,
        ov: &Overlay<'_>,
        row: &[u8],
        what: &str,
    ) -> Result<T, StorageError> {
        if !self.delta_ctx {
            return Ok(T::default());
        }
        Ok(ov.get_decoded(CF_OBJECTS, row, what)?.unwrap_or_default())
    }

    /// Apply one local op; returns what it answers and its delta.
    pub(crate) fn local(
        &mut self,
        ov: &mut Overlay<'_>,
        op: &Op,
    ) -> Result<(OpOutput, DeltaOp), StorageError> {
        match op {
            Op::CounterAdd { key, amount } => {
                let row = keys::object(ObjectKind::Counter, key);
                let mut state: CounterState = ov
                    .get_decoded(CF_OBJECTS, &row, "counter")?
                    .unwrap_or_default();
                let delta = state
                    .add(self.me, *amount)
                    .map_err(|_| StorageError::CounterOverflow { key: key.clone() })?;
                let value = state
                    .value()
                    .map_err(|_| StorageError::CounterOverflow { key: key.clone() })?;
                ov.put(CF_OBJECTS, row, encode_state("counter", &state)?);
                Ok((
                    OpOutput::Counter(value),
                    DeltaOp::Counter {
                        key: key.clone(),
                        delta,
                    },
                ))
            }
            Op::RegisterSet { key, json } => {
                let row = keys::object(ObjectKind::Register, key);
                let old: RegisterState = self.overwritten(ov, &row, "register")?;
                let dot = self.next_dot();
                let ts = self.hlc.now();
                let mut ctx = ctx_of(old.iter().map(|(d, _)| d));
                ctx.insert(dot);
                let store = DotFun::single(
                    dot,
                    LwwValue {
                        ts,
                        value: json.clone(),
                    },
                );
                ov.put(CF_OBJECTS, row, encode_state("register", &store)?);
                Ok((
                    OpOutput::Register {
                        ts,
                        replica: dot.replica,
                    },
                    DeltaOp::Register {
                        key: key.clone(),
                        store,
                        ctx,
                    },
                ))
            }
            Op::MvRegisterSet { key, json } => {
                let row = keys::object(ObjectKind::MvRegister, key);
                let old: MvRegisterState = self.overwritten(ov, &row, "mvregister")?;
                let dot = self.next_dot();
                let mut ctx = ctx_of(old.iter().map(|(d, _)| d));
                ctx.insert(dot);
                let store = DotFun::single(dot, json.clone());
                ov.put(CF_OBJECTS, row, encode_state("mvregister", &store)?);
                Ok((
                    OpOutput::Done,
                    DeltaOp::MvRegister {
                        key: key.clone(),
                        store,
                        ctx,
                    },
                ))
            }
            Op::FlagSet { key, enable } => {
                let row = keys::object(ObjectKind::Flag, key);
                let old: FlagState = self.overwritten(ov, &row, "flag")?;
                let mut ctx = ctx_of(old.iter());
                let store = if *enable {
                    let dot = self.next_dot();
                    ctx.insert(dot);
                    let s = DotSet::single(dot);
                    ov.put(CF_OBJECTS, row, encode_state("flag", &s)?);
                    s
                } else {
                    ov.delete(CF_OBJECTS, row);
                    DotSet::new()
                };
                Ok((
                    OpOutput::Done,
                    DeltaOp::Flag {
                        key: key.clone(),
                        store,
                        ctx,
                    },
                ))
            }
            Op::SetUpdate { key, add, remove } => {
                let mut ctx = CausalContext::new();
                let mut elems = Vec::with_capacity(add.len() + remove.len());
                let mut removed = false;
                for e in remove {
                    let row = keys::set_elem(key, e);
                    if let Some(old) =
                        ov.get_decoded::<DotSet>(CF_SET_ELEMS, &row, "set element")?
                    {
                        old.iter().for_each(|d| ctx.insert(d));
                        ov.delete(CF_SET_ELEMS, row);
                        removed = true;
                        elems.push((e.clone(), DotSet::new()));
                    }
                }
                for e in add {
                    let row = keys::set_elem(key, e);
                    if self.delta_ctx {
                        if let Some(old) =
                            ov.get_decoded::<DotSet>(CF_SET_ELEMS, &row, "set element")?
                        {
                            old.iter().for_each(|d| ctx.insert(d));
                        }
                    }
                    let dot = self.next_dot();
                    ctx.insert(dot);
                    let dots = DotSet::single(dot);
                    ov.put(CF_SET_ELEMS, row, encode_state("set element", &dots)?);
                    elems.push((e.clone(), dots));
                }
                mark_set(ov, key, !add.is_empty(), removed)?;
                Ok((
                    OpOutput::Done,
                    DeltaOp::Set {
                        key: key.clone(),
                        elems,
                        ctx,
                    },
                ))
            }
            Op::Delete { kind, key } => self.delete(ov, *kind, key),
        }
    }

    fn delete(
        &mut self,
        ov: &mut Overlay<'_>,
        kind: ObjectKind,
        key: &str,
    ) -> Result<(OpOutput, DeltaOp), StorageError> {
        let row = keys::object(kind, key);
        let key = key.to_string();
        let delta = match kind {
            ObjectKind::Counter => {
                let mut state: CounterState = ov
                    .get_decoded(CF_OBJECTS, &row, "counter")?
                    .unwrap_or_default();
                let delta = state.reset();
                // The row stays: its baselines are what keeps increments this
                // node has seen from coming back with a late delta.
                ov.put(CF_OBJECTS, row, encode_state("counter", &state)?);
                return Ok((OpOutput::Counter(0), DeltaOp::Counter { key, delta }));
            }
            ObjectKind::Register => {
                let old: RegisterState = ov
                    .get_decoded(CF_OBJECTS, &row, "register")?
                    .unwrap_or_default();
                DeltaOp::Register {
                    key,
                    ctx: ctx_of(old.iter().map(|(d, _)| d)),
                    store: DotFun::new(),
                }
            }
            ObjectKind::MvRegister => {
                let old: MvRegisterState = ov
                    .get_decoded(CF_OBJECTS, &row, "mvregister")?
                    .unwrap_or_default();
                DeltaOp::MvRegister {
                    key,
                    ctx: ctx_of(old.iter().map(|(d, _)| d)),
                    store: DotFun::new(),
                }
            }
            ObjectKind::Flag => {
                let old: FlagState = ov
                    .get_decoded(CF_OBJECTS, &row, "flag")?
                    .unwrap_or_default();
                DeltaOp::Flag {
                    key,
                    ctx: ctx_of(old.iter()),
                    store: DotSet::new(),
                }
            }
            ObjectKind::Set => {
                // Every element row holds only dots this node has applied,
                // all covered by `vv`, so the observed remove takes them all
                // (peers remove only what `seen` covers). A large set goes
                // with one range deletion, as cheap for a million elements as
                // for a hundred; a small one row by row, since every range
                // deletion in the memtable is consulted by later reads.
                let prefix = keys::set_prefix(&key);
                if ov.committed_more_than(CF_SET_ELEMS, &prefix, CLEAR_BY_RANGE_ABOVE)? {
                    ov.delete_prefix(CF_SET_ELEMS, prefix)?;
                } else {
                    for (k, _) in ov.scan_prefix(CF_SET_ELEMS, &prefix)? {
                        ov.delete(CF_SET_ELEMS, k);
                    }
                }
                DeltaOp::SetClear {
                    key,
                    seen: self.vv.clone(),
                }
            }
        };
        ov.delete(CF_OBJECTS, row);
        Ok((OpOutput::Done, delta))
    }

    /// Apply a remote group's ops. The caller has checked causal readiness and
    /// raises the version vector afterwards: while the ops are joined, the
    /// group's own dots must still look unseen.
    pub(crate) fn remote(
        &mut self,
        ov: &mut Overlay<'_>,
        group: &DeltaGroup,
    ) -> Result<(), StorageError> {
        self.hlc.observe(group.ts);
        for op in &group.ops {
            self.remote_op(ov, op)?;
        }
        Ok(())
    }

    /// Anti-entropy: join one object's transferred state, given as a delta
    /// carrying the sender's context.
    pub(crate) fn merge_op(
        &mut self,
        ov: &mut Overlay<'_>,
        op: &DeltaOp,
    ) -> Result<(), StorageError> {
        self.remote_op(ov, op)
    }

    fn remote_op(&mut self, ov: &mut Overlay<'_>, op: &DeltaOp) -> Result<(), StorageError> {
        let vv = &*self.vv;
        match op {
            DeltaOp::Counter { key, delta } => {
                let row = keys::object(ObjectKind::Counter, key);
                let mut state: CounterState = ov
                    .get_decoded(CF_OBJECTS, &row, "counter")?
                    .unwrap_or_default();
                dotkv_crdt::Lattice::join(&mut state, delta);
                ov.put(CF_OBJECTS, row, encode_state("counter", &state)?);
            }
            DeltaOp::Register { key, store, ctx } => {
                let row = keys::object(ObjectKind::Register, key);
                let mut state: RegisterState = ov
                    .get_decoded(CF_OBJECTS, &row, "register")?
                    .unwrap_or_default();
                for (_, v) in store.iter() {
                    self.hlc.observe(v.ts);
                }
                state.join_with(vv, store, ctx);
                put_or_delete(ov, row, &state, "register")?;
            }
            DeltaOp::MvRegister { key, store, ctx } => {
                let row = keys::object(ObjectKind::MvRegister, key);
                let mut state: MvRegisterState = ov
                    .get_decoded(CF_OBJECTS, &row, "mvregister")?
                    .unwrap_or_default();
                state.join_with(vv, store, ctx);
                put_or_delete(ov, row, &state, "mvregister")?;
            }
            DeltaOp::Flag { key, store, ctx } => {
                let row = keys::object(ObjectKind::Flag, key);
                let mut state: FlagState = ov
                    .get_decoded(CF_OBJECTS, &row, "flag")?
                    .unwrap_or_default();
                state.join_with(vv, store, ctx);
                put_or_delete(ov, row, &state, "flag")?;
            }
            DeltaOp::Set { key, elems, ctx } => {
                let (mut present, mut removed) = (false, false);
                for (e, dots) in elems {
                    let row = keys::set_elem(key, e);
                    let old = ov.get_decoded::<DotSet>(CF_SET_ELEMS, &row, "set element")?;
                    let existed = old.is_some();
                    let mut state = old.unwrap_or_default();
                    state.join_with(vv, dots, ctx);
                    present |= !state.is_bottom();
                    removed |= existed && state.is_bottom();
                    put_or_delete_in(ov, CF_SET_ELEMS, row, &state, "set element")?;
                }
                mark_set(ov, key, present, removed)?;
            }
            DeltaOp::SetClear { key, seen } => {
                let mut present = false;
                let prefix = keys::set_prefix(key);
                if ov.committed_more_than(CF_SET_ELEMS, &prefix, CLEAR_BY_RANGE_ABOVE)? {
                    // A large set: clear it with one range deletion and put
                    // back only the elements with dots the delete had not
                    // seen (added concurrently with it), few as a rule.
                    let mut kept = Vec::new();
                    ov.visit_prefix(CF_SET_ELEMS, &prefix, |k, raw| {
                        let mut dots: DotSet =
                            decode(raw).map_err(|e| StorageError::codec("set element", e))?;
                        dots.remove_covered(seen);
                        if !dots.is_bottom() {
                            kept.push((k.to_vec(), dots));
                        }
                        Ok(())
                    })?;
                    ov.delete_prefix(CF_SET_ELEMS, prefix)?;
                    present = !kept.is_empty();
                    for (k, dots) in kept {
                        ov.put(CF_SET_ELEMS, k, encode_state("set element", &dots)?);
                    }
                } else {
                    for (k, raw) in ov.scan_prefix(CF_SET_ELEMS, &prefix)? {
                        let mut dots: DotSet =
                            decode(&raw).map_err(|e| StorageError::codec("set element", e))?;
                        dots.remove_covered(seen);
                        present |= !dots.is_bottom();
                        put_or_delete_in(ov, CF_SET_ELEMS, k, &dots, "set element")?;
                    }
                }
                // Every element was scanned: none left means an empty set.
                let row = keys::object(ObjectKind::Set, key);
                if present {
                    mark_set(ov, key, true, false)?;
                } else {
                    ov.delete(CF_OBJECTS, row);
                }
            }
        }
        Ok(())
    }
}

/// Keep set `key`'s row in `objects` true after an update of its elements.
///
/// That row marks a set with at least one element; it is what listing sets
/// finds. It holds no count, so adding an element does not rewrite it: a
/// count would cost every add a second memtable insert (a quarter of the
/// storage work of a set add). `present`: the update left at least one
/// element in place, so the set is not empty. `removed`: it took at least
/// one element out, so the set may now be empty, which one seek tells.
fn mark_set(
    ov: &mut Overlay<'_>,
    key: &str,
    present: bool,
    removed: bool,
) -> Result<(), StorageError> {
    let row = keys::object(ObjectKind::Set, key);
    if present {
        if ov.get(CF_OBJECTS, &row)?.is_none() {
            ov.put(CF_OBJECTS, row, encode_state("set", &SetMark)?);
        }
    } else if removed && !ov.any_with_prefix(CF_SET_ELEMS, &keys::set_prefix(key))? {
        ov.delete(CF_OBJECTS, row);
    }
    Ok(())
}

/// The value of a set's row in `objects`. Rows written before it held the
/// element count; only their presence is read.
#[derive(serde::Serialize)]
struct SetMark;

fn put_or_delete<S: DotStore + serde::Serialize>(
    ov: &mut Overlay<'_>,
    row: Vec<u8>,
    state: &S,
    what: &'static str,
) -> Result<(), StorageError> {
    put_or_delete_in(ov, CF_OBJECTS, row, state, what)
}

fn put_or_delete_in<S: DotStore + serde::Serialize>(
    ov: &mut Overlay<'_>,
    cf: &'static str,
    row: Vec<u8>,
    state: &S,
    what: &'static str,
) -> Result<(), StorageError> {
    if state.is_bottom() {
        ov.delete(cf, row);
    } else {
        ov.put(cf, row, encode_state(what, state)?);
    }
    Ok(())
}

/// Log a committed group in the delta log, through the overlay.
pub(crate) fn log_group(ov: &mut Overlay<'_>, group: &DeltaGroup) -> Result<(), StorageError> {
    let key = keys::delta(group.origin.0, group.first).to_vec();
    ov.put(CF_DELTAS, key, encode_state("delta group", group)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(n: usize, value_len: usize, tag: u8) -> Rows {
        let mut rows = Rows::default();
        for i in 0..n {
            rows.insert(
                CF_OBJECTS,
                format!("k{i}").into_bytes(),
                Some(vec![tag; value_len]),
            );
        }
        rows
    }

    #[test]
    fn the_row_cache_stays_within_its_budget() {
        let budget = 64 << 10;
        let mut cache = RowCache::new(budget);
        for round in 0..50u8 {
            cache.absorb(rows(1000, 100, round));
            let held = cache.young.bytes + cache.old.bytes;
            assert!(held <= budget, "{held} bytes held, budget {budget}");
        }
        assert!(cache.len() > 0);
        // A row just absorbed is found, with its last value.
        let mut one = Rows::default();
        one.insert(CF_OBJECTS, b"k7".to_vec(), Some(vec![7; 10]));
        cache.absorb(one);
        assert_eq!(cache.get(CF_OBJECTS, b"k7"), Some(&Some(vec![7; 10])));
        // Rows of other column families are never kept.
        let mut other = Rows::default();
        other.insert(CF_DELTAS, b"d".to_vec(), Some(vec![1]));
        cache.absorb(other);
        assert_eq!(cache.get(CF_DELTAS, b"d"), None);
    }

    /// A group's reads of object rows reach the row cache with its writes,
    /// the writes over the reads, so the next group reads neither from
    /// RocksDB again; set elements are cached only as written.
    #[test]
    fn rows_a_group_reads_are_cached_under_what_it_writes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &crate::db::StoreOptions::default()).unwrap();
        store
            .db()
            .put_cf(store.cf(CF_OBJECTS), b"present", [9])
            .unwrap();
        let mut cache = RowCache::new(1 << 20);
        let mut batch = WriteBatch::default();
        let rows = {
            let mut ov = Overlay::new(&store, &cache);
            assert_eq!(
                ov.get(CF_OBJECTS, b"present").unwrap().as_deref(),
                Some(&[9][..])
            );
            assert!(ov.get(CF_OBJECTS, b"absent").unwrap().is_none());
            // Read absent, then written by the group.
            assert!(ov.get(CF_SET_ELEMS, b"written").unwrap().is_none());
            ov.put(CF_SET_ELEMS, b"written".to_vec(), vec![1]);
            ov.accept_staged();
            // A set element read but not written: not kept.
            assert!(ov.get(CF_SET_ELEMS, b"unwritten").unwrap().is_none());
            // Not a cached column family: not kept.
            assert!(ov.get(CF_DELTAS, b"delta").unwrap().is_none());
            ov.into_batch(&mut batch)
        };
        store.db().write(batch).unwrap();
        cache.absorb(rows);
        assert_eq!(cache.get(CF_OBJECTS, b"present"), Some(&Some(vec![9])));
        assert_eq!(cache.get(CF_OBJECTS, b"absent"), Some(&None));
        assert_eq!(cache.get(CF_SET_ELEMS, b"written"), Some(&Some(vec![1])));
        assert_eq!(cache.get(CF_DELTAS, b"delta"), None);
        assert_eq!(cache.get(CF_SET_ELEMS, b"unwritten"), None);
        let ov = Overlay::new(&store, &cache);
        assert!(ov.get(CF_OBJECTS, b"absent").unwrap().is_none());
        assert!(ov.get(CF_SET_ELEMS, b"written").unwrap().is_some());
        assert!(ov.read.borrow().is_empty(), "the second group read RocksDB");
        // Without a budget nothing is collected.
        let off = RowCache::new(0);
        let ov = Overlay::new(&store, &off);
        assert!(ov.get(CF_OBJECTS, b"present").unwrap().is_some());
        assert!(ov.read.borrow().is_empty());
    }

    #[test]
    fn a_big_row_replaces_no_cached_copy() {
        let mut cache = RowCache::new(8 << 10);
        cache.absorb(rows(1, 10, 1));
        assert!(cache.get(CF_OBJECTS, b"k0").is_some());
        // Bigger than an eighth of the budget: not cached, and the old
        // copy must not answer for it.
        cache.absorb(rows(1, 2 << 10, 2));
        assert_eq!(cache.get(CF_OBJECTS, b"k0"), None);
        cache.absorb(rows(1, 10, 3));
        cache.clear();
        assert_eq!(cache.get(CF_OBJECTS, b"k0"), None);
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn a_cache_without_budget_keeps_nothing() {
        let mut cache = RowCache::new(0);
        cache.absorb(rows(10, 10, 1));
        assert_eq!(cache.len(), 0);
    }

    /// A cleared prefix hides every row under it that came before the clear
    /// (committed, cached, or written earlier in the group) and none that
    /// came after; it commits as one range deletion and the row cache
    /// forgets what it held under it.
    #[test]
    fn a_cleared_prefix_hides_what_came_before_it_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &crate::db::StoreOptions::default()).unwrap();
        let elems = store.cf(CF_SET_ELEMS);
        for k in [&b"p1a"[..], b"p1b", b"p1c", b"p2a"] {
            store.db().put_cf(elems, k, [1]).unwrap();
        }
        let mut cache = RowCache::new(1 << 20);
        let mut known = Rows::default();
        known.insert(CF_SET_ELEMS, b"p1c".to_vec(), Some(vec![1]));
        cache.absorb(known);
        let live = |ov: &Overlay<'_>| -> Vec<Vec<u8>> {
            ov.scan_prefix(CF_SET_ELEMS, b"p1")
                .unwrap()
                .into_keys()
                .collect()
        };
        let mut batch = WriteBatch::default();
        let rows = {
            let mut ov = Overlay::new(&store, &cache);
            ov.put(CF_SET_ELEMS, b"p1x".to_vec(), vec![2]);
            ov.accept_staged();
            // A clear that is then discarded changes nothing.
            ov.delete_prefix(CF_SET_ELEMS, b"p1".to_vec()).unwrap();
            assert!(ov.get(CF_SET_ELEMS, b"p1x").unwrap().is_none());
            ov.discard_staged();
            assert!(ov.get(CF_SET_ELEMS, b"p1x").unwrap().is_some());
            assert_eq!(live(&ov), [&b"p1a"[..], b"p1b", b"p1c", b"p1x"]);
            // Staged over the group's row, the cache's and the database's.
            ov.delete_prefix(CF_SET_ELEMS, b"p1".to_vec()).unwrap();
            for k in [&b"p1a"[..], b"p1c", b"p1x"] {
                assert!(ov.get(CF_SET_ELEMS, k).unwrap().is_none(), "{k:?}");
            }
            assert!(ov.get(CF_SET_ELEMS, b"p2a").unwrap().is_some());
            assert!(!ov.any_with_prefix(CF_SET_ELEMS, b"p1").unwrap());
            assert!(live(&ov).is_empty());
            ov.put(CF_SET_ELEMS, b"p1y".to_vec(), vec![3]);
            assert!(ov.any_with_prefix(CF_SET_ELEMS, b"p1").unwrap());
            assert_eq!(live(&ov), [b"p1y"]);
            ov.accept_staged();
            // The same through the group's layer.
            assert!(ov.get(CF_SET_ELEMS, b"p1b").unwrap().is_none());
            assert!(ov.get(CF_SET_ELEMS, b"p1x").unwrap().is_none());
            assert_eq!(live(&ov), [b"p1y"]);
            assert_eq!(
                ov.scan_prefix(CF_SET_ELEMS, b"p")
                    .unwrap()
                    .into_keys()
                    .collect::<Vec<_>>(),
                [&b"p1y"[..], b"p2a"]
            );
            ov.into_batch(&mut batch)
        };
        store.db().write(batch).unwrap();
        cache.absorb(rows);
        assert_eq!(
            cache.get(CF_SET_ELEMS, b"p1c"),
            None,
            "the cache kept a cleared row"
        );
        assert_eq!(cache.get(CF_SET_ELEMS, b"p1y"), Some(&Some(vec![3])));
        let committed: Vec<Vec<u8>> = store
            .prefix_rows(CF_SET_ELEMS, b"p", b"p")
            .map(|r| r.unwrap().0.to_vec())
            .collect();
        assert_eq!(committed, [&b"p1y"[..], b"p2a"]);
        let ov = Overlay::new(&store, &cache);
        assert!(ov.get(CF_SET_ELEMS, b"p1a").unwrap().is_none());
        assert!(ov.committed_more_than(CF_SET_ELEMS, b"p", 1).unwrap());
        assert!(!ov.committed_more_than(CF_SET_ELEMS, b"p", 2).unwrap());
    }
}
