//! Nemeses: faults, scheduled from a seed, and the final heal.
//!
//! Every `interval` or so the nemesis picks one fault (sometimes two of
//! different classes) from those enabled, starts it, holds it for a while,
//! stops it, and waits. Each start and stop is recorded in the history as an
//! `info` operation of process `nemesis` (`f` = `start-<fault>` or
//! `stop-<fault>`, `value` = what it did) and in `nemesis.log`. At the end
//! [`Ctl::heal_all`] heals partitions, restores link conditions, resumes
//! paused nodes, restarts killed ones and resets clocks.
//!
//! The nemesis acts through the [`Cluster`] trait: [`crate::cluster::Local`]
//! (namespaces, processes, user-space relays) or [`crate::docker::Docker`]
//! (the Compose cluster of `docker-compose.yml`).

use crate::history::{Op, OpType, Process, Recorder};
use anyhow::{bail, Result};
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fault {
    PartitionNode,
    PartitionDc,
    PartitionMajority,
    PartitionRing,
    PartitionBridge,
    Kill,
    Pause,
    ClockBump,
    ClockStrobe,
    Loss,
}

impl Fault {
    pub fn name(self) -> &'static str {
        match self {
            Fault::PartitionNode => "partition-node",
            Fault::PartitionDc => "partition-dc",
            Fault::PartitionMajority => "partition-majority",
            Fault::PartitionRing => "partition-ring",
            Fault::PartitionBridge => "partition-bridge",
            Fault::Kill => "kill",
            Fault::Pause => "pause",
            Fault::ClockBump => "clock-bump",
            Fault::ClockStrobe => "clock-strobe",
            Fault::Loss => "loss",
        }
    }

    /// Faults of one class are never active together.
    fn class(self) -> &'static str {
        match self {
            Fault::PartitionNode
            | Fault::PartitionDc
            | Fault::PartitionMajority
            | Fault::PartitionRing
            | Fault::PartitionBridge => "partition",
            Fault::ClockBump | Fault::ClockStrobe => "clock",
            f => f.name(),
        }
    }

    pub fn needs_faketime(self) -> bool {
        self.class() == "clock"
    }
}

/// What a nemesis needs from a cluster under test. Nodes are numbered
/// `0..n` in the order of [`Ctl::nodes`]. The methods block (the Docker
/// backend runs `docker` commands); [`Ctl`] calls them from Tokio worker
/// threads through `block_in_place`.
pub trait Cluster: Send + Sync {
    /// Cuts every link between two nodes `connected` says may not talk, and
    /// heals every other link.
    fn partition(&self, connected: &dyn Fn(usize, usize) -> bool) -> Result<()>;
    /// Sets the loss probability of every link, or restores the base
    /// conditions with `None`.
    fn set_loss(&self, loss: Option<f64>) -> Result<()>;
    /// Heals every link and restores its base conditions.
    fn heal_links(&self) -> Result<()>;
    /// Kills node `i` with SIGKILL.
    fn kill(&self, i: usize) -> Result<()>;
    /// Starts node `i` (no-op if it runs).
    fn start(&self, i: usize) -> Result<()>;
    /// Stops node `i` in place (SIGSTOP, `docker pause`).
    fn pause(&self, i: usize) -> Result<()>;
    /// Resumes node `i` (no-op unless paused).
    fn resume(&self, i: usize) -> Result<()>;
    /// Node `i` is running and may be killed or paused.
    fn is_running(&self, i: usize) -> bool;
    /// Sets node `i`'s wall-clock offset in seconds.
    fn set_clock(&self, i: usize, offset_s: i64) -> Result<()>;
}

/// A node as the nemesis sees it.
#[derive(Clone, Debug)]
pub struct Member {
    /// `dcD-nN`.
    pub name: String,
    /// 1-based datacenter number.
    pub dc: usize,
}

/// Runs a blocking cluster operation from async code.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// [`parse`] for the Docker backend: a partition can only cut a whole
/// datacenter off (its WAN relays stop), so `partition` means
/// `partition-dc`; `kill` and `pause` work; anything else is refused.
pub fn parse_docker(list: &str) -> Result<Vec<Fault>> {
    let mut out = Vec::new();
    for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let add = match item {
            "partition" | "partition-dc" => vec![Fault::PartitionDc],
            "none" | "kill" | "pause" => parse(item)?,
            other => {
                // An unknown name still gets parse's message.
                parse(other)?;
                bail!(
                    "nemesis {other:?} is not supported by the docker backend: it supports \
                     none, partition (= partition-dc: a datacenter's WAN relays stop), kill \
                     (docker kill -s SIGKILL, then docker start) and pause (docker pause)"
                );
            }
        };
        for f in add {
            if !out.contains(&f) {
                out.push(f);
            }
        }
    }
    Ok(out)
}

