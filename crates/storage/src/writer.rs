//! The single writer: every mutation of the database goes through one
//! worker, which takes whatever requests are queued (up to a bound), applies
//! them one after another through an overlay, and commits them in one
//! `WriteBatch`, with one WAL write and, under `durability = "fsync"`, one
//! fsync for all of them. A request that fails (say, a counter overflow) is
//! left out of the batch without affecting the others.
//!
//! The worker sits behind a mutex, and whoever holds it commits. Under the
//! default durability, a local write is committed by the task that asked for
//! it (flat combining): it queues its request, and if the worker is free it
//! takes it and commits every queued request in one group, its own among
//! them; if the worker is busy, the holder commits the queued requests before
//! it lets go. Between queueing and taking the worker, the task yields once
//! to the runtime, so the other requests that are ready in the same turn
//! (under load, most of the open connections) queue theirs too and share
//! the commit, as a single-threaded server commits once per turn of its
//! event loop. Each commit is a WAL write of tens of microseconds, so the
//! runtime thread is held briefly, and no request has to wake another thread
//! and wait to be woken in turn, which on two cores cost more than the commit
//! itself. The writer thread commits everything else: groups from peers,
//! anti-entropy, log trims, every write under `durability = "fsync"` (an
//! fsync would hold a runtime thread for hundreds of microseconds), and local
//! writes while commits are slow (a RocksDB write stall).

use crate::apply::{log_group, Applier, Overlay, RowCache, Rows};
use crate::db::{encode_state, Store, CF_DELTAS, CF_META};
use crate::keys;
use crate::model::{DeltaGroup, DeltaOp, Op, OpOutput};
use crate::StorageError;
use dotkv_crdt::{Hlc, HlcClock, ReplicaId, SystemClock, VersionVector, WallClock};
use rocksdb::{WriteBatch, WriteOptions};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
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
    /// Let local writes be committed by the tasks that ask for them, as
    /// described in the module's documentation. Only under
    /// `Durability::Wal`; under fsync the writer thread commits everything.
    pub inline_commits: bool,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            durability: Durability::Wal,
            queue_depth: 4096,
            max_group: 512,
            log_local_groups: true,
            row_cache_bytes: 32 << 20,
            inline_commits: true,
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
    /// Of `commits`, those made by a request's own task, not the thread.
    pub inline_commits: AtomicU64,
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
    /// Wakes the thread to commit requests queued for inline commits that
    /// no task is left to commit.
    Drain,
    Stop,
}

/// Armed while a task that queued a write for an inline commit has yielded:
/// if its future is dropped then (a client that went away), the write is
/// still queued and no one may come to commit it, so a new task does.
struct HandOverOnDrop<'a>(Option<&'a Writer>);

impl Drop for HandOverOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(writer) = self.0 {
            writer.hand_over();
        }
    }
}

/// The pending answer to [`Writer::submit_remote`].
pub type RemoteReply = oneshot::Receiver<Result<bool, StorageError>>;

/// Handle to the writer. Clones share it.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Request>,
    core: Arc<Core>,
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
    pub fn start_with_clock<C: WallClock + Send + 'static>(
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
        let core = Arc::new(Core {
            inline: opts.inline_commits && opts.durability == Durability::Wal,
            max_group: opts.max_group.max(1),
            pending_cap: opts.queue_depth.max(1),
            pending: Mutex::new(Pending::default()),
            slow_until_ms: AtomicU64::new(0),
            next_stall_check_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            store: Mutex::new(Some(store.clone())),
            stats: stats.clone(),
            worker: Mutex::new(Some(Box::new(Worker {
                store,
                cache: RowCache::new(opts.row_cache_bytes),
                opts,
                vv,
                hlc,
                vv_tx,
                stats: stats.clone(),
            }))),
        });
        let thread_core = core.clone();
        let thread = std::thread::Builder::new()
            .name("dotkv-writer".into())
            .spawn(move || thread_core.run_thread(rx))?;
        Ok(Writer {
            tx,
            core,
            committed: vv_rx,
            stats,
            thread: Arc::new(Mutex::new(Some(thread))),
            replica,
        })
    }

    /// Apply `ops` atomically as one local delta group.
    pub async fn write(&self, ops: Vec<Op>) -> Result<WriteOutcome, StorageError> {
        let (reply, rx) = oneshot::channel();
        match self.core.queue_inline(Request::Local { ops, reply }) {
            Ok(()) => {
                // Let the tasks that are ready in this turn of the runtime
                // queue their writes first, so one commit takes them all.
                // A yielded task runs again after the runtime has polled for
                // I/O and run what was ready before it; alone, it resumes
                // at once. Should the caller drop this future meanwhile,
                // the guard leaves the queued write to another task.
                let mut guard = HandOverOnDrop(Some(self));
                tokio::task::yield_now().await;
                guard.0 = None;
                if self.core.combine() {
                    self.hand_over();
                }
            }
            Err(request) => self
                .tx
                .send(request)
                .await
                .map_err(|_| StorageError::WriterStopped)?,
        }
        rx.await.map_err(|_| StorageError::WriterStopped)?
    }

    /// Requests are still queued after a bounded run of inline commits: a
    /// new task on this runtime goes on with them once the current one has
    /// yielded, so the task that committed can answer its own client. Out
    /// of a runtime, the writer thread takes them.
    fn hand_over(&self) {
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                let writer = self.clone();
                rt.spawn(async move {
                    // Each round commits at least one group, and the queue is
                    // bounded, so this ends unless writes keep coming; then
                    // each turn yields to them.
                    while writer.core.combine() {
                        tokio::task::yield_now().await;
                    }
                });
            }
            Err(_) => {
                // Full means the thread is awake and will drain the queue
                // after its next commit.
                let _ = self.tx.try_send(Request::Drain);
            }
        }
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
        self.tx.max_capacity() - self.tx.capacity() + self.core.pending_len()
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

