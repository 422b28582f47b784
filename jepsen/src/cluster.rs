//! The cluster under test: network namespaces, certificates, configs, node
//! processes and the WAN relays.
//!
//! Layout for run `<pid>` (all names start with `dkj-<pid>-`):
//!
//! ```text
//!  namespace dkj-<pid>-hub  (the harness process lives here)
//!    br1 10.77.1.1/24 ── veth ── dkj-<pid>-d1n1: eth0 10.77.1.11  dotkv dc1-n1
//!                     └─ veth ── dkj-<pid>-d1n2: eth0 10.77.1.12  dotkv dc1-n2
//!    br2 10.77.2.1/24 ── veth ── dkj-<pid>-d2n1: eth0 10.77.2.11  dotkv dc2-n1
//!    relays: one UDP relay per ordered pair of nodes (X → Y), listening on
//!            X's bridge address, forwarding to Y's QUIC port
//! ```
//!
//! A node namespace has only its datacenter's /24, so a node cannot reach
//! another node except through the relay the config names for that peer.
//! Every node-to-node packet crosses exactly one relay: cross-datacenter
//! relays add WAN delay, jitter, duplication and reordering; intra-datacenter
//! relays are perfect links. A partition of any shape is then "these relays
//! drop everything", and packet loss is a change of relay conditions. The
//! HTTP clients (in the hub) reach every node directly over its bridge.
//!
//! Everything is removed when the [`Net`] and [`Procs`] guards drop, which
//! happens on success, on error and on panic (the release profile unwinds);
//! the binary turns SIGINT and SIGTERM into an orderly return.

use crate::netns;
use anyhow::{bail, Context, Result};
use dotkv_netsim::{Direction, LinkConditions, RelayHandle};
use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// libfaketime from Debian's `libfaketime` package (the multi-threaded build).
pub const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

pub const HTTP_PORT: u16 = 7700;
pub const QUIC_PORT: u16 = 7701;

/// What to build.
#[derive(Clone, Debug)]
pub struct Spec {
    pub datacenters: usize,
    pub nodes_per_dc: usize,
    /// The `dotkv` binary.
    pub dotkv: PathBuf,
    /// Run `dotkv-faulty --fault F` instead of `dotkv serve`.
    pub faulty: Option<(PathBuf, String)>,
    /// Start nodes under libfaketime, with a per-node offset file.
    pub faketime: bool,
    /// Conditions of cross-datacenter links.
    pub wan: LinkConditions,
    pub seed: u64,
    /// Scratch space (data directories, certificates, configs), removed at the end.
    pub scratch: PathBuf,
    /// Where node logs go (kept).
    pub logs: PathBuf,
}

/// One node's identity and files.
#[derive(Clone, Debug)]
pub struct NodeDef {
    pub index: usize,
    /// `dcD-nN`.
    pub name: String,
    /// 1-based datacenter number.
    pub dc: usize,
    pub namespace: String,
    pub ip: Ipv4Addr,
    pub config: PathBuf,
    pub log: PathBuf,
    pub clock_file: PathBuf,
}

impl NodeDef {
    pub fn http(&self) -> SocketAddr {
        SocketAddr::from((self.ip, HTTP_PORT))
    }

    pub fn quic(&self) -> SocketAddr {
        SocketAddr::from((self.ip, QUIC_PORT))
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.http())
    }

    pub fn datacenter(&self) -> String {
        format!("dc{}", self.dc)
    }
}

fn bridge_ip(dc: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, dc as u8, 1)
}

/// The relay from node `from` to node `to` listens here.
pub fn relay_addr(from: &NodeDef, to: &NodeDef) -> SocketAddr {
    SocketAddr::from((
        bridge_ip(from.dc),
        20_000 + (from.index * 100 + to.index) as u16,
    ))
}

/// The namespaces of one run. Dropping it deletes them all.
pub struct Net {
    pub id: String,
    pub hub: String,
    pub nodes: Vec<NodeDef>,
    created: Vec<String>,
}

