//! The single writer: every mutation of the database goes through one thread,
//! which takes whatever requests are queued (up to a bound), applies them one
//! after another through an overlay, and commits them in one `WriteBatch`, with
//! one WAL write and, under `durability = "fsync"`, one fsync for all of them.
//! A request that fails (say, a counter overflow) is left out of the batch
//! without affecting the others.

use crate::apply::{log_group, Applier, Overlay, RowCache, Rows};
use crate::db::{encode_state, Store, CF_DELTAS, CF_META};
use crate::keys;
use crate::model::{DeltaGroup, DeltaOp, Op, OpOutput};
use crate::StorageError;
use dotkv_crdt::{Hlc, HlcClock, ReplicaId, SystemClock, VersionVector, WallClock};
use rocksdb::{WriteBatch, WriteOptions};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;
use tokio::sync::{mpsc, oneshot, watch};

/// When an acknowledged write is durable.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// The WAL is written before the acknowledgement: survives a process crash
    /// (`kill -9`), not a power loss.
    #[default]
    Wal,
    /// The WAL is fsynced before the acknowledgement (group commit): survives a
    /// power loss.
    Fsync,
}

#[derive(Clone, Debug)]
pub struct WriterOptions {
    pub durability: Durability,
    /// Requests waiting for the writer; senders wait when it is full.
    pub queue_depth: usize,
    /// Most requests committed together.
    pub max_group: usize,
    /// Keep local delta groups in the delta log. A node with no peers has no
    /// one to ship them to (a peer added later catches up by anti-entropy),
    /// so it skips the log write.
    pub log_local_groups: bool,
    /// Bytes of recently committed rows the writer keeps in memory, so a
    /// write to a hot key reads its current value without asking RocksDB
    /// (0: off).
    pub row_cache_bytes: usize,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            durability: Durability::Wal,
            queue_depth: 4096,
            max_group: 512,
            log_local_groups: true,
            row_cache_bytes: 32 << 20,
        }
    }
}

/// The answer to a committed local request.
#[derive(Clone, Debug)]
pub struct WriteOutcome {
    pub outputs: Vec<OpOutput>,
    /// The node's version vector right after the commit: it covers the write.
    pub vv: Arc<VersionVector>,
    pub origin: ReplicaId,
    pub first: u64,
    pub last: u64,
}

/// What is committed: the version vector, and the RocksDB sequence number of
/// the commit that produced it. A reader that saw sequence `s` takes its causal
/// token from a `Committed` whose `seq >= s`, so the token covers what it read.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Committed {
    pub vv: VersionVector,
    pub seq: u64,
}

/// Counters the writer keeps, for metrics.
#[derive(Debug, Default)]
pub struct WriterStats {
    pub commits: AtomicU64,
    pub requests: AtomicU64,
    pub rejected: AtomicU64,
    pub remote_groups: AtomicU64,
    pub commit_micros: AtomicU64,
    pub batch_bytes: AtomicU64,
}

enum Request {
    Local {
        ops: Vec<Op>,
        reply: oneshot::Sender<Result<WriteOutcome, StorageError>>,
    },
    Remote {
        group: Box<DeltaGroup>,
        reply: oneshot::Sender<Result<bool, StorageError>>,
    },
    /// Anti-entropy: join transferred state (as deltas with their context),
    /// then, if given, join the version vector with what the state covers.
    Merge {
        ops: Vec<DeltaOp>,
        join_vv: Option<VersionVector>,
        reply: oneshot::Sender<Result<(), StorageError>>,
    },
    /// Delete the delta-log groups of each origin up to the given sequence.
    TrimLog {
        upto: VersionVector,
    },
    Stop,
}

/// The pending answer to [`Writer::submit_remote`].
pub type RemoteReply = oneshot::Receiver<Result<bool, StorageError>>;

/// Handle to the writer thread. Clones share it.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Request>,
    committed: watch::Receiver<Arc<Committed>>,
    stats: Arc<WriterStats>,
    thread: Arc<Mutex<Option<JoinHandle<()>>>>,
    replica: ReplicaId,
}

impl Writer {
    /// Start the writer over `store` with the system clock.
    pub fn start(store: Store, opts: WriterOptions) -> Result<Writer, StorageError> {
        Self::start_with_clock(store, opts, SystemClock)
    }