/// What the thread and the tasks committing inline share.
struct Core {
    /// `None` once the thread has stopped: the store it holds is released
    /// then, not when the last handle goes.
    worker: Mutex<Option<Box<dyn Commit>>>,
    pending: Mutex<Pending>,
    /// Whether local writes may be committed inline at all.
    inline: bool,
    max_group: usize,
    /// Most requests queued for inline commits; beyond it, writes wait for
    /// room in the thread's channel.
    pending_cap: usize,
    /// Inline commits are off until this many milliseconds after `epoch`,
    /// because RocksDB stalls writes or a commit was slow.
    slow_until_ms: AtomicU64,
    /// When RocksDB's stall state is next looked at, in milliseconds after
    /// `epoch`.
    next_stall_check_ms: AtomicU64,
    epoch: Instant,
    /// For RocksDB's stall state; `None` once the thread has stopped, like
    /// `worker`.
    store: Mutex<Option<Store>>,
    stats: Arc<WriterStats>,
}

#[derive(Default)]
struct Pending {
    requests: VecDeque<Request>,
    /// The thread has stopped: nothing more is committed inline.
    stopped: bool,
}

/// While RocksDB stalls writes (flushes or compactions are behind), or after
/// a commit that took longer than [`SLOW_COMMIT`], local writes go through
/// the writer thread for [`SLOW_BACKOFF`], so a stalled write holds that
/// thread and not one of the runtime's. The threshold is well above what a
/// commit takes when its thread is merely preempted on a busy machine.
const SLOW_COMMIT: Duration = Duration::from_millis(20);
const SLOW_BACKOFF: Duration = Duration::from_millis(500);
/// How often RocksDB's stall state is looked at (it takes the DB's mutex).
const STALL_CHECK: Duration = Duration::from_millis(100);

/// Groups one task commits inline before it leaves the rest to another.
const INLINE_ROUNDS: usize = 4;

/// The worker, without its clock type.
trait Commit: Send {
    /// Apply and commit one group of requests. Returns whether a stop was
    /// asked.
    fn commit_group(&mut self, requests: Vec<Request>) -> bool;
    /// Flush the WAL, at shutdown.
    fn flush(&mut self);
}

