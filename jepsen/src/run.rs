//! One test, start to end: build the cluster, run clients and nemesis for the
//! time limit, heal, wait for convergence, read every node, check, write the
//! store directory, tear everything down.
//!
//! Threads and namespaces: the namespaces are created from the main thread
//! while it is the only thread; then the main thread enters the hub namespace
//! and only then builds the Tokio runtime, so every thread (relays, HTTP
//! clients) lives in the hub. Node processes enter their own namespace
//! between fork and exec.

use crate::checker;
use crate::cluster::{self, Local, Net, Procs, Relays, Scratch, Spec};
use crate::docker::{self, Compose, Docker, Project};
use crate::history::{self, Op, OpType, Process, Recorder};
use crate::nemesis::{self, Cluster, Ctl, Member};
use crate::netns;
use crate::plot;
use crate::workload::{self, Shared, Target, Workload};
use anyhow::{anyhow, bail, Context, Result};
use dotkv_client::{Client, ReadOptions};
use dotkv_netsim::LinkConditions;
use serde::Serialize;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Everything `dotkv-jepsen test` takes.
#[derive(Clone, Debug, Serialize)]
pub struct TestOpts {
    pub workload: Workload,
    pub nemesis: String,
    pub time_limit_s: u64,
    pub datacenters: usize,
    pub nodes_per_dc: usize,
    pub seed: u64,
    /// Clients per node.
    pub concurrency: usize,
    /// Mean pause between one client's operations.
    pub stagger_ms: u64,
    pub store: PathBuf,
    pub dotkv: PathBuf,
    /// `dotkv-faulty` and the fault it injects.
    pub faulty: Option<(PathBuf, String)>,
    pub wan_delay_ms: u64,
    pub wan_jitter_ms: u64,
    pub convergence_deadline_s: u64,
    /// Clients carry the join of their tokens, not the latest one.
    pub join_tokens: bool,
    /// Where the nodes run.
    pub backend: Backend,
    /// The Compose project of the docker backend.
    pub compose_project: String,
    /// The compose file of the docker backend (default: `docker-compose.yml`
    /// in the working directory or a parent).
    pub compose_file: Option<PathBuf>,
}

/// Where the nodes run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    /// Processes in network namespaces, joined by the harness's relays (root).
    Local,
    /// The Compose cluster of docker-compose.yml, as its own project.
    Docker,
}

/// What a finished test reports.
pub struct Verdict {
    pub valid: bool,
    pub dir: PathBuf,
    pub results: Value,
}