/// Parses `partition,kill`: `partition` means every partition shape, `clock`
/// both clock faults, `all` everything, `none` nothing.
pub fn parse(list: &str) -> Result<Vec<Fault>> {
    use Fault::*;
    let mut out: Vec<Fault> = Vec::new();
    for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let add: Vec<Fault> = match item {
            "none" => vec![],
            "partition" => vec![PartitionNode, PartitionDc, PartitionMajority, PartitionRing, PartitionBridge],
            "partition-node" => vec![PartitionNode],
            "partition-dc" => vec![PartitionDc],
            "partition-majority" => vec![PartitionMajority],
            "partition-ring" => vec![PartitionRing],
            "partition-bridge" => vec![PartitionBridge],
            "kill" => vec![Kill],
            "pause" => vec![Pause],
            "clock" => vec![ClockBump, ClockStrobe],
            "clock-bump" => vec![ClockBump],
            "clock-strobe" => vec![ClockStrobe],
            "loss" => vec![Loss],
            "all" => vec![
                PartitionNode, PartitionDc, PartitionMajority, PartitionRing, PartitionBridge, Kill, Pause,
                ClockBump, ClockStrobe, Loss,
            ],
            other => bail!(
                "unknown nemesis {other:?}: use none, partition[-node|-dc|-majority|-ring|-bridge], kill, pause, clock[-bump|-strobe], loss, all"
            ),
        };
        for f in add {
            if !out.contains(&f) {
                out.push(f);
            }
        }
    }
    Ok(out)
}

/// What the nemesis acts on.
pub struct Ctl {
    pub nodes: Vec<Member>,
    pub cluster: Arc<dyn Cluster>,
    pub clients: Vec<dotkv_client::Client>,
    pub recorder: Arc<Recorder>,
    pub log: Mutex<std::fs::File>,
    pub started: Instant,
    strobe_stop: Mutex<Option<Arc<AtomicBool>>>,
    /// When the last fault window ended (its faults stopped).
    last_fault_end: Mutex<Option<Instant>>,
}

/// A fault that is on, with what is needed to turn it off.
struct Active {
    fault: Fault,
    nodes: Vec<usize>,
}

impl Ctl {
    pub fn new(
        nodes: Vec<Member>,
        cluster: Arc<dyn Cluster>,
        clients: Vec<dotkv_client::Client>,
        recorder: Arc<Recorder>,
        log: std::fs::File,
    ) -> Ctl {
        Ctl {
            nodes,
            cluster,
            clients,
            recorder,
            log: Mutex::new(log),
            started: Instant::now(),
            strobe_stop: Mutex::new(None),
            last_fault_end: Mutex::new(None),
        }
    }

    /// Records a nemesis event in the history and the log.
    pub fn note(&self, f: &str, value: Value) {
        let op = self
            .recorder
            .record(Op::new(OpType::Info, Process::nemesis(), f, value.clone()));
        let line = format!("{:9.3}s {f} {value}\n", op.time as f64 / 1e9);
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        let _ = log.write_all(line.as_bytes());
    }

    /// Applies a partition; an error is noted (and the fault skipped).
    fn cut(&self, connected: &dyn Fn(usize, usize) -> bool) -> Option<()> {
        self.act("partition", blocking(|| self.cluster.partition(connected)))
    }

    /// Notes a failed cluster operation; `Some(())` if it worked.
    fn act(&self, what: &str, r: Result<()>) -> Option<()> {
        match r {
            Ok(()) => Some(()),
            Err(e) => {
                self.note("error", json!(format!("{what}: {e:#}")));
                None
            }
        }
    }

    fn names(&self, idx: &[usize]) -> Vec<String> {
        idx.iter().map(|&i| self.nodes[i].name.clone()).collect()
    }