impl Core {
    fn lock_pending(&self) -> MutexGuard<'_, Pending> {
        // Nothing panics while holding it: a poisoned lock holds a valid queue.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_worker(&self) -> MutexGuard<'_, Option<Box<dyn Commit>>> {
        self.worker.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn try_lock_worker(&self) -> Option<MutexGuard<'_, Option<Box<dyn Commit>>>> {
        match self.worker.try_lock() {
            Ok(g) => Some(g),
            Err(TryLockError::Poisoned(e)) => Some(e.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
    }

    fn write_stalled(&self) -> bool {
        let store = self.store.lock().unwrap_or_else(|e| e.into_inner());
        store.as_ref().is_some_and(Store::write_stalled)
    }

    fn pending_len(&self) -> usize {
        self.lock_pending().requests.len()
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn back_off(&self, now_ms: u64) {
        let until = now_ms + SLOW_BACKOFF.as_millis() as u64;
        self.slow_until_ms.fetch_max(until, Ordering::Relaxed);
    }

    /// Whether local writes may be committed inline now.
    fn inline_allowed(&self) -> bool {
        if !self.inline {
            return false;
        }
        let now = self.now_ms();
        if now < self.slow_until_ms.load(Ordering::Relaxed) {
            return false;
        }
        let next = self.next_stall_check_ms.load(Ordering::Relaxed);
        let due = now >= next
            && self
                .next_stall_check_ms
                .compare_exchange(
                    next,
                    now + STALL_CHECK.as_millis() as u64,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok();
        if due && self.write_stalled() {
            self.back_off(now);
            return false;
        }
        true
    }

    /// Queue a local write for an inline commit, or hand it back when it
    /// must go through the thread.
    fn queue_inline(&self, request: Request) -> Result<(), Request> {
        if !self.inline_allowed() {
            return Err(request);
        }
        let mut p = self.lock_pending();
        if p.stopped || p.requests.len() >= self.pending_cap {
            return Err(request);
        }
        p.requests.push_back(request);
        Ok(())
    }

    fn take_pending(&self) -> Vec<Request> {
        let mut p = self.lock_pending();
        let n = p.requests.len().min(self.max_group);
        p.requests.drain(..n).collect()
    }

    /// Commit `requests` with the worker, if it is still there; without
    /// it, dropping them answers each with `WriterStopped`.
    fn commit(&self, worker: &mut Option<Box<dyn Commit>>, requests: Vec<Request>) -> bool {
        let Some(worker) = worker.as_mut() else {
            return true;
        };
        let started = Instant::now();
        let stop = worker.commit_group(requests);
        if started.elapsed() > SLOW_COMMIT {
            self.back_off(self.now_ms());
        }
        stop
    }

    /// Commit queued requests while the worker is free, for at most
    /// [`INLINE_ROUNDS`] groups. Returns whether requests are left that no
    /// one else is sure to commit.
    ///
    /// Nothing is stranded: a task that queued a request and then found the
    /// worker taken did so before the holder let go (the queue's lock orders
    /// the two), and every holder looks at the queue again after letting go.
    fn combine(&self) -> bool {
        for _ in 0..INLINE_ROUNDS {
            if self.lock_pending().requests.is_empty() {
                return false;
            }
            let Some(mut worker) = self.try_lock_worker() else {
                // The holder looks at the queue after it lets go.
                return false;
            };
            let batch = self.take_pending();
            if !batch.is_empty() {
                // Only the holder commits, so the count moves only if this
                // group wrote a batch (a group whose requests all failed, or
                // one after the stop, writes none).
                let before = self.stats.commits.load(Ordering::Relaxed);
                self.commit(&mut worker, batch);
                if self.stats.commits.load(Ordering::Relaxed) != before {
                    self.stats.inline_commits.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        !self.lock_pending().requests.is_empty()
    }

    /// The writer thread: commits what comes through its channel and, after
    /// each commit, whatever is queued for inline commits.
    fn run_thread(&self, mut rx: mpsc::Receiver<Request>) {
        let mut stop = false;
        while !stop {
            let Some(first) = rx.blocking_recv() else {
                break;
            };
            let mut requests = Vec::new();
            let mut next = Some(first);
            while let Some(r) = next.take() {
                if !matches!(r, Request::Drain) {
                    requests.push(r);
                }
                if requests.len() < self.max_group {
                    next = rx.try_recv().ok();
                }
            }
            if !requests.is_empty() {
                let mut worker = self.lock_worker();
                stop = self.commit(&mut worker, requests);
            }
            // Commit what was queued for inline commits meanwhile: tasks that
            // found the worker taken by this thread left it to us. The queue
            // is looked at only while the worker is free, so a request queued
            // after the look finds the worker free, or taken by a holder that
            // looks again. A channel request waiting ends the loop after one
            // round (so neither side starves the other), and the thread
            // comes back here after committing it.
            let mut first_round = true;
            while !stop && (first_round || rx.is_empty()) {
                first_round = false;
                if self.lock_pending().requests.is_empty() {
                    break;
                }
                let mut worker = self.lock_worker();
                let batch = self.take_pending();
                if !batch.is_empty() {
                    self.commit(&mut worker, batch);
                }
            }
        }
        // Stop inline commits, then commit what they left.
        self.lock_pending().stopped = true;
        let mut worker = self.lock_worker();
        loop {
            let batch = self.take_pending();
            if batch.is_empty() {
                break;
            }
            self.commit(&mut worker, batch);
        }
        if let Some(mut w) = worker.take() {
            w.flush();
        }
        self.store.lock().unwrap_or_else(|e| e.into_inner()).take();
        tracing::info!("writer stopped");
    }
}

impl<C: WallClock + Send> Commit for Worker<C> {
    fn commit_group(&mut self, requests: Vec<Request>) -> bool {
        Worker::commit_group(self, requests)
    }

    fn flush(&mut self) {
        if let Err(e) = self.store.flush() {
            tracing::error!(error = %e, "flushing the WAL at shutdown failed");
        }
    }
}

impl<C: WallClock> Worker<C> {
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
                Request::Drain => {}
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
                        (Ok(_), Err(e)) => Err(StorageError::CommitFailed(e.to_string())),
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
                        (Ok(_), Err(e)) => Err(StorageError::CommitFailed(e.to_string())),
                        (Err(e), _) => Err(e),
                    };
                    let _ = tx.send(res);
                }
                Reply::Merge(tx, res) => {
                    let res = match (res, &committed) {
                        (Ok(()), Ok(())) => Ok(()),
                        (Ok(()), Err(e)) => Err(StorageError::CommitFailed(e.to_string())),
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
                delta_ctx: true,
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
                // The group's deltas are dropped unless they are logged.
                delta_ctx: self.opts.log_local_groups,
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
            delta_ctx: true,
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