/// `YYYYMMDDTHHMMSS` (UTC) for directory names.
fn timestamp() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Removes the namespaces and scratch directories of dead runs.
fn sweep() {
    let removed = netns::sweep_stale();
    if !removed.is_empty() {
        eprintln!(
            "dotkv-jepsen: removed stale namespaces {}",
            removed.join(", ")
        );
    }
    if let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(pid) = name.strip_prefix(netns::PREFIX) else {
                continue;
            };
            if pid.parse::<u32>().is_ok() && !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// Runs one test. Call from the main thread before any other thread exists.
pub fn run_test(opts: &TestOpts) -> Result<Verdict> {
    let faults = match opts.backend {
        Backend::Local => nemesis::parse(&opts.nemesis)?,
        Backend::Docker => {
            if opts.datacenters != 3 || opts.nodes_per_dc != 2 || opts.faulty.is_some() {
                bail!("the docker backend runs docker-compose.yml as it is: 3 datacenters x 2 nodes, no --faulty");
            }
            nemesis::parse_docker(&opts.nemesis)?
        }
    };
    if opts.backend == Backend::Local && !opts.dotkv.exists() {
        bail!(
            "no dotkv binary at {} (build it, or pass --dotkv)",
            opts.dotkv.display()
        );
    }
    // The docker backend's settings are checked before anything is written.
    let compose = match opts.backend {
        Backend::Local => None,
        Backend::Docker => Some(Compose::new(
            &opts.compose_project,
            opts.compose_file.as_deref(),
        )?),
    };
    let mut dir = opts.store.join(opts.workload.name()).join(timestamp());
    if dir.exists() {
        // Two runs started in the same second.
        dir.set_file_name(format!("{}-{}", timestamp(), std::process::id()));
    }
    let nodes_dir = dir.join("nodes");
    std::fs::create_dir_all(&nodes_dir).with_context(|| format!("create {}", dir.display()))?;
    std::fs::write(dir.join("seed"), format!("{}\n", opts.seed))?;
    std::fs::write(dir.join("test.json"), serde_json::to_vec_pretty(opts)?)?;
    eprintln!("dotkv-jepsen: {} → {}", opts.workload.name(), dir.display());

    let recorder = Arc::new(Recorder::new(Instant::now()));
    let outcome = match opts.backend {
        Backend::Local => run_local(opts, &faults, &dir, &nodes_dir, &recorder)?,
        Backend::Docker => match compose {
            Some(compose) => run_docker(compose, opts, &faults, &dir, &nodes_dir, &recorder),
            None => Err(anyhow!("no compose project")),
        },
    };

    let history = recorder.snapshot();
    history::write_jsonl(&dir.join("history.jsonl"), &history)?;
    let (valid, reports) = checker::check_all(opts.workload, &history);
    let convergence_figure = |name: &str| {
        reports
            .get("convergence")
            .and_then(|r| r.figures.get(name).cloned())
            .unwrap_or(Value::Null)
    };
    let convergence_ms = convergence_figure("time_ms");
    let since_fault_ms = convergence_figure("since_last_fault_ms");
    let error = outcome.as_ref().err().map(|e| format!("{e:#}"));
    let valid = valid && error.is_none();
    let results = json!({
        "valid": valid,
        "workload": opts.workload.name(),
        "nemesis": faults.iter().map(|f| f.name()).collect::<Vec<_>>(),
        "seed": opts.seed,
        "time_limit_s": opts.time_limit_s,
        "datacenters": opts.datacenters,
        "nodes_per_dc": opts.nodes_per_dc,
        "faulty": opts.faulty.as_ref().map(|f| &f.1),
        "convergence_time_ms": convergence_ms,
        "convergence_since_last_fault_ms": since_fault_ms,
        "error": error,
        "checkers": reports,
    });
    std::fs::write(
        dir.join("results.json"),
        serde_json::to_vec_pretty(&results)?,
    )?;
    if let Err(e) = plot::write_plots(&dir, &history) {
        eprintln!("dotkv-jepsen: plots: {e:#}");
    }
    if let Err(e) = outcome {
        eprintln!("dotkv-jepsen: the run failed: {e:#}");
    }
    Ok(Verdict {
        valid,
        dir,
        results,
    })
}

/// The local backend: namespaces, processes, relays. Errors before the run
/// starts are returned; the run's own outcome is the inner result.
fn run_local(
    opts: &TestOpts,
    faults: &[nemesis::Fault],
    dir: &Path,
    nodes_dir: &Path,
    recorder: &Arc<Recorder>,
) -> Result<Result<()>> {
    sweep();
    let id = format!("{}{}", netns::PREFIX, std::process::id());
    let scratch = Scratch::create(&id)?;
    let spec = Spec {
        datacenters: opts.datacenters,
        nodes_per_dc: opts.nodes_per_dc,
        dotkv: opts.dotkv.clone(),
        faulty: opts.faulty.clone(),
        faketime: faults.iter().any(|f| f.needs_faketime()),
        wan: LinkConditions {
            delay_ms: opts.wan_delay_ms,
            jitter_ms: opts.wan_jitter_ms,
            duplicate: 0.01,
            reorder: 0.01,
            ..LinkConditions::default()
        },
        seed: opts.seed,
        scratch: scratch.path().to_path_buf(),
        logs: nodes_dir.to_path_buf(),
    };
    let net = Net::create(&spec).context("creating the network namespaces")?;
    net.write_configs(&spec)?;
    let procs = Arc::new(Procs::new(&spec, &net.nodes));
    netns::enter(&net.hub)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("dotkv-jepsen")
        .build()?;
    let outcome = runtime.block_on(async {
        let body = drive_local(
            opts,
            &spec,
            &net,
            procs.clone(),
            recorder.clone(),
            faults,
            dir,
        );
        tokio::select! {
            r = body => r,
            _ = interrupted() => Err(anyhow!("interrupted by a signal")),
        }
    });
    // Stop every task (relays, clients) before the guards kill the nodes and
    // delete the namespaces.
    runtime.shutdown_timeout(Duration::from_secs(5));
    procs.kill_all();
    drop(procs);
    drop(net);
    drop(scratch);
    Ok(outcome)
}

/// The docker backend: a Compose project of its own, removed at the end
/// (also on error and on SIGINT/SIGTERM).
fn run_docker(
    compose: Compose,
    opts: &TestOpts,
    faults: &[nemesis::Fault],
    dir: &Path,
    nodes_dir: &Path,
    recorder: &Arc<Recorder>,
) -> Result<()> {
    eprintln!(
        "dotkv-jepsen: compose project {} (HTTP on 127.0.0.1 ports {:?})",
        compose.project, compose.ports
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("dotkv-jepsen")
        .build()?;
    // Removes leftovers of an earlier run of this project; from here on,
    // dropping `project` saves the node logs and runs `down -v`.
    let project = Project::new(compose, nodes_dir)?;
    let compose = project.compose.clone();
    let mut up = runtime.spawn_blocking({
        let compose = compose.clone();
        move || compose.run(&["up", "-d"])
    });
    let outcome = runtime.block_on(async {
        let body = async {
            (&mut up)
                .await
                .map_err(|e| anyhow!("compose up: {e}"))?
                .context("starting the Compose cluster")?;
            let clients: Vec<Client> = compose
                .ports
                .iter()
                .map(|p| client_for(&format!("http://127.0.0.1:{p}")))
                .collect::<Result<_>>()?;
            for c in &clients {
                cluster::wait_healthy(c, Duration::from_secs(120)).await?;
            }
            wait_connected(&clients, Duration::from_secs(90)).await?;
            let cluster: Arc<dyn Cluster> = Arc::new(Docker::new(compose.clone())?);
            exercise(
                opts,
                docker::members(),
                clients,
                cluster,
                recorder.clone(),
                faults,
                dir,
            )
            .await
        };
        tokio::select! {
            r = body => r,
            _ = interrupted() => Err(anyhow!("interrupted by a signal")),
        }
    });
    if !up.is_finished() {
        // Interrupted during `up`: let it finish, so `down` removes it all.
        let _ = runtime.block_on(up);
    }
    runtime.shutdown_timeout(Duration::from_secs(5));
    drop(project);
    outcome
}

/// Completes on SIGINT or SIGTERM.
async fn interrupted() {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    eprintln!("dotkv-jepsen: signal received, cleaning up");
}

fn client_for(url: &str) -> Result<Client> {
    Ok(Client::builder(url)
        .timeout(Duration::from_secs(6))
        .connect_timeout(Duration::from_secs(2))
        .build()?)
}

/// Waits until every node reports every peer connected.
async fn wait_connected(clients: &[Client], deadline: Duration) -> Result<()> {
    let start = Instant::now();
    loop {
        let mut all = true;
        for c in clients {
            match c.status(&ReadOptions::default()).await {
                Ok(s) if s.value.peers.iter().all(|p| p.connected) => {}
                _ => {
                    all = false;
                    break;
                }
            }
        }
        if all {
            return Ok(());
        }
        if start.elapsed() > deadline {
            bail!("the nodes did not all connect to each other within {deadline:?}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits until every node has applied the same version vector. Returns the
/// time it took, or `None` past the deadline.
async fn wait_converged(clients: &[Client], deadline: Duration) -> Option<Duration> {
    let start = Instant::now();
    loop {
        let mut vvs = Vec::new();
        for c in clients {
            match c.status(&ReadOptions::default()).await {
                Ok(s) => vvs.push(s.value.version_vector),
                Err(_) => break,
            }
        }
        if vvs.len() == clients.len() && vvs.windows(2).all(|w| w[0] == w[1]) {
            return Some(start.elapsed());
        }
        if start.elapsed() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn drive_local(
    opts: &TestOpts,
    spec: &Spec,
    net: &Net,
    procs: Arc<Procs>,
    recorder: Arc<Recorder>,
    faults: &[nemesis::Fault],
    dir: &Path,
) -> Result<()> {
    let relays = Relays::start(spec, &net.nodes).await?;
    let clients: Vec<Client> = net
        .nodes
        .iter()
        .map(|n| client_for(&n.url()))
        .collect::<Result<_>>()?;
    for i in 0..net.nodes.len() {
        procs.start(i)?;
    }
    for c in &clients {
        cluster::wait_healthy(c, Duration::from_secs(90)).await?;
    }
    wait_connected(&clients, Duration::from_secs(90)).await?;
    let relays = Arc::new(relays);
    let members = net
        .nodes
        .iter()
        .map(|n| Member {
            name: n.name.clone(),
            dc: n.dc,
        })
        .collect();
    let cluster: Arc<dyn Cluster> = Arc::new(Local {
        procs,
        relays: relays.clone(),
    });
    let r = exercise(opts, members, clients, cluster, recorder, faults, dir).await;
    relays.shutdown().await;
    r
}

/// Clients and nemesis for the time limit, the heal, convergence and the
/// final reads, on any backend.
async fn exercise(
    opts: &TestOpts,
    members: Vec<Member>,
    clients: Vec<Client>,
    cluster: Arc<dyn Cluster>,
    recorder: Arc<Recorder>,
    faults: &[nemesis::Fault],
    dir: &Path,
) -> Result<()> {
    eprintln!(
        "dotkv-jepsen: {} nodes up and connected; running {} for {} s, nemesis {:?}",
        members.len(),
        opts.workload.name(),
        opts.time_limit_s,
        faults.iter().map(|f| f.name()).collect::<Vec<_>>()
    );

    let shared = Arc::new(Shared {
        workload: opts.workload,
        recorder: recorder.clone(),
        targets: members
            .iter()
            .zip(&clients)
            .map(|(n, c)| Target {
                name: n.name.clone(),
                client: c.clone(),
            })
            .collect(),
        next_value: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        stagger: Duration::from_millis(opts.stagger_ms),
        join_tokens: opts.join_tokens,
    });
    let log = std::fs::File::create(dir.join("nemesis.log"))?;
    let ctl = Arc::new(Ctl::new(
        members.clone(),
        cluster,
        clients.clone(),
        recorder.clone(),
        log,
    ));
    recorder.restart();
    let start = Instant::now();
    let until = start + Duration::from_secs(opts.time_limit_s);
    let n_clients = opts.concurrency.max(1) * members.len();
    let mut tasks = Vec::new();
    for slot in 0..n_clients {
        tasks.push(tokio::spawn(workload::client_loop(
            shared.clone(),
            slot,
            n_clients,
            opts.seed,
        )));
    }
    let nemesis = tokio::spawn(ctl.clone().run(faults.to_vec(), opts.seed, until));
    let progress = {
        let recorder = recorder.clone();
        let total = opts.time_limit_s;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                let (ok, fail, info) = recorder.counts();
                let last = recorder.last_nemesis();
                eprintln!(
                    "[{:>4}s/{total}s] ok {ok} fail {fail} info {info} | nemesis: {last}",
                    start.elapsed().as_secs()
                );
            }
        })
    };
    tokio::time::sleep_until(until.into()).await;
    shared.stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(30), t).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(90), nemesis).await;
    ctl.heal_all().await;
    let healed = Instant::now();
    let deadline = Duration::from_secs(opts.convergence_deadline_s);
    let took = wait_converged(&clients, deadline).await;
    // The clients stop (and the schedule ends) before the final heal, so a
    // cluster often converges before it: the time since the last fault
    // window ended says more about catching up.
    let since_fault = |now: Instant| {
        ctl.last_fault_end()
            .map(|t| now.duration_since(t).as_millis() as u64)
    };
    let value = match took {
        Some(d) => {
            json!({"converged": true, "time_ms": d.as_millis() as u64,
                   "since_last_fault_ms": since_fault(healed + d),
                   "deadline_ms": deadline.as_millis() as u64})
        }
        None => {
            json!({"converged": false, "time_ms": healed.elapsed().as_millis() as u64,
                   "since_last_fault_ms": since_fault(Instant::now()),
                   "deadline_ms": deadline.as_millis() as u64})
        }
    };
    ctl.note("converge", value);
    let first = 1_000_000;
    let failed = workload::final_reads(&shared, first).await;
    progress.abort();
    if failed > 0 {
        ctl.note(
            "error",
            json!(format!("{failed} node(s) failed their final read")),
        );
    }
    Ok(())
}

/// `dotkv-jepsen check DIR`: the checkers on a stored history.
pub fn check_dir(dir: &Path) -> Result<(bool, Value)> {
    let test: Value = serde_json::from_slice(
        &std::fs::read(dir.join("test.json"))
            .with_context(|| format!("read {}/test.json", dir.display()))?,
    )?;
    let name = test["workload"].as_str().unwrap_or_default();
    let workload = Workload::from_name(name)
        .ok_or_else(|| anyhow!("unknown workload {name:?} in test.json"))?;
    let history: Vec<Op> = history::read_jsonl(&dir.join("history.jsonl"))?;
    let (valid, reports) = checker::check_all(workload, &history);
    Ok((
        valid,
        json!({"valid": valid, "workload": name, "checkers": reports}),
    ))
}

/// A nemesis entry, for the plots.
pub fn is_nemesis(op: &Op) -> bool {
    op.process == Process::nemesis() && op.kind == OpType::Info
}
