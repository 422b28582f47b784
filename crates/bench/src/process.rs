//! Servers under test run as child processes. [`Server`] owns one: it starts
//! it, waits (with a deadline) for the line that announces its address, and
//! makes sure it never outlives the benchmark.
//!
//! Three layers keep children from leaking: [`Server::stop`] on the normal
//! path (SIGTERM, then SIGKILL after a deadline); the `Drop` guard and tokio's
//! `kill_on_drop` when a benchmark fails or is interrupted; and
//! `PR_SET_PDEATHSIG` on Linux, which kills the child even if this process is
//! itself killed with SIGKILL and no destructor runs.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::time::{timeout, timeout_at, Instant};

/// How long a stopped server gets to exit on SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// A running server process.
pub struct Server {
    name: String,
    child: Child,
    pub addr: SocketAddr,
    pub pid: u32,
    log: Option<PathBuf>,
}

/// How to start a server.
pub struct Spawn<'a> {
    /// For messages: `hello`, `dotkv (wal)`.
    pub name: &'a str,
    pub program: &'a Path,
    pub args: Vec<OsString>,
    /// Its stdout line that announces readiness is this prefix then the
    /// address, e.g. `dotkv: listening on http://`. With `known_addr`, any
    /// stdout line that contains this text (e.g. Redis's `Ready to accept
    /// connections`).
    pub ready_prefix: &'a str,
    /// The address, when the server is told it rather than announcing it.
    pub known_addr: Option<SocketAddr>,
    /// Longest wait for that line.
    pub ready_within: Duration,
    /// Where its stderr goes; `None` inherits ours.
    pub log: Option<PathBuf>,
}

impl Server {
    pub async fn start(s: Spawn<'_>) -> Result<Server> {
        let mut cmd = Command::new(s.program);
        cmd.args(&s.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true);
        match &s.log {
            Some(path) => {
                let f = std::fs::File::create(path)
                    .with_context(|| format!("creating {}", path.display()))?;
                cmd.stderr(Stdio::from(f));
            }
            None => {
                cmd.stderr(Stdio::inherit());
            }
        }
        #[cfg(target_os = "linux")]
        // SAFETY: the closure runs in the forked child before exec and only
        // makes one async-signal-safe system call.
        unsafe {
            cmd.pre_exec(|| {
                // Die with the parent. (Strictly: with the thread that forked,
                // which is the runtime's main or worker thread; they live as
                // long as the benchmark.)
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {} ({})", s.name, s.program.display()))?;
        let pid = child
            .id()
            .ok_or_else(|| anyhow!("{} exited at once", s.name))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut server = Server {
            name: s.name.to_owned(),
            child,
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            pid,
            log: s.log,
        };
        let deadline = Instant::now() + s.ready_within;
        let ready = async {
            match s.known_addr {
                Some(addr) => wait_for_line(stdout, s.ready_prefix).await.map(|()| addr),
                None => wait_for_address(stdout, s.ready_prefix).await,
            }
        };
        match timeout_at(deadline, ready).await {
            Ok(Ok(addr)) => {
                server.addr = addr;
                Ok(server)
            }
            Ok(Err(e)) => {
                let status = timeout(Duration::from_secs(1), server.child.wait()).await;
                bail!(
                    "{} did not start: {e:#}{}{}",
                    s.name,
                    match status {
                        Ok(Ok(st)) => format!(" (it exited: {st})"),
                        _ => String::new(),
                    },
                    server.log_tail()
                )
            }
            Err(_) => bail!(
                "{} printed no `{}ADDR` line within {:?}{}",
                s.name,
                s.ready_prefix,
                s.ready_within,
                server.log_tail()
            ),
        }
    }

    /// The last lines of the server's log, for error messages.
    fn log_tail(&self) -> String {
        let Some(path) = &self.log else {
            return String::new();
        };
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(20)..].join("\n");
        if tail.is_empty() {
            String::new()
        } else {
            format!("\nlast lines of {}:\n{tail}", path.display())
        }
    }

    /// Ask the server to stop (SIGTERM) and wait for it; kill it if it does
    /// not exit within a grace period.
    pub async fn stop(mut self) -> Result<ExitStatus> {
        if let Ok(Some(st)) = self.child.try_wait() {
            bail!("{} had already exited: {st}{}", self.name, self.log_tail());
        }
        // SAFETY: plain kill(2) on our own child, which has not been reaped
        // yet (try_wait above saw it running), so the pid is still ours.
        unsafe {
            libc::kill(self.pid as libc::pid_t, libc::SIGTERM);
        }
        match timeout(STOP_GRACE, self.child.wait()).await {
            Ok(st) => Ok(st?),
            Err(_) => {
                eprintln!(
                    "{} did not exit within {STOP_GRACE:?} of SIGTERM; killing it",
                    self.name
                );
                self.child.kill().await?;
                Ok(self.child.wait().await?)
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // After `stop` the child is reaped and this does nothing; on an error
        // path it kills the child at once (kill_on_drop would too; this makes
        // the intent explicit and does not depend on that flag).
        let _ = self.child.start_kill();
    }
}

/// Read stdout until the announce line, then keep draining it in the
/// background so the server never blocks (or fails) writing to a full pipe.
async fn wait_for_address(
    stdout: impl AsyncRead + Unpin + Send + 'static,
    prefix: &str,
) -> Result<SocketAddr> {
    let mut lines = BufReader::new(stdout).lines();
    while let Some(line) = lines.next_line().await? {
        if let Some(rest) = line.trim().strip_prefix(prefix) {
            let addr: SocketAddr = rest
                .trim()
                .trim_end_matches('/')
                .parse()
                .with_context(|| format!("parsing the address in {line:?}"))?;
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            return Ok(addr);
        }
    }
    bail!("its stdout closed before it printed `{prefix}ADDR`")
}

/// Read stdout until a line contains `text`, then keep draining it.
async fn wait_for_line(stdout: impl AsyncRead + Unpin + Send + 'static, text: &str) -> Result<()> {
    let mut lines = BufReader::new(stdout).lines();
    while let Some(line) = lines.next_line().await? {
        if line.contains(text) {
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            return Ok(());
        }
    }
    bail!("its stdout closed before it printed a line with `{text}`")
}
