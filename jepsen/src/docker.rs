//! The Docker backend: the Compose cluster of the repository's
//! `docker-compose.yml` (three datacenters of two nodes, WAN relays between
//! them), started as its own Compose project.
//!
//! - Every node's HTTP port is published on a free 127.0.0.1 port the
//!   harness picks (the `DOTKV_PORT_<NODE>` variables), fixed for the whole
//!   run, so a restarted container answers where it did.
//! - `partition-dc` stops the WAN relay containers to and from a datacenter
//!   (as `docker/wan.sh partition N` does); the heal starts every relay.
//!   Nodes of one datacenter talk directly, so no other shape is possible.
//! - `kill` is `docker kill -s SIGKILL`, undone by `docker start`; `pause` is
//!   `docker pause`, undone by `docker unpause`.
//! - [`Project`] runs `down -v` when dropped (success, error, panic, and the
//!   orderly return after SIGINT/SIGTERM), after saving each node's log.

use crate::nemesis::{Cluster, Member};
use anyhow::{bail, Context, Result};
use std::collections::BTreeSet;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

/// The nodes of `docker-compose.yml`, in the harness's order.
pub const NODES: [&str; 6] = ["dc1-n1", "dc1-n2", "dc2-n1", "dc2-n2", "dc3-n1", "dc3-n2"];
pub const IMAGE: &str = "dotkv:latest";

/// The Compose command for one project and file.
pub struct Compose {
    base: Vec<String>,
    dir: PathBuf,
    env: Vec<(String, String)>,
    pub project: String,
    /// The host port of each node's HTTP API, in [`NODES`] order.
    pub ports: Vec<u16>,
}

/// `docker-compose.yml` in the working directory or one of its parents.
fn find_compose_file() -> Result<PathBuf> {
    let cwd = std::env::current_dir()?;
    for d in cwd.ancestors() {
        let f = d.join("docker-compose.yml");
        if f.is_file() {
            return Ok(f);
        }
    }
    bail!(
        "no docker-compose.yml in {} or its parents (run from the repository, or pass --compose-file)",
        cwd.display()
    )
}

