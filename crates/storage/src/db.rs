//! Opening the database and everything that reads it. Writes go through
//! [`crate::Writer`].

use crate::keys;
use crate::model::{CounterState, FlagState, MvRegisterState, ObjectKind, RegisterState};
use crate::StorageError;
use dotkv_crdt::{decode, encode, DotSet, Hlc, ReplicaId, VersionVector};
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, DBCompressionType, Direction,
    IteratorMode, Options, ReadOptions, DB,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A row as RocksDB's iterators return it: key and value.
pub(crate) type RawRow = (Box<[u8]>, Box<[u8]>);

pub(crate) const CF_OBJECTS: &str = "objects";
pub(crate) const CF_SET_ELEMS: &str = "set_elems";
pub(crate) const CF_DELTAS: &str = "deltas";
pub(crate) const CF_META: &str = "meta";

/// Anti-entropy: a row of the replicated state, (space byte + key, value).
pub type AeRow = (Vec<u8>, Vec<u8>);

/// Anti-entropy key spaces (see [`Store::ae_rows`]).
pub const AE_OBJECTS: u8 = 0;
pub const AE_SET_ELEMS: u8 = 1;

/// Anti-entropy: the delta that joins a transferred row into a replica. With
/// `value` `None` the sender has no such row: whatever the receiver holds
/// there that the sender's context covers was removed. `ctx` is the
/// sender's version vector, read before its rows.
pub fn ae_row_delta(
    key: &[u8],
    value: Option<&[u8]>,
    ctx: &dotkv_crdt::CausalContext,
) -> Result<Option<crate::DeltaOp>, StorageError> {
    use crate::DeltaOp;
    let bad = || StorageError::Corrupt(format!("anti-entropy row key {key:?}"));
    let (&space, rest) = key.split_first().ok_or_else(bad)?;
    let ctx = ctx.clone();
    match space {
        AE_OBJECTS => {
            let (kind, k) = keys::parse_object(rest).ok_or_else(bad)?;
            let key = k.to_string();
            let raw = value;
            Ok(match kind {
                ObjectKind::Counter => match raw {
                    Some(v) => Some(DeltaOp::Counter {
                        key,
                        delta: decode(v).map_err(|e| StorageError::codec("counter", e))?,
                    }),
                    // A counter is a join of per-replica maxima: no row adds
                    // nothing.
                    None => None,
                },
                ObjectKind::Register => Some(DeltaOp::Register {
                    key,
                    store: match raw {
                        Some(v) => decode(v).map_err(|e| StorageError::codec("register", e))?,
                        None => Default::default(),
                    },
                    ctx,
                }),
                ObjectKind::MvRegister => Some(DeltaOp::MvRegister {
                    key,
                    store: match raw {
                        Some(v) => decode(v).map_err(|e| StorageError::codec("mvregister", e))?,
                        None => Default::default(),
                    },
                    ctx,
                }),
                ObjectKind::Flag => Some(DeltaOp::Flag {
                    key,
                    store: match raw {
                        Some(v) => decode(v).map_err(|e| StorageError::codec("flag", e))?,
                        None => Default::default(),
                    },
                    ctx,
                }),
                ObjectKind::Set => None,
            })
        }
        AE_SET_ELEMS => {
            let (klen, rest2) = rest.split_at_checked(2).ok_or_else(bad)?;
            let klen = u16::from_be_bytes([klen[0], klen[1]]) as usize;
            let (k, elem) = rest2.split_at_checked(klen).ok_or_else(bad)?;
            let key = std::str::from_utf8(k).map_err(|_| bad())?.to_string();
            let dots: DotSet = match value {
                Some(v) => decode(v).map_err(|e| StorageError::codec("set element", e))?,
                None => DotSet::default(),
            };
            Ok(Some(crate::DeltaOp::Set {
                key,
                elems: vec![(elem.to_vec(), dots)],
                ctx,
            }))
        }
        _ => Err(bad()),
    }
}

/// Tuning knobs for the database.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Shared block cache, in bytes.
    pub block_cache_bytes: usize,
    /// Memtable size per column family, in bytes. Small by RocksDB's
    /// standards (its default is 64 MiB): every row written is a skiplist
    /// insert, and every read a skiplist search, whose cache misses grow
    /// with the memtable. Hot rows are rewritten many times, and a flush
    /// keeps only their last version, so flushing more often costs little.
    /// Rows that all outlive their flush (large values under new keys) pay
    /// for it in flushes and compactions instead (docs/PERFORMANCE.md,
    /// seventh session).
    pub write_buffer_bytes: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            block_cache_bytes: 128 << 20,
            write_buffer_bytes: 8 << 20,
        }
    }
}