    /// Start the writer with a given wall clock (tests skew it).
    pub fn start_with_clock<C: WallClock + 'static>(
        store: Store,
        opts: WriterOptions,
        clock: C,
    ) -> Result<Writer, StorageError> {
        let vv = store.load_vv()?;
        let hlc = HlcClock::with_high_water(clock, store.load_hlc()?);
        let (tx, rx) = mpsc::channel(opts.queue_depth.max(1));
        let (vv_tx, vv_rx) = watch::channel(Arc::new(Committed {
            vv: vv.clone(),
            seq: store.latest_seq(),
        }));
        let stats = Arc::new(WriterStats::default());
        let replica = store.replica();
        let mut worker = Worker {
            store,
            cache: RowCache::new(opts.row_cache_bytes),
            opts,
            vv,
            hlc,
            vv_tx,
            stats: stats.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("dotkv-writer".into())
            .spawn(move || worker.run(rx))?;
        Ok(Writer {
            tx,
            committed: vv_rx,
            stats,
            thread: Arc::new(Mutex::new(Some(thread))),
            replica,
        })
    }

    /// Apply `ops` atomically as one local delta group.
    pub async fn write(&self, ops: Vec<Op>) -> Result<WriteOutcome, StorageError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::Local { ops, reply })
            .await
            .map_err(|_| StorageError::WriterStopped)?;
        rx.await.map_err(|_| StorageError::WriterStopped)?
    }

    /// Apply a group from another replica. `Ok(false)` if it was applied before.
    pub async fn apply_remote(&self, group: DeltaGroup) -> Result<bool, StorageError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::Remote {
                group: Box::new(group),
                reply,
            })
            .await
            .map_err(|_| StorageError::WriterStopped)?;
        rx.await.map_err(|_| StorageError::WriterStopped)?
    }

    /// Queue a group from another replica without waiting for it to be
    /// applied: groups submitted in causal order are applied in that order,
    /// so a receiver can keep many in flight.
    pub async fn submit_remote(&self, group: DeltaGroup) -> Result<RemoteReply, StorageError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::Remote {
                group: Box::new(group),
                reply,
            })
            .await
            .map_err(|_| StorageError::WriterStopped)?;
        Ok(rx)
    }

    /// Anti-entropy: join state transferred from a peer (`ops`, each with the
    /// peer's context), and with `join_vv` the version vector too, once the
    /// whole state it covers has been merged.
    pub async fn merge(
        &self,
        ops: Vec<DeltaOp>,
        join_vv: Option<VersionVector>,
    ) -> Result<(), StorageError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::Merge {
                ops,
                join_vv,
                reply,
            })
            .await
            .map_err(|_| StorageError::WriterStopped)?;
        rx.await.map_err(|_| StorageError::WriterStopped)?
    }

    /// Delete every delta-log group of origin `r` whose sequence numbers are
    /// all at most `upto[r]`.
    pub async fn trim_log(&self, upto: VersionVector) -> Result<(), StorageError> {
        self.tx
            .send(Request::TrimLog { upto })
            .await
            .map_err(|_| StorageError::WriterStopped)
    }

    /// The committed version vector, updated after every commit.
    pub fn committed(&self) -> watch::Receiver<Arc<Committed>> {
        self.committed.clone()
    }

    /// A `Committed` that covers every commit visible to a read that has just
    /// finished: it waits (briefly: the time between a commit becoming visible
    /// and its publication) for the writer to publish the commits the read
    /// could have seen.
    pub async fn committed_after_read(&self, store: &Store) -> Arc<Committed> {
        let seen = store.latest_seq();
        let mut rx = self.committed.clone();
        let current = rx.borrow().clone();
        if current.seq >= seen {
            return current;
        }
        let waited = rx.wait_for(|c| c.seq >= seen).await.map(|c| c.clone());
        match waited {
            Ok(c) => c,
            // The writer stopped: nothing more will be committed.
            Err(_) => rx.borrow().clone(),
        }
    }

    pub fn stats(&self) -> &WriterStats {
        &self.stats
    }

    pub fn replica(&self) -> ReplicaId {
        self.replica
    }

    /// Requests waiting for the writer.
    pub fn queued(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// Commit what is queued, then stop the thread and wait for it.
    pub async fn stop(&self) {
        let _ = self.tx.send(Request::Stop).await;
        let handle = self.thread.lock().ok().and_then(|mut h| h.take());
        if let Some(h) = handle {
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
    }
}

struct Worker<C> {
    store: Store,
    cache: RowCache,
    opts: WriterOptions,
    vv: VersionVector,
    hlc: HlcClock<C>,
    vv_tx: watch::Sender<Arc<Committed>>,
    stats: Arc<WriterStats>,
}

enum Reply {
    Local(
        oneshot::Sender<Result<WriteOutcome, StorageError>>,
        Result<(Vec<OpOutput>, u64, u64), StorageError>,
    ),
    Remote(
        oneshot::Sender<Result<bool, StorageError>>,
        Result<bool, StorageError>,
    ),
    Merge(
        oneshot::Sender<Result<(), StorageError>>,
        Result<(), StorageError>,
    ),
}

impl<C: WallClock> Worker<C> {
    fn run(&mut self, mut rx: mpsc::Receiver<Request>) {
        let mut stop = false;
        while !stop {
            let Some(first) = rx.blocking_recv() else {
                break;
            };
            let mut requests = vec![first];
            while requests.len() < self.opts.max_group {
                match rx.try_recv() {
                    Ok(r) => requests.push(r),
                    Err(_) => break,
                }
            }
            stop = self.commit_group(requests);
        }
        if let Err(e) = self.store.flush() {
            tracing::error!(error = %e, "flushing the WAL at shutdown failed");
        }
        tracing::info!("writer stopped");
    }

    /// Apply and commit one group of requests. Returns whether a stop was asked.
    fn commit_group(&mut self, requests: Vec<Request>) -> bool {
        let store = self.store.clone();
        // Moved out while the overlay borrows it; `write_batch` puts it back.
        let cache = std::mem::replace(&mut self.cache, RowCache::new(0));
        let mut ov = Overlay::new(&store, &cache);
        let mut vv = self.vv.clone();
        let mut replies = Vec::with_capacity(requests.len());
        let mut stop = false;
        let me = store.replica();
        let mut trim: Option<VersionVector> = None;
        for req in requests {
            match req {
                Request::Stop => stop = true,
                Request::TrimLog { upto } => match &mut trim {
                    Some(t) => dotkv_crdt::Lattice::join(t, &upto),
                    None => trim = Some(upto),
                },
                Request::Merge {
                    ops,
                    join_vv,
                    reply,
                } => {
                    let result = self.apply_merge(&mut ov, &mut vv, &ops, join_vv.as_ref());
                    match &result {
                        Ok(_) => ov.accept_staged(),
                        Err(_) => ov.discard_staged(),
                    }
                    replies.push(Reply::Merge(reply, result));
                }
                Request::Local { ops, reply } => {
                    let result = self.apply_local(&mut ov, &mut vv, me, &ops);
                    match &result {
                        Ok(_) => ov.accept_staged(),
                        Err(_) => ov.discard_staged(),
                    }
                    replies.push(Reply::Local(reply, result));
                }
                Request::Remote { group, reply } => {
                    let result = self.apply_remote(&mut ov, &mut vv, &group);
                    match &result {
                        Ok(_) => ov.accept_staged(),
                        Err(_) => ov.discard_staged(),
                    }
                    replies.push(Reply::Remote(reply, result));
                }
            }
        }
        let any_ok = trim.is_some()
            || replies.iter().any(|r| match r {
                Reply::Local(_, res) => res.is_ok(),
                Reply::Remote(_, res) => matches!(res, Ok(true)),
                Reply::Merge(_, res) => res.is_ok(),
            });
        let committed = if any_ok {
            self.write_batch(ov, &vv, trim.as_ref())
        } else {
            Ok(None)
        };
        self.cache = cache;
        let committed = match committed {
            Ok(rows) => {
                if let Some(rows) = rows {
                    self.cache.absorb(rows);
                }
                Ok(())
            }
            Err(e) => {
                self.cache.clear();
                Err(e)
            }
        };
        if let Err(e) = &committed {
            tracing::error!(error = %e, "commit failed; answering every request of the group with it");
        } else if any_ok {
            self.vv = vv;
            self.vv_tx.send_replace(Arc::new(Committed {
                vv: self.vv.clone(),
                seq: self.store.latest_seq(),
            }));
        }
        let vv_now = Arc::new(self.vv_tx.borrow().vv.clone());
        for r in replies {
            match r {
                Reply::Local(tx, res) => {
                    let res = match (res, &committed) {
                        (Ok((outputs, first, last)), Ok(())) => Ok(WriteOutcome {
                            outputs,
                            vv: vv_now.clone(),
                            origin: me,
                            first,
                            last,
                        }),
                        (Ok(_), Err(e)) => {
                            Err(StorageError::Corrupt(format!("commit failed: {e}")))
                        }
                        (Err(e), _) => {
                            self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                            Err(e)
                        }
                    };
                    let _ = tx.send(res);
                }
                Reply::Remote(tx, res) => {
                    let res = match (res, &committed) {
                        (Ok(applied), Ok(())) => Ok(applied),
                        (Ok(_), Err(e)) => {
                            Err(StorageError::Corrupt(format!("commit failed: {e}")))
                        }
                        (Err(e), _) => Err(e),
                    };
                    let _ = tx.send(res);
                }
                Reply::Merge(tx, res) => {
                    let res = match (res, &committed) {
                        (Ok(()), Ok(())) => Ok(()),
                        (Ok(()), Err(e)) => {
                            Err(StorageError::Corrupt(format!("commit failed: {e}")))
                        }
                        (Err(e), _) => Err(e),
                    };
                    let _ = tx.send(res);
                }
            }
        }
        stop
    }

    fn apply_merge(
        &mut self,
        ov: &mut Overlay<'_>,
        group_vv: &mut VersionVector,
        ops: &[DeltaOp],
        join_vv: Option<&VersionVector>,
    ) -> Result<(), StorageError> {
        let mut vv = group_vv.clone();
        {
            let mut applier = Applier {
                me: self.store.replica(),
                vv: &mut vv,
                hlc: &mut self.hlc,
            };
            for op in ops {
                applier.merge_op(ov, op)?;
            }
        }
        if let Some(j) = join_vv {
            dotkv_crdt::Lattice::join(&mut vv, j);
        }
        *group_vv = vv;
        Ok(())
    }

    fn apply_local(
        &mut self,
        ov: &mut Overlay<'_>,
        group_vv: &mut VersionVector,
        me: ReplicaId,
        ops: &[Op],
    ) -> Result<(Vec<OpOutput>, u64, u64), StorageError> {
        let deps = group_vv.clone();
        let mut vv = group_vv.clone();
        let first = vv.get(me) + 1;
        let mut outputs = Vec::with_capacity(ops.len());
        let mut deltas = Vec::with_capacity(ops.len());
        {
            let mut applier = Applier {
                me,
                vv: &mut vv,
                hlc: &mut self.hlc,
            };
            for op in ops {
                let (out, delta) = applier.local(ov, op)?;
                outputs.push(out);
                deltas.push(delta);
            }
        }
        // A group always takes at least one dot, so (origin, seq) names it.
        if vv.get(me) < first {
            vv.increment(me);
        }
        let last = vv.get(me);
        let group = DeltaGroup {
            origin: me,
            first,
            last,
            deps,
            ts: self.hlc.now(),
            ops: deltas,
        };
        if self.opts.log_local_groups {
            log_group(ov, &group)?;
        }
        *group_vv = vv;
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        Ok((outputs, first, last))
    }

    fn apply_remote(
        &mut self,
        ov: &mut Overlay<'_>,
        group_vv: &mut VersionVector,
        group: &DeltaGroup,
    ) -> Result<bool, StorageError> {
        let have = group_vv.get(group.origin);
        if group.last <= have {
            return Ok(false);
        }
        let not_ready = |why: String| StorageError::NotReady {
            origin: group.origin,
            first: group.first,
            why,
        };
        if group.first != have + 1 || group.last < group.first {
            return Err(not_ready(format!(
                "have {have} of its origin, group covers {}..={}",
                group.first, group.last
            )));
        }
        if !group.deps.leq(group_vv) {
            return Err(not_ready("dependencies not yet applied".into()));
        }
        let mut vv = group_vv.clone();
        Applier {
            me: self.store.replica(),
            vv: &mut vv,
            hlc: &mut self.hlc,
        }
        .remote(ov, group)?;
        vv.set_max(group.origin, group.last);
        log_group(ov, group)?;
        *group_vv = vv;
        self.stats.remote_groups.fetch_add(1, Ordering::Relaxed);
        Ok(true)
    }

    /// Commit the overlay's writes with the version vector; returns the rows
    /// written, for the row cache.
    fn write_batch(
        &mut self,
        ov: Overlay<'_>,
        vv: &VersionVector,
        trim: Option<&VersionVector>,
    ) -> Result<Option<Rows>, StorageError> {
        let started = Instant::now();
        let mut batch = WriteBatch::default();
        let rows = ov.into_batch(&mut batch);
        let meta = self.store.cf(CF_META);
        batch.put_cf(meta, keys::META_VV, encode_state("version vector", vv)?);
        let hlc: Hlc = self.hlc.last();
        batch.put_cf(meta, keys::META_HLC, encode_state("hlc", &hlc)?);
        if let Some(upto) = trim {
            let deltas = self.store.cf(CF_DELTAS);
            for (r, c) in upto.iter() {
                if c > 0 {
                    // Groups are keyed by their first sequence number; one that
                    // starts at or before `c` ends at or before it too, since
                    // `upto` only names whole groups.
                    batch.delete_range_cf(deltas, keys::delta(r.0, 0), keys::delta(r.0, c + 1));
                }
            }
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(self.opts.durability == Durability::Fsync);
        self.stats
            .batch_bytes
            .fetch_add(batch.size_in_bytes() as u64, Ordering::Relaxed);
        self.store.db().write_opt(batch, &wo)?;
        self.stats.commits.fetch_add(1, Ordering::Relaxed);
        self.stats
            .commit_micros
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        Ok(Some(rows))
    }
}