/// `docker compose` if the Docker CLI has it, else `docker-compose`; or
/// what $COMPOSE says.
fn compose_command() -> Vec<String> {
    if let Ok(c) = std::env::var("COMPOSE") {
        let words: Vec<String> = c.split_whitespace().map(String::from).collect();
        if !words.is_empty() {
            return words;
        }
    }
    let v2 = Command::new("docker")
        .args(["compose", "version"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if v2 {
        vec!["docker".into(), "compose".into()]
    } else {
        vec!["docker-compose".into()]
    }
}

/// The project name Compose gives a directory by default (what a plain
/// `docker compose up` there uses).
fn default_project(dir: &Path) -> String {
    dir.file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect()
}

/// Six free ports on 127.0.0.1 (all held until all are chosen).
fn free_ports(n: usize) -> Result<Vec<u16>> {
    let held: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<_>>()
        .context("pick free ports")?;
    held.iter().map(|l| Ok(l.local_addr()?.port())).collect()
}

/// Runs a command; its stdout, or an error with its stderr.
fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{:?} exited {}: {}",
            cmd,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

impl Compose {
    pub fn new(project: &str, file: Option<&Path>) -> Result<Compose> {
        let file = match file {
            Some(f) => f.to_path_buf(),
            None => find_compose_file()?,
        };
        let file = file
            .canonicalize()
            .with_context(|| format!("compose file {}", file.display()))?;
        let dir = file.parent().unwrap_or(Path::new("/")).to_path_buf();
        if project.is_empty() || project == default_project(&dir) {
            bail!(
                "--compose-project {project:?} is the default project of {}: pick another name, \
                 the harness removes its project's containers and volumes",
                dir.display()
            );
        }
        let mut base = compose_command();
        base.extend(["-p".into(), project.into(), "-f".into()]);
        base.push(file.to_string_lossy().into_owned());
        let ports = free_ports(NODES.len())?;
        let mut env = vec![("COMPOSE_PROJECT_NAME".to_string(), project.to_string())];
        for (n, p) in NODES.iter().zip(&ports) {
            env.push((
                format!("DOTKV_PORT_{}", n.to_uppercase().replace('-', "_")),
                p.to_string(),
            ));
        }
        Ok(Compose {
            base,
            dir,
            env,
            project: project.to_string(),
            ports,
        })
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.base[0]);
        c.args(&self.base[1..])
            .args(args)
            .current_dir(&self.dir)
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        c
    }

    /// `compose ARGS`; its stdout.
    pub fn run(&self, args: &[&str]) -> Result<String> {
        output(&mut self.command(args))
    }

    /// The WAN relay services.
    pub fn relays(&self) -> Result<Vec<String>> {
        Ok(self
            .run(&["config", "--services"])?
            .lines()
            .filter(|l| l.starts_with("wan-"))
            .map(String::from)
            .collect())
    }

    /// The container id of a service.
    pub fn container(&self, service: &str) -> Result<String> {
        let id = self.run(&["ps", "-q", service])?;
        if id.is_empty() {
            bail!("no container for {service} in project {}", self.project);
        }
        Ok(id)
    }

    /// Removes the project's containers, networks and volumes.
    pub fn down(&self) -> Result<()> {
        self.run(&["down", "-v", "--remove-orphans", "-t", "2"])
            .map(|_| ())
    }
}

/// A started project: `down -v` on drop, after saving the node logs.
pub struct Project {
    pub compose: Arc<Compose>,
    logs: PathBuf,
}

impl Project {
    /// Checks the image and removes leftovers of an earlier run of the same
    /// project (its containers and volumes). Start it with `compose up -d`.
    pub fn new(compose: Compose, logs: &Path) -> Result<Project> {
        if output(Command::new("docker").args(["image", "inspect", IMAGE])).is_err() {
            bail!("no image {IMAGE}: run `make image` first");
        }
        compose
            .down()
            .context("removing leftovers of the project")?;
        Ok(Project {
            compose: Arc::new(compose),
            logs: logs.to_path_buf(),
        })
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        for n in NODES {
            if let Ok(log) = self.compose.run(&["logs", "--no-color", "--timestamps", n]) {
                let _ = std::fs::write(self.logs.join(format!("{n}.log")), log + "\n");
            }
        }
        match self.compose.down() {
            Ok(()) => eprintln!(
                "dotkv-jepsen: compose project {} removed (down -v)",
                self.compose.project
            ),
            Err(e) => eprintln!("dotkv-jepsen: down -v failed: {e:#}"),
        }
    }
}

#[derive(Default)]
struct State {
    killed: BTreeSet<usize>,
    paused: BTreeSet<usize>,
    stopped_relays: BTreeSet<String>,
}

/// The Compose cluster as the nemesis sees it.
pub struct Docker {
    compose: Arc<Compose>,
    members: Vec<Member>,
    containers: Vec<String>,
    /// Each relay service with the datacenter it serves and the node it
    /// reaches: `wan-dcA-to-dcB-nK` = (A, index of dcB-nK).
    relays: Vec<(String, usize, usize)>,
    state: Mutex<State>,
}

/// The members of `docker-compose.yml`.
pub fn members() -> Vec<Member> {
    NODES
        .iter()
        .map(|n| Member {
            name: n.to_string(),
            dc: n[2..3].parse().unwrap_or(0),
        })
        .collect()
}

impl Docker {
    pub fn new(compose: Arc<Compose>) -> Result<Docker> {
        let members = members();
        let containers = NODES
            .iter()
            .map(|n| compose.container(n))
            .collect::<Result<Vec<_>>>()?;
        let mut relays = Vec::new();
        for r in compose.relays()? {
            let parsed = r
                .strip_prefix("wan-dc")
                .and_then(|s| s.split_once("-to-"))
                .and_then(|(a, node)| {
                    Some((
                        a.parse::<usize>().ok()?,
                        NODES.iter().position(|n| *n == node)?,
                    ))
                });
            match parsed {
                Some((dc, to)) => relays.push((r, dc, to)),
                None => bail!("relay service {r:?}: expected wan-dcA-to-dcB-nK"),
            }
        }
        if relays.is_empty() {
            bail!("the compose file has no wan-* relay services");
        }
        Ok(Docker {
            compose,
            members,
            containers,
            relays,
            state: Mutex::new(State::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn docker(&self, args: &[&str]) -> Result<()> {
        output(Command::new("docker").args(args)).map(|_| ())
    }
}

impl Cluster for Docker {
    fn partition(&self, connected: &dyn Fn(usize, usize) -> bool) -> Result<()> {
        let n = self.members.len();
        let both = |a: usize, b: usize| connected(a, b) && connected(b, a);
        for a in 0..n {
            for b in 0..n {
                if a != b && self.members[a].dc == self.members[b].dc && !both(a, b) {
                    bail!(
                        "the docker backend cannot cut {} from {} (same datacenter)",
                        self.members[a].name,
                        self.members[b].name
                    );
                }
            }
        }
        let mut st = self.lock();
        let (mut stop, mut start) = (Vec::new(), Vec::new());
        for (relay, dc, to) in &self.relays {
            let cut = (0..n).any(|a| self.members[a].dc == *dc && !both(a, *to));
            let stopped = st.stopped_relays.contains(relay);
            if cut && !stopped {
                stop.push(relay.as_str());
            } else if !cut && stopped {
                start.push(relay.as_str());
            }
        }
        if !stop.is_empty() {
            let mut args = vec!["stop", "-t", "2"];
            args.extend(&stop);
            self.compose.run(&args)?;
            st.stopped_relays.extend(stop.iter().map(|s| s.to_string()));
        }
        if !start.is_empty() {
            let mut args = vec!["start"];
            args.extend(&start);
            self.compose.run(&args)?;
            for s in start {
                st.stopped_relays.remove(s);
            }
        }
        Ok(())
    }

    fn set_loss(&self, _loss: Option<f64>) -> Result<()> {
        bail!("the docker backend has no packet loss")
    }

    fn heal_links(&self) -> Result<()> {
        let mut st = self.lock();
        let mut args = vec!["start"];
        args.extend(self.relays.iter().map(|r| r.0.as_str()));
        self.compose.run(&args)?;
        st.stopped_relays.clear();
        Ok(())
    }

    fn kill(&self, i: usize) -> Result<()> {
        self.docker(&["kill", "-s", "SIGKILL", &self.containers[i]])?;
        self.lock().killed.insert(i);
        Ok(())
    }

    fn start(&self, i: usize) -> Result<()> {
        self.docker(&["start", &self.containers[i]])?;
        self.lock().killed.remove(&i);
        Ok(())
    }

    fn pause(&self, i: usize) -> Result<()> {
        self.docker(&["pause", &self.containers[i]])?;
        self.lock().paused.insert(i);
        Ok(())
    }

    fn resume(&self, i: usize) -> Result<()> {
        if self.lock().paused.contains(&i) {
            self.docker(&["unpause", &self.containers[i]])?;
            self.lock().paused.remove(&i);
        }
        Ok(())
    }

    fn is_running(&self, i: usize) -> bool {
        let st = self.lock();
        !st.killed.contains(&i) && !st.paused.contains(&i)
    }

    fn set_clock(&self, _i: usize, offset_s: i64) -> Result<()> {
        if offset_s == 0 {
            return Ok(());
        }
        bail!("the docker backend cannot change a node's clock")
    }
}

#[cfg(test)]
mod tests {
    use crate::nemesis::{parse_docker, Fault};

    #[test]
    fn docker_nemeses() {
        assert_eq!(
            parse_docker("partition,kill,pause").unwrap(),
            vec![Fault::PartitionDc, Fault::Kill, Fault::Pause]
        );
        assert!(parse_docker("none").unwrap().is_empty());
        for refused in ["clock", "loss", "partition-ring", "all", "bogus"] {
            assert!(parse_docker(refused).is_err(), "{refused}");
        }
        let m = super::members();
        assert_eq!(
            m.iter().map(|m| m.dc).collect::<Vec<_>>(),
            [1, 1, 2, 2, 3, 3]
        );
    }
}