/// Figures for `/metrics` and `/v1/status`.
#[derive(Clone, Debug, Default)]
pub struct StoreStats {
    pub live_data_bytes: u64,
    pub sst_files_bytes: u64,
    pub memtable_bytes: u64,
    pub estimated_keys: u64,
}

/// The node's RocksDB database. Cheap to clone; reads may run on any thread.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    db: DB,
    path: PathBuf,
    replica_uuid: uuid::Uuid,
    replica: ReplicaId,
}

/// The replica id is the UUID's first 8 bytes, which are random in a v4 UUID.
fn replica_of(uuid: &uuid::Uuid) -> ReplicaId {
    let b = uuid.as_bytes();
    let id = u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
    ReplicaId(id.max(1))
}

impl Store {
    /// Open (or create) the database in `path`. A new database gets a fresh
    /// replica identity; an existing one keeps its own.
    pub fn open(path: impl AsRef<Path>, opts: &StoreOptions) -> Result<Store, StorageError> {
        let path = path.as_ref().to_path_buf();
        let data_dir = |message: String| StorageError::DataDir {
            path: path.clone(),
            message,
        };
        if path.exists() && !path.is_dir() {
            return Err(data_dir("it exists and is not a directory".into()));
        }
        std::fs::create_dir_all(&path).map_err(|e| data_dir(format!("cannot create it: {e}")))?;
        let cache = Cache::new_lru_cache(opts.block_cache_bytes);
        let cf_opts = |point_lookups: bool| {
            let mut o = Options::default();
            let mut b = BlockBasedOptions::default();
            b.set_block_cache(&cache);
            b.set_bloom_filter(10.0, false);
            b.set_cache_index_and_filter_blocks(true);
            o.set_block_based_table_factory(&b);
            o.set_compression_type(DBCompressionType::Lz4);
            o.set_bottommost_compression_type(DBCompressionType::Zstd);
            o.set_write_buffer_size(opts.write_buffer_bytes);
            if point_lookups {
                o.optimize_for_point_lookup(opts.block_cache_bytes as u64 >> 20);
            }
            o
        };
        // Rows are read one key at a time (the writer's read of a row's
        // current value, point reads of the API). A bloom filter over the
        // memtable's whole keys lets a read of a key the memtable does not
        // hold (a new set element, say) skip the skiplist search.
        let keyed_opts = || {
            let mut o = cf_opts(false);
            o.set_memtable_prefix_bloom_ratio(0.05);
            o.set_memtable_whole_key_filtering(true);
            o
        };
        let mut db_opts = Options::default();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        db_opts.increase_parallelism(2);
        db_opts.set_keep_log_file_num(4);
        db_opts.set_max_total_wal_size(256 << 20);
        // One writer commits at a time (see `crate::writer`), so RocksDB's
        // concurrent memtable insert, with its atomic splices, buys nothing
        // and costs a little on every row.
        db_opts.set_allow_concurrent_memtable_write(false);
        let cfs = vec![
            ColumnFamilyDescriptor::new(CF_OBJECTS, keyed_opts()),
            ColumnFamilyDescriptor::new(CF_SET_ELEMS, keyed_opts()),
            ColumnFamilyDescriptor::new(CF_DELTAS, cf_opts(false)),
            ColumnFamilyDescriptor::new(CF_META, cf_opts(true)),
        ];
        let db = DB::open_cf_descriptors(&db_opts, &path, cfs).map_err(|e| {
            // RocksDB locks `LOCK` in the directory for as long as the
            // database is open, in this process or another.
            let text = e.to_string();
            if text.contains("lock file") || text.contains("lock hold") {
                data_dir(format!(
                    "in use: another process (a dotkv node?) has it open ({text})"
                ))
            } else {
                StorageError::Rocks(e)
            }
        })?;
        let meta = db
            .cf_handle(CF_META)
            .ok_or_else(|| StorageError::Corrupt("missing meta column family".into()))?;
        let replica_uuid = match db.get_cf(meta, keys::META_REPLICA)? {
            Some(raw) => uuid::Uuid::from_slice(&raw)
                .map_err(|e| StorageError::Corrupt(format!("replica id: {e}")))?,
            None => {
                let id = uuid::Uuid::new_v4();
                let mut wo = rocksdb::WriteOptions::default();
                wo.set_sync(true);
                db.put_cf_opt(meta, keys::META_REPLICA, id.as_bytes(), &wo)?;
                tracing::info!(replica = %id, path = %path.display(), "created a new replica");
                id
            }
        };
        let replica = replica_of(&replica_uuid);
        Ok(Store {
            inner: Arc::new(Inner {
                db,
                path,
                replica_uuid,
                replica,
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    pub fn replica_uuid(&self) -> uuid::Uuid {
        self.inner.replica_uuid
    }

    pub fn replica(&self) -> ReplicaId {
        self.inner.replica
    }

    pub(crate) fn db(&self) -> &DB {
        &self.inner.db
    }

    pub(crate) fn cf(&self, name: &str) -> &ColumnFamily {
        // The column families are created at open; a missing one is a bug.
        self.inner
            .db
            .cf_handle(name)
            .unwrap_or_else(|| panic!("column family {name} exists after open"))
    }

    fn get_decoded<T: serde::de::DeserializeOwned>(
        &self,
        cf: &str,
        key: &[u8],
        what: impl FnOnce() -> String,
    ) -> Result<Option<T>, StorageError> {
        match self.db().get_pinned_cf(self.cf(cf), key)? {
            Some(raw) => decode(&raw)
                .map(Some)
                .map_err(|e| StorageError::codec(what(), e)),
            None => Ok(None),
        }
    }

    /// The version vector as last committed.
    pub fn load_vv(&self) -> Result<VersionVector, StorageError> {
        Ok(self
            .get_decoded(CF_META, keys::META_VV, || "version vector".into())?
            .unwrap_or_default())
    }

    /// The HLC high-water mark as last committed.
    pub fn load_hlc(&self) -> Result<Hlc, StorageError> {
        Ok(self
            .get_decoded(CF_META, keys::META_HLC, || "hlc".into())?
            .unwrap_or_default())
    }

    pub fn counter(&self, key: &str) -> Result<Option<CounterState>, StorageError> {
        self.get_decoded(CF_OBJECTS, &keys::object(ObjectKind::Counter, key), || {
            format!("counter {key:?}")
        })
    }

    pub fn register(&self, key: &str) -> Result<Option<RegisterState>, StorageError> {
        self.get_decoded(CF_OBJECTS, &keys::object(ObjectKind::Register, key), || {
            format!("register {key:?}")
        })
    }

    pub fn mvregister(&self, key: &str) -> Result<Option<MvRegisterState>, StorageError> {
        self.get_decoded(
            CF_OBJECTS,
            &keys::object(ObjectKind::MvRegister, key),
            || format!("mvregister {key:?}"),
        )
    }

    pub fn flag(&self, key: &str) -> Result<Option<FlagState>, StorageError> {
        self.get_decoded(CF_OBJECTS, &keys::object(ObjectKind::Flag, key), || {
            format!("flag {key:?}")
        })
    }

    /// Number of elements of a set (0 if absent). Counts them, so it takes
    /// time in proportion to the set's size: no count is stored, since
    /// keeping one would cost every add a second row write.
    pub fn set_len(&self, key: &str) -> Result<u64, StorageError> {
        let prefix = keys::set_prefix(key);
        let mut n = 0;
        for item in self.prefix_rows(CF_SET_ELEMS, &prefix, &prefix) {
            item?;
            n += 1;
        }
        Ok(n)
    }

    /// The rows of `cf` whose keys start with `prefix`, in key order, from
    /// `from` on.
    pub(crate) fn prefix_rows<'a>(
        &'a self,
        cf: &str,
        prefix: &'a [u8],
        from: &[u8],
    ) -> impl Iterator<Item = Result<RawRow, StorageError>> + 'a {
        let mut ro = ReadOptions::default();
        if let Some(end) = keys::prefix_end(prefix) {
            ro.set_iterate_upper_bound(end);
        }
        self.db()
            .iterator_cf_opt(
                self.cf(cf),
                ro,
                IteratorMode::From(from, Direction::Forward),
            )
            .map(|item| item.map_err(StorageError::from))
            .take_while(move |item| item.as_ref().map_or(true, |(k, _)| k.starts_with(prefix)))
    }

    /// The dots of one set element, if present.
    pub fn set_elem(&self, key: &str, elem: &[u8]) -> Result<Option<DotSet>, StorageError> {
        self.get_decoded(CF_SET_ELEMS, &keys::set_elem(key, elem), || {
            format!("set element of {key:?}")
        })
    }

    /// Up to `limit` elements of a set, in element-byte order, after `after`
    /// (exclusive). Returns the elements and whether more follow.
    pub fn set_page(
        &self,
        key: &str,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<(Vec<Vec<u8>>, bool), StorageError> {
        let prefix = keys::set_prefix(key);
        let start = match after {
            Some(a) => {
                let mut s = keys::set_elem(key, a);
                s.push(0); // the least key after `after`
                s
            }
            None => prefix.clone(),
        };
        let mut out = Vec::with_capacity(limit.min(1024));
        for item in self.prefix_rows(CF_SET_ELEMS, &prefix, &start) {
            let (k, _) = item?;
            if out.len() == limit {
                return Ok((out, true));
            }
            out.push(k[prefix.len()..].to_vec());
        }
        Ok((out, false))
    }

    /// Up to `limit` keys of one kind that start with `prefix`, after `after`
    /// (exclusive), in byte order. Returns the keys and whether more follow.
    pub fn list_keys(
        &self,
        kind: ObjectKind,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<String>, bool), StorageError> {
        let full_prefix = keys::object(kind, prefix);
        let start = match after {
            Some(a) if keys::object(kind, a) >= full_prefix => {
                let mut s = keys::object(kind, a);
                s.push(0);
                s
            }
            _ => full_prefix.clone(),
        };
        let mut ro = ReadOptions::default();
        if let Some(end) = keys::prefix_end(&full_prefix) {
            ro.set_iterate_upper_bound(end);
        }
        let iter = self.db().iterator_cf_opt(
            self.cf(CF_OBJECTS),
            ro,
            IteratorMode::From(&start, Direction::Forward),
        );
        let mut out = Vec::with_capacity(limit.min(1024));
        for item in iter {
            let (k, v) = item?;
            if !k.starts_with(&full_prefix) {
                break;
            }
            if out.len() == limit {
                return Ok((out, true));
            }
            if kind == ObjectKind::Counter {
                // A deleted counter keeps its row (see `apply`), but is gone.
                let state: CounterState =
                    decode(&v).map_err(|e| StorageError::codec("counter", e))?;
                if state.is_reset() {
                    continue;
                }
            }
            match keys::parse_object(&k) {
                Some((_, key)) => out.push(key.to_string()),
                None => return Err(StorageError::Corrupt(format!("object key {k:?}"))),
            }
        }
        Ok((out, false))
    }

    /// Delta groups of `origin` from sequence `from` on, at most `limit`.
    pub fn delta_groups(
        &self,
        origin: ReplicaId,
        from: u64,
        limit: usize,
    ) -> Result<Vec<crate::DeltaGroup>, StorageError> {
        let start = keys::delta(origin.0, from);
        let end = keys::delta(origin.0, u64::MAX);
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(end.to_vec());
        let iter = self.db().iterator_cf_opt(
            self.cf(CF_DELTAS),
            ro,
            IteratorMode::From(&start, Direction::Forward),
        );
        let mut out = Vec::new();
        for item in iter.take(limit) {
            let (_, v) = item?;
            out.push(decode(&v).map_err(|e| StorageError::codec("delta group", e))?);
        }
        Ok(out)
    }

    /// The first sequence number of the oldest group of `origin` still in the
    /// delta log, if any.
    pub fn log_first(&self, origin: ReplicaId) -> Result<Option<u64>, StorageError> {
        let start = keys::delta(origin.0, 0);
        let end = keys::delta(origin.0, u64::MAX);
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(end.to_vec());
        let mut iter = self.db().iterator_cf_opt(
            self.cf(CF_DELTAS),
            ro,
            IteratorMode::From(&start, Direction::Forward),
        );
        match iter.next() {
            Some(item) => {
                let (k, _) = item?;
                let first = k
                    .get(8..16)
                    .and_then(|b| <[u8; 8]>::try_from(b).ok())
                    .map(u64::from_be_bytes)
                    .ok_or_else(|| StorageError::Corrupt(format!("delta-log key {k:?}")))?;
                Ok(Some(first))
            }
            None => Ok(None),
        }
    }

    /// The group of `origin` that starts at `first`, if it is in the log.
    pub fn delta_group(
        &self,
        origin: ReplicaId,
        first: u64,
    ) -> Result<Option<crate::DeltaGroup>, StorageError> {
        match self
            .db()
            .get_pinned_cf(self.cf(CF_DELTAS), keys::delta(origin.0, first))?
        {
            Some(v) => Ok(Some(
                decode(&v).map_err(|e| StorageError::codec("delta group", e))?,
            )),
            None => Ok(None),
        }
    }

    /// Bytes the delta log takes, estimated by RocksDB (memtables included).
    pub fn log_bytes(&self) -> u64 {
        let cf = self.cf(CF_DELTAS);
        let prop = |name: &str| {
            self.db()
                .property_int_value_cf(cf, name)
                .ok()
                .flatten()
                .unwrap_or(0)
        };
        prop("rocksdb.estimate-live-data-size") + prop("rocksdb.cur-size-all-mem-tables")
    }

    /// Anti-entropy: the replicated state's rows in one ordered key space,
    /// from `start` (inclusive) to `end` (exclusive; `None`: to the end), at
    /// most `limit`. A row key is a space byte ([`AE_OBJECTS`] or
    /// [`AE_SET_ELEMS`]) and the row's key in its column family. A set's row in
    /// `objects` is derived from its elements, so it is left out.
    pub fn ae_rows(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<AeRow>, StorageError> {
        let mut out = Vec::new();
        for (space, cf) in [(AE_OBJECTS, CF_OBJECTS), (AE_SET_ELEMS, CF_SET_ELEMS)] {
            let lo: Vec<u8> = match start.split_first() {
                Some((&s, rest)) if s == space => rest.to_vec(),
                Some((&s, _)) if s > space => continue,
                _ => Vec::new(),
            };
            let hi: Option<Vec<u8>> = match end.and_then(|e| e.split_first()) {
                Some((&s, rest)) if s == space => Some(rest.to_vec()),
                Some((&s, _)) if s < space => break,
                _ => None,
            };
            if let Some(h) = &hi {
                if h.as_slice() <= lo.as_slice() {
                    continue;
                }
            }
            let mut ro = ReadOptions::default();
            if let Some(h) = hi {
                ro.set_iterate_upper_bound(h);
            }
            let iter = self.db().iterator_cf_opt(
                self.cf(cf),
                ro,
                IteratorMode::From(&lo, Direction::Forward),
            );
            for item in iter {
                if out.len() >= limit {
                    return Ok(out);
                }
                let (k, v) = item?;
                if space == AE_OBJECTS && k.first() == Some(&ObjectKind::Set.tag()) {
                    continue;
                }
                let mut key = Vec::with_capacity(1 + k.len());
                key.push(space);
                key.extend_from_slice(&k);
                out.push((key, v.to_vec()));
            }
        }
        Ok(out)
    }

    pub fn stats(&self) -> StoreStats {
        let prop = |name: &str| -> u64 {
            [CF_OBJECTS, CF_SET_ELEMS, CF_DELTAS, CF_META]
                .iter()
                .filter_map(|cf| {
                    self.db()
                        .property_int_value_cf(self.cf(cf), name)
                        .ok()
                        .flatten()
                })
                .sum()
        };
        StoreStats {
            live_data_bytes: prop("rocksdb.estimate-live-data-size"),
            sst_files_bytes: prop("rocksdb.total-sst-files-size"),
            memtable_bytes: prop("rocksdb.cur-size-all-mem-tables"),
            estimated_keys: prop("rocksdb.estimate-num-keys"),
        }
    }

    /// Whether RocksDB is stopping or slowing writes down, because flushes
    /// or compactions are behind.
    pub fn write_stalled(&self) -> bool {
        let prop = |name: &str| self.db().property_int_value(name).ok().flatten();
        prop("rocksdb.is-write-stopped").is_some_and(|v| v > 0)
            || prop("rocksdb.actual-delayed-write-rate").is_some_and(|v| v > 0)
    }

    /// RocksDB's latest sequence number: grows with every commit.
    pub fn latest_seq(&self) -> u64 {
        self.db().latest_sequence_number()
    }

    /// Make everything written so far durable (WAL synced).
    pub fn flush(&self) -> Result<(), StorageError> {
        self.db().flush_wal(true)?;
        Ok(())
    }
}

pub(crate) fn encode_state<T: serde::Serialize>(
    what: &'static str,
    value: &T,
) -> Result<Vec<u8>, StorageError> {
    encode(value).map_err(|source| StorageError::Encode { what, source })
}