impl Net {
    /// Creates the hub, one bridge per datacenter and one namespace per node.
    /// Call from the main thread before any other thread exists.
    pub fn create(spec: &Spec) -> Result<Net> {
        let id = format!("{}{}", netns::PREFIX, std::process::id());
        let mut net = Net {
            hub: format!("{id}-hub"),
            id,
            nodes: Vec::new(),
            created: Vec::new(),
        };
        if spec.datacenters == 0
            || spec.nodes_per_dc == 0
            || spec.datacenters > 9
            || spec.nodes_per_dc > 9
        {
            bail!("datacenters and nodes per datacenter must be 1..=9");
        }
        let hub = net.hub.clone();
        netns::ip(&["netns", "add", &hub])?;
        net.created.push(hub.clone());
        netns::ip(&["-n", &hub, "link", "set", "lo", "up"])?;
        for dc in 1..=spec.datacenters {
            let br = format!("br{dc}");
            netns::ip(&["-n", &hub, "link", "add", &br, "type", "bridge"])?;
            netns::ip(&[
                "-n",
                &hub,
                "addr",
                "add",
                &format!("{}/24", bridge_ip(dc)),
                "dev",
                &br,
            ])?;
            netns::ip(&["-n", &hub, "link", "set", &br, "up"])?;
        }
        for dc in 1..=spec.datacenters {
            for n in 1..=spec.nodes_per_dc {
                let name = format!("dc{dc}-n{n}");
                let ns = format!("{}-d{dc}n{n}", net.id);
                let ip = Ipv4Addr::new(10, 77, dc as u8, 10 + n as u8);
                netns::ip(&["netns", "add", &ns])?;
                net.created.push(ns.clone());
                netns::ip(&["-n", &ns, "link", "set", "lo", "up"])?;
                let veth = format!("v{dc}n{n}");
                netns::ip(&[
                    "-n", &hub, "link", "add", &veth, "type", "veth", "peer", "name", "eth0",
                    "netns", &ns,
                ])?;
                netns::ip(&[
                    "-n",
                    &hub,
                    "link",
                    "set",
                    &veth,
                    "master",
                    &format!("br{dc}"),
                    "up",
                ])?;
                netns::ip(&["-n", &ns, "addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
                netns::ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
                let index = net.nodes.len();
                net.nodes.push(NodeDef {
                    index,
                    config: spec.scratch.join(format!("{name}.toml")),
                    log: spec.logs.join(format!("{name}.log")),
                    clock_file: spec.scratch.join(format!("{name}.faketime")),
                    name,
                    dc,
                    namespace: ns,
                    ip,
                });
            }
        }
        Ok(net)
    }

    /// Writes certificates and every node's config.
    pub fn write_configs(&self, spec: &Spec) -> Result<()> {
        let certs = spec.scratch.join("certs");
        std::fs::create_dir_all(&certs)?;
        dotkv_replication::init_ca(&certs).context("init CA")?;
        for n in &self.nodes {
            dotkv_replication::issue_node_cert(
                &certs,
                &n.name,
                &[n.name.clone(), n.ip.to_string()],
                &certs,
            )
            .with_context(|| format!("certificate for {}", n.name))?;
            let data = spec.scratch.join("data").join(&n.name);
            std::fs::create_dir_all(&data)?;
            std::fs::write(&n.clock_file, "+0\n")?;
            let mut toml = format!(
                "[node]\nname = \"{name}\"\ndatacenter = \"{dc}\"\ndata_dir = \"{data}\"\n\n\
                 [http]\nlisten = \"{http}\"\n\n[log]\nlevel = \"info\"\n\n\
                 [quic]\nlisten = \"{quic}\"\nca = \"{ca}\"\ncert = \"{cert}\"\nkey = \"{key}\"\n\n\
                 [replication]\nforward_delay_ms = 500\n",
                name = n.name,
                dc = n.datacenter(),
                data = data.display(),
                http = n.http(),
                quic = n.quic(),
                ca = certs.join("ca.pem").display(),
                cert = certs.join(format!("{}.pem", n.name)).display(),
                key = certs.join(format!("{}.key", n.name)).display(),
            );
            for p in self.nodes.iter().filter(|p| p.index != n.index) {
                toml.push_str(&format!(
                    "\n[[peers]]\nname = \"{}\"\ndatacenter = \"{}\"\naddress = \"{}\"\n",
                    p.name,
                    p.datacenter(),
                    relay_addr(n, p)
                ));
            }
            std::fs::write(&n.config, toml)?;
        }
        Ok(())
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in self.created.iter().rev() {
            netns::destroy(ns);
        }
    }
}

/// A command to start, and where its child goes.
type SpawnJob = (Command, std::sync::mpsc::Sender<std::io::Result<Child>>);

/// Starts node processes from one thread that lives as long as [`Procs`].
///
/// Nodes ask for `PR_SET_PDEATHSIG`, which fires when the *thread* that
/// forked them ends, not the process. A node started from a thread of Tokio's
/// blocking pool (the nemesis restarts nodes from one) was SIGKILLed when
/// that thread retired after ten idle seconds; a thread of our own ends only
/// with the harness.
struct Spawner {
    jobs: Mutex<Option<std::sync::mpsc::Sender<SpawnJob>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Spawner {
    fn new() -> Spawner {
        let (tx, rx) = std::sync::mpsc::channel::<SpawnJob>();
        let thread = std::thread::Builder::new()
            .name("dkj-spawner".into())
            .spawn(move || {
                // Ends when the sender is dropped.
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .ok();
        Spawner {
            jobs: Mutex::new(Some(tx)),
            thread: Mutex::new(thread),
        }
    }

    fn spawn(&self, cmd: Command) -> std::io::Result<Child> {
        let (reply, answer) = std::sync::mpsc::channel();
        let gone = || std::io::Error::other("the spawner thread has stopped");
        {
            let jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
            let Some(jobs) = jobs.as_ref() else {
                return Err(gone());
            };
            jobs.send((cmd, reply)).map_err(|_| gone())?;
        }
        answer.recv().map_err(|_| gone())?
    }

    fn stop(&self) {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = t.join();
        }
    }
}

/// The node processes. Dropping it kills them all.
pub struct Procs {
    spec: Spec,
    nodes: Vec<NodeDef>,
    children: Mutex<Vec<Option<Child>>>,
    spawner: Spawner,
}

impl Procs {
    pub fn new(spec: &Spec, nodes: &[NodeDef]) -> Procs {
        Procs {
            spec: spec.clone(),
            nodes: nodes.to_vec(),
            children: Mutex::new(nodes.iter().map(|_| None).collect()),
            spawner: Spawner::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Option<Child>>> {
        self.children.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts node `i` in its namespace (no-op if it runs).
    pub fn start(&self, i: usize) -> Result<()> {
        let mut children = self.lock();
        if let Some(c) = children[i].as_mut() {
            if c.try_wait()?.is_none() {
                return Ok(());
            }
        }
        let n = &self.nodes[i];
        let ns: OwnedFd = std::fs::File::open(format!("/run/netns/{}", n.namespace))
            .with_context(|| format!("open namespace {}", n.namespace))?
            .into();
        let log = OpenOptions::new().create(true).append(true).open(&n.log)?;
        let mut cmd = match &self.spec.faulty {
            Some((bin, fault)) => {
                let mut c = Command::new(bin);
                c.args(["--fault", fault, "-c"]).arg(&n.config);
                c
            }
            None => {
                let mut c = Command::new(&self.spec.dotkv);
                c.args(["serve", "-c"]).arg(&n.config);
                c
            }
        };
        if self.spec.faketime {
            cmd.env("LD_PRELOAD", LIBFAKETIME)
                .env("FAKETIME_TIMESTAMP_FILE", &n.clock_file)
                .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
                .env("FAKETIME_CACHE_DURATION", "1");
        }
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0);
        let fd = ns.as_raw_fd();
        // SAFETY: between fork and exec only async-signal-safe calls (setns,
        // prctl), on a descriptor opened before the fork.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // Dies with the harness, even after a SIGKILL of the harness.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = self
            .spawner
            .spawn(cmd)
            .with_context(|| format!("start {} ({})", n.name, self.spec.dotkv.display()))?;
        drop(ns);
        children[i] = Some(child);
        Ok(())
    }

    /// SIGKILL, then reap.
    pub fn kill(&self, i: usize) {
        if let Some(mut c) = self.lock()[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn signal(&self, i: usize, sig: libc::c_int) {
        if let Some(c) = self.lock()[i].as_ref() {
            unsafe { libc::kill(c.id() as i32, sig) };
        }
    }

    pub fn is_running(&self, i: usize) -> bool {
        self.lock()[i].is_some()
    }

    /// Kills every node.
    pub fn kill_all(&self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }

    /// Sets node `i`'s clock offset in seconds (libfaketime re-reads the file
    /// at least once a second).
    pub fn set_clock(&self, i: usize, offset_s: i64) -> Result<()> {
        let s = if offset_s >= 0 {
            format!("+{offset_s}\n")
        } else {
            format!("{offset_s}\n")
        };
        std::fs::write(&self.nodes[i].clock_file, s)?;
        Ok(())
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        self.kill_all();
        self.spawner.stop();
    }
}

/// One relay per ordered pair of nodes, with the conditions each link has
/// when healthy.
pub struct Relays {
    pub links: BTreeMap<(usize, usize), (RelayHandle, LinkConditions)>,
}

impl Relays {
    /// Starts every relay. Must run on a thread inside the hub namespace.
    pub async fn start(spec: &Spec, nodes: &[NodeDef]) -> Result<Relays> {
        let mut links = BTreeMap::new();
        for a in nodes {
            for b in nodes.iter().filter(|b| b.index != a.index) {
                let cond = if a.dc == b.dc {
                    LinkConditions::default()
                } else {
                    spec.wan.clone()
                };
                let mut cfg = dotkv_netsim::RelayConfig::new(relay_addr(a, b), b.quic())
                    .with_conditions(cond.clone())
                    .with_seed(spec.seed ^ ((a.index as u64) << 32 | b.index as u64));
                cfg.session_idle_timeout = Duration::from_secs(600);
                let relay = dotkv_netsim::UdpRelay::start(cfg)
                    .await
                    .with_context(|| format!("relay {} -> {}", a.name, b.name))?;
                links.insert((a.index, b.index), (relay.into_handle(), cond));
            }
        }
        Ok(Relays { links })
    }

    /// Cuts every link between two nodes `connected` says may not talk, and
    /// heals every other link.
    pub fn partition(&self, connected: impl Fn(usize, usize) -> bool) {
        for ((a, b), (h, _)) in &self.links {
            if connected(*a, *b) && connected(*b, *a) {
                h.heal();
            } else {
                h.partition();
            }
        }
    }

    /// Sets the loss probability of the chosen links, or restores their base
    /// conditions with `None`. Keeps each link's partition state.
    pub fn set_loss(&self, chosen: impl Fn(usize, usize) -> bool, loss: Option<f64>) {
        for ((a, b), (h, base)) in &self.links {
            if !chosen(*a, *b) {
                continue;
            }
            for dir in Direction::BOTH {
                let partitioned = h.conditions(dir).partitioned;
                let mut c = base.clone();
                if let Some(l) = loss {
                    c.loss = l;
                }
                c.partitioned = partitioned;
                let _ = h.set_conditions(dir, c);
            }
        }
    }

    /// Heals every partition and restores every link's base conditions.
    pub fn heal_all(&self) {
        self.set_loss(|_, _| true, None);
        for (h, _) in self.links.values() {
            h.heal();
        }
    }

    pub async fn shutdown(&self) {
        for (h, _) in self.links.values() {
            h.shutdown().await;
        }
    }
}

/// Polls `url/health` until it answers, up to `deadline`.
pub async fn wait_healthy(client: &dotkv_client::Client, deadline: Duration) -> Result<()> {
    let start = Instant::now();
    loop {
        if client.health().await.is_ok() {
            return Ok(());
        }
        if start.elapsed() > deadline {
            bail!("{} not healthy after {deadline:?}", client.base_url());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A scratch directory under /tmp named after the run, removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn create(id: &str) -> Result<Scratch> {
        let p = std::env::temp_dir().join(id);
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p)?;
        Ok(Scratch(p))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The local backend as the nemesis sees it: node processes and relays.
pub struct Local {
    pub procs: Arc<Procs>,
    pub relays: Arc<Relays>,
}

impl crate::nemesis::Cluster for Local {
    fn partition(&self, connected: &dyn Fn(usize, usize) -> bool) -> Result<()> {
        self.relays.partition(connected);
        Ok(())
    }

    fn set_loss(&self, loss: Option<f64>) -> Result<()> {
        self.relays.set_loss(|_, _| true, loss);
        Ok(())
    }

    fn heal_links(&self) -> Result<()> {
        self.relays.heal_all();
        Ok(())
    }

    fn kill(&self, i: usize) -> Result<()> {
        self.procs.kill(i);
        Ok(())
    }

    fn start(&self, i: usize) -> Result<()> {
        self.procs.start(i)
    }

    fn pause(&self, i: usize) -> Result<()> {
        self.procs.signal(i, libc::SIGSTOP);
        Ok(())
    }

    fn resume(&self, i: usize) -> Result<()> {
        self.procs.signal(i, libc::SIGCONT);
        Ok(())
    }

    fn is_running(&self, i: usize) -> bool {
        self.procs.is_running(i)
    }

    fn set_clock(&self, i: usize, offset_s: i64) -> Result<()> {
        self.procs.set_clock(i, offset_s)
    }
}

#[cfg(test)]
mod spawner_tests {
    use super::*;

    /// A node restarted by the nemesis from a short-lived thread must not die
    /// when that thread ends (its `PR_SET_PDEATHSIG` follows the thread that
    /// forked it).
    #[test]
    fn a_child_outlives_the_thread_that_asked_for_it() {
        let spawner = Arc::new(Spawner::new());
        let s = spawner.clone();
        let mut child = std::thread::spawn(move || {
            let mut cmd = Command::new("sleep");
            cmd.arg("30");
            // SAFETY: only prctl between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
            s.spawn(cmd).expect("spawn sleep")
        })
        .join()
        .expect("the asking thread");
        // The asking thread has ended; give a death signal time to land.
        std::thread::sleep(Duration::from_millis(500));
        let status = child.try_wait().expect("try_wait");
        let _ = child.kill();
        let _ = child.wait();
        assert!(
            status.is_none(),
            "the child died with the thread that asked for it: {status:?}"
        );
        spawner.stop();
    }
}