    /// Starts `fault`; returns what to stop later, or `None` if it could not
    /// apply (e.g. one datacenter and a datacenter partition).
    async fn start(&self, fault: Fault, rng: &mut StdRng) -> Option<Active> {
        let n = self.nodes.len();
        let mut perm: Vec<usize> = (0..n).collect();
        perm.shuffle(rng);
        let (value, nodes): (Value, Vec<usize>) = match fault {
            Fault::PartitionNode => {
                let k = perm[0];
                self.cut(&|a, b| (a == k) == (b == k))?;
                (json!({"isolated": self.nodes[k].name}), vec![])
            }
            Fault::PartitionDc => {
                let dcs = self.nodes.iter().map(|x| x.dc).max().unwrap_or(1);
                if dcs < 2 {
                    return None;
                }
                let d = rng.random_range(1..=dcs);
                let dc = |i: usize| self.nodes[i].dc == d;
                self.cut(&|a, b| dc(a) == dc(b))?;
                (json!({"isolated": format!("dc{d}")}), vec![])
            }
            Fault::PartitionMajority => {
                let major: Vec<usize> = perm[..n / 2 + 1].to_vec();
                let m = |i: usize| major.contains(&i);
                self.cut(&|a, b| m(a) == m(b))?;
                let minor: Vec<usize> = perm[n / 2 + 1..].to_vec();
                (
                    json!({"majority": self.names(&major), "minority": self.names(&minor)}),
                    vec![],
                )
            }
            Fault::PartitionRing => {
                let pos = |i: usize| perm.iter().position(|&x| x == i).unwrap_or(0);
                self.cut(&|a, b| {
                    let d = (pos(a) + n - pos(b)) % n;
                    d <= 1 || d == n - 1
                })?;
                (json!({"ring": self.names(&perm)}), vec![])
            }
            Fault::PartitionBridge => {
                if n < 3 {
                    return None;
                }
                let k = (n - 1) / 2;
                let left: Vec<usize> = perm[..k].to_vec();
                let right: Vec<usize> = perm[k + 1..].to_vec();
                let side = |i: usize| {
                    if left.contains(&i) {
                        1
                    } else if right.contains(&i) {
                        2
                    } else {
                        0
                    }
                };
                self.cut(&|a, b| side(a) * side(b) != 2)?;
                (
                    json!({"left": self.names(&left), "bridge": self.nodes[perm[k]].name, "right": self.names(&right)}),
                    vec![],
                )
            }
            Fault::Kill => {
                let k = *perm.iter().find(|&&i| self.cluster.is_running(i))?;
                self.act("kill", blocking(|| self.cluster.kill(k)))?;
                (json!({"killed": self.nodes[k].name}), vec![k])
            }
            Fault::Pause => {
                let k = *perm.iter().find(|&&i| self.cluster.is_running(i))?;
                self.act("pause", blocking(|| self.cluster.pause(k)))?;
                (json!({"paused": self.nodes[k].name}), vec![k])
            }
            Fault::ClockBump => {
                let k = perm[0];
                let mag: i64 = rng.random_range(5..=300);
                let off = if rng.random_bool(0.5) { mag } else { -mag };
                self.act("clock", blocking(|| self.cluster.set_clock(k, off)))?;
                (
                    json!({"node": self.nodes[k].name, "offset_s": off}),
                    vec![k],
                )
            }
            Fault::ClockStrobe => {
                let k = perm[0];
                let mag: i64 = rng.random_range(5..=60);
                let off = if rng.random_bool(0.5) { mag } else { -mag };
                let stop = Arc::new(AtomicBool::new(false));
                *self.strobe_stop.lock().unwrap_or_else(|e| e.into_inner()) = Some(stop.clone());
                let cluster = self.cluster.clone();
                tokio::spawn(async move {
                    let mut on = false;
                    while !stop.load(Ordering::Relaxed) {
                        on = !on;
                        let _ = blocking(|| cluster.set_clock(k, if on { off } else { 0 }));
                        tokio::time::sleep(Duration::from_millis(1500)).await;
                    }
                    let _ = blocking(|| cluster.set_clock(k, 0));
                });
                (
                    json!({"node": self.nodes[k].name, "offset_s": off, "period_ms": 1500}),
                    vec![k],
                )
            }
            Fault::Loss => {
                let loss = 0.25;
                self.act("loss", blocking(|| self.cluster.set_loss(Some(loss))))?;
                (json!({"loss": loss, "links": "all"}), vec![])
            }
        };
        self.note(&format!("start-{}", fault.name()), value);
        Some(Active { fault, nodes })
    }

