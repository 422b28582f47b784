//! Nemeses: faults, scheduled from a seed, and the final heal.
//!
//! Every `interval` or so the nemesis picks one fault (sometimes two of
//! different classes) from those enabled, starts it, holds it for a while,
//! stops it, and waits. Each start and stop is recorded in the history as an
//! `info` operation of process `nemesis` (`f` = `start-<fault>` or
//! `stop-<fault>`, `value` = what it did) and in `nemesis.log`. At the end
//! [`Ctl::heal_all`] heals partitions, restores link conditions, resumes
//! paused nodes, restarts killed ones and resets clocks.

use crate::cluster::{NodeDef, Procs, Relays};
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
    pub nodes: Vec<NodeDef>,
    pub procs: Arc<Procs>,
    pub relays: Relays,
    pub clients: Vec<dotkv_client::Client>,
    pub recorder: Arc<Recorder>,
    pub log: Mutex<std::fs::File>,
    pub started: Instant,
    strobe_stop: Mutex<Option<Arc<AtomicBool>>>,
}

/// A fault that is on, with what is needed to turn it off.
struct Active {
    fault: Fault,
    nodes: Vec<usize>,
}

impl Ctl {
    pub fn new(
        nodes: Vec<NodeDef>,
        procs: Arc<Procs>,
        relays: Relays,
        clients: Vec<dotkv_client::Client>,
        recorder: Arc<Recorder>,
        log: std::fs::File,
    ) -> Ctl {
        Ctl {
            nodes,
            procs,
            relays,
            clients,
            recorder,
            log: Mutex::new(log),
            started: Instant::now(),
            strobe_stop: Mutex::new(None),
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
                self.relays.partition(|a, b| (a == k) == (b == k));
                (json!({"isolated": self.nodes[k].name}), vec![])
            }
            Fault::PartitionDc => {
                let dcs = self.nodes.iter().map(|x| x.dc).max().unwrap_or(1);
                if dcs < 2 {
                    return None;
                }
                let d = rng.random_range(1..=dcs);
                let dc = |i: usize| self.nodes[i].dc == d;
                self.relays.partition(|a, b| dc(a) == dc(b));
                (json!({"isolated": format!("dc{d}")}), vec![])
            }
            Fault::PartitionMajority => {
                let major: Vec<usize> = perm[..n / 2 + 1].to_vec();
                let m = |i: usize| major.contains(&i);
                self.relays.partition(|a, b| m(a) == m(b));
                let minor: Vec<usize> = perm[n / 2 + 1..].to_vec();
                (
                    json!({"majority": self.names(&major), "minority": self.names(&minor)}),
                    vec![],
                )
            }
            Fault::PartitionRing => {
                let pos = |i: usize| perm.iter().position(|&x| x == i).unwrap_or(0);
                self.relays.partition(|a, b| {
                    let d = (pos(a) + n - pos(b)) % n;
                    d <= 1 || d == n - 1
                });
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
                self.relays.partition(|a, b| side(a) * side(b) != 2);
                (
                    json!({"left": self.names(&left), "bridge": self.nodes[perm[k]].name, "right": self.names(&right)}),
                    vec![],
                )
            }
            Fault::Kill => {
                let k = *perm.iter().find(|&&i| self.procs.is_running(i))?;
                self.procs.kill(k);
                (json!({"killed": self.nodes[k].name}), vec![k])
            }
            Fault::Pause => {
                let k = *perm.iter().find(|&&i| self.procs.is_running(i))?;
                self.procs.signal(k, libc::SIGSTOP);
                (json!({"paused": self.nodes[k].name}), vec![k])
            }
            Fault::ClockBump => {
                let k = perm[0];
                let mag: i64 = rng.random_range(5..=300);
                let off = if rng.random_bool(0.5) { mag } else { -mag };
                let _ = self.procs.set_clock(k, off);
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
                let procs = self.procs.clone();
                tokio::spawn(async move {
                    let mut on = false;
                    while !stop.load(Ordering::Relaxed) {
                        on = !on;
                        let _ = procs.set_clock(k, if on { off } else { 0 });
                        tokio::time::sleep(Duration::from_millis(1500)).await;
                    }
                    let _ = procs.set_clock(k, 0);
                });
                (
                    json!({"node": self.nodes[k].name, "offset_s": off, "period_ms": 1500}),
                    vec![k],
                )
            }
            Fault::Loss => {
                let loss = 0.25;
                self.relays.set_loss(|_, _| true, Some(loss));
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
                self.relays.partition(|_, _| true);
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
                    self.procs.signal(k, libc::SIGCONT);
                }
                json!({"resumed": self.names(&a.nodes)})
            }
            Fault::ClockBump => {
                for &k in &a.nodes {
                    let _ = self.procs.set_clock(k, 0);
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
                self.relays.set_loss(|_, _| true, None);
                json!("restored")
            }
        };
        self.note(&format!("stop-{}", a.fault.name()), value);
    }

    /// Starts node `k` again and waits (up to 60 s) until it answers.
    async fn restart(&self, k: usize) {
        if let Err(e) = self.procs.start(k) {
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
        self.relays.heal_all();
        for k in 0..self.nodes.len() {
            self.procs.signal(k, libc::SIGCONT);
            let _ = self.procs.set_clock(k, 0);
            if !self.procs.is_running(k) {
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
            for a in active {
                self.stop(a).await;
            }
            if Instant::now() >= until {
                return;
            }
        }
    }
}
