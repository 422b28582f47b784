//! Linux network namespaces, through `ip` (iproute2), for one test run.
//!
//! Every name the harness creates starts with `dkj-<pid>-`, where `<pid>` is
//! the harness process. [`sweep_stale`] removes the namespaces (and kills the
//! processes inside them) of any earlier run whose process is gone, so a
//! crashed run leaves nothing behind for long, and two runs at once do not
//! touch each other's namespaces. Interfaces and bridges live only inside
//! those namespaces, so deleting a namespace deletes them too.

use anyhow::{bail, Context, Result};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Command;

/// The prefix of every namespace any run creates.
pub const PREFIX: &str = "dkj-";

/// Runs `ip ARGS`, failing with its stderr.
pub fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("cannot run `ip` (iproute2)")?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Names of the existing namespaces.
pub fn list() -> Vec<String> {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

/// PIDs of the processes in namespace `name`.
pub fn pids(name: &str) -> Vec<i32> {
    let Ok(out) = Command::new("ip").args(["netns", "pids", name]).output() else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Kills every process in namespace `name` and deletes it. Best effort.
pub fn destroy(name: &str) {
    for pid in pids(name) {
        if pid as u32 != std::process::id() {
            // SIGKILL also ends stopped (SIGSTOPped) processes.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    let _ = ip(&["netns", "del", name]);
}

/// Deletes the namespaces of earlier runs whose harness process is gone.
pub fn sweep_stale() -> Vec<String> {
    let mut removed = Vec::new();
    for name in list() {
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let owner: Option<u32> = rest.split('-').next().and_then(|p| p.parse().ok());
        let alive = owner.is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
        if !alive {
            destroy(&name);
            removed.push(name);
        }
    }
    removed
}

/// Moves the calling thread into namespace `name`. Threads it creates later
/// start there too.
pub fn enter(name: &str) -> Result<()> {
    let f = std::fs::File::open(format!("/run/netns/{name}"))
        .with_context(|| format!("cannot open namespace {name}"))?;
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        bail!(
            "setns into {name} failed: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// Checks that this process may create namespaces (root, iproute2, kernel
/// support), with the exact command and error if not.
pub fn probe() -> Result<()> {
    let name = format!("{PREFIX}{}-probe", std::process::id());
    ip(&["netns", "add", &name])?;
    let r = ip(&["-n", &name, "link", "set", "lo", "up"]);
    let _ = ip(&["netns", "del", &name]);
    r
}