    async fn stop(&self, a: Active) {
        let value = match a.fault {
            Fault::PartitionNode
            | Fault::PartitionDc
            | Fault::PartitionMajority
            | Fault::PartitionRing
            | Fault::PartitionBridge => {
                let _ = self.cut(&|_, _| true);
                json!("healed")
            }
            Fault::Kill => {
                for &k in &a.nodes {
                    self.restart(k).await;
                }
                json!({"restarted": self.names(&a.nodes)})
            }
            Fault::Pause => {
                for &k in &a.nodes {
                    self.act("resume", blocking(|| self.cluster.resume(k)));
                }
                json!({"resumed": self.names(&a.nodes)})
            }
            Fault::ClockBump => {
                for &k in &a.nodes {
                    self.act("clock", blocking(|| self.cluster.set_clock(k, 0)));
                }
                json!({"reset": self.names(&a.nodes)})
            }
            Fault::ClockStrobe => {
                if let Some(s) = self
                    .strobe_stop
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take()
                {
                    s.store(true, Ordering::Relaxed);
                }
                json!({"reset": self.names(&a.nodes)})
            }
            Fault::Loss => {
                self.act("loss", blocking(|| self.cluster.set_loss(None)));
                json!("restored")
            }
        };
        self.note(&format!("stop-{}", a.fault.name()), value);
    }

    /// Starts node `k` again and waits (up to 60 s) until it answers.
    async fn restart(&self, k: usize) {
        if let Err(e) = blocking(|| self.cluster.start(k)) {
            self.note(
                "error",
                json!(format!("restart {}: {e:#}", self.nodes[k].name)),
            );
            return;
        }
        if let Err(e) =
            crate::cluster::wait_healthy(&self.clients[k], Duration::from_secs(60)).await
        {
            self.note("error", json!(format!("{e:#}")));
        }
    }

    /// When the last fault window of the schedule ended, if there was one.
    pub fn last_fault_end(&self) -> Option<Instant> {
        *self
            .last_fault_end
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Heals everything: links, paused and killed nodes, clocks.
    pub async fn heal_all(&self) {
        if let Some(s) = self
            .strobe_stop
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            s.store(true, Ordering::Relaxed);
        }
        self.act("heal", blocking(|| self.cluster.heal_links()));
        for k in 0..self.nodes.len() {
            self.act("resume", blocking(|| self.cluster.resume(k)));
            self.act("clock", blocking(|| self.cluster.set_clock(k, 0)));
            if !self.cluster.is_running(k) {
                self.restart(k).await;
            }
        }
        self.note(
            "heal",
            json!("all links healed, nodes resumed and running, clocks reset"),
        );
    }

    /// The schedule: until `stop` is set, fault windows of 5–15 s separated by
    /// 3–8 s of quiet. Stops its active faults before returning.
    pub async fn run(self: Arc<Self>, faults: Vec<Fault>, seed: u64, until: Instant) {
        if faults.is_empty() {
            return;
        }
        let mut rng = StdRng::seed_from_u64(seed ^ 0x006e_656d_6573_6973);
        let sleep_until = |t: Instant| tokio::time::sleep_until(t.into());
        loop {
            let quiet = Instant::now() + Duration::from_millis(rng.random_range(3_000..8_000));
            if quiet + Duration::from_secs(3) >= until {
                sleep_until(until).await;
                return;
            }
            sleep_until(quiet).await;
            let mut chosen = vec![*faults.choose(&mut rng).expect("non-empty")];
            if rng.random_bool(0.3) {
                let other = *faults.choose(&mut rng).expect("non-empty");
                if other.class() != chosen[0].class() {
                    chosen.push(other);
                }
            }
            let mut active = Vec::new();
            for f in chosen {
                if let Some(a) = self.start(f, &mut rng).await {
                    active.push(a);
                }
            }
            let hold = Instant::now() + Duration::from_millis(rng.random_range(5_000..15_000));
            sleep_until(hold.min(until)).await;
            let had_faults = !active.is_empty();
            for a in active {
                self.stop(a).await;
            }
            if had_faults {
                *self
                    .last_fault_end
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
            }
            if Instant::now() >= until {
                return;
            }
        }
    }
}
