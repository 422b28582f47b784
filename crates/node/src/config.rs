//! Node configuration: TOML, every option with a default, and `DOTKV_*`
//! environment overrides (`DOTKV_<SECTION>_<OPTION>`, e.g. `DOTKV_HTTP_LISTEN`,
//! `DOTKV_STORAGE_DURABILITY`, `DOTKV_AUTH_TOKENS=a,b`).
//!
//! With no file, the embedded default applies: one node, data in
//! `./dotkv-data`, HTTP on 127.0.0.1:7700. `config/single.toml` spells out every
//! option with its default (a test checks that it parses to [`Config::default`]).

use dotkv_api::Limits;
use dotkv_storage::Durability;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config{}: {message}", .path.as_ref().map(|p| format!(" in {}", p.display())).unwrap_or_default())]
    Invalid {
        path: Option<PathBuf>,
        message: String,
    },
    #[error("invalid value for {var}: {message}")]
    Env { var: String, message: String },
    #[error("unknown variable {var}: {message}")]
    UnknownEnv { var: String, message: String },
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub node: NodeSection,
    pub http: HttpSection,
    pub storage: StorageSection,
    pub limits: Limits,
    pub auth: AuthSection,
    pub consistency: ConsistencySection,
    pub log: LogSection,
    pub quic: QuicSection,
    pub replication: ReplicationSection,
    /// The other nodes of the cluster, every one a full replica. Empty: a
    /// single node.
    pub peers: Vec<PeerConfig>,
}

/// The QUIC endpoint: one UDP port for peers (mutual TLS) and QUIC API
/// clients, told apart by ALPN. Off unless `cert`, `key` and `ca` are set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QuicSection {
    pub listen: SocketAddr,
    /// The cluster CA certificate (PEM), from `dotkv certs init`.
    pub ca: String,
    /// This node's certificate and key (PEM), from `dotkv certs node`.
    pub cert: String,
    pub key: String,
    /// Most QUIC API client connections open at once; one more is closed at
    /// once, with the reason. Peers are not counted.
    pub max_client_connections: usize,
}

impl Default for QuicSection {
    fn default() -> Self {
        QuicSection {
            listen: SocketAddr::from(([127, 0, 0, 1], dotkv_api::DEFAULT_HTTP_PORT + 1)),
            ca: String::new(),
            cert: String::new(),
            key: String::new(),
            max_client_connections: 4096,
        }
    }
}

impl QuicSection {
    pub fn enabled(&self) -> bool {
        !self.cert.is_empty() || !self.key.is_empty() || !self.ca.is_empty()
    }
}

/// How delta groups travel between nodes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReplicationSection {
    /// A group received from another node is forwarded to a peer only if that
    /// peer has not acknowledged it this long after it was written (so a
    /// cut link is bridged, and a healthy mesh carries each group once).
    pub forward_delay_ms: u64,
    /// Most often a receiver acknowledges, in milliseconds; it also
    /// acknowledges at least this often while idle (a heartbeat).
    pub ack_interval_ms: u64,
    /// Most groups and bytes in one frame.
    pub batch_max_groups: usize,
    pub batch_max_bytes: usize,
    /// Most groups sent to a peer and not yet acknowledged.
    pub window_groups: u64,
    /// Groups received ahead of their dependencies and held until those
    /// arrive; beyond this they are dropped and sent again later.
    pub causal_buffer_groups: usize,
    pub causal_buffer_bytes: usize,
    /// The delta log keeps groups until every peer has them, but never more
    /// than this many sequence numbers per origin, nor older than
    /// `log_max_age_secs`, nor (in total) more than `log_max_bytes`. A peer
    /// that falls behind these limits catches up by anti-entropy.
    pub log_max_seqs: u64,
    pub log_max_bytes: u64,
    pub log_max_age_secs: u64,
    /// Pause between attempts to reach a peer that is down, in milliseconds.
    pub reconnect_ms: u64,
}

impl Default for ReplicationSection {
    fn default() -> Self {
        ReplicationSection {
            forward_delay_ms: 500,
            ack_interval_ms: 10,
            batch_max_groups: 512,
            batch_max_bytes: 1 << 20,
            window_groups: 16_384,
            causal_buffer_groups: 65_536,
            causal_buffer_bytes: 64 << 20,
            log_max_seqs: 10_000_000,
            log_max_bytes: 1 << 30,
            log_max_age_secs: 7 * 24 * 3600,
            reconnect_ms: 500,
        }
    }
}

/// Another node: its name (the common name of its certificate), datacenter,
/// and the QUIC address this node reaches it at.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    pub name: String,
    pub datacenter: String,
    /// host:port of the peer's `quic.listen` (or of a relay in front of it).
    pub address: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeSection {
    pub name: String,
    pub datacenter: String,
    pub data_dir: PathBuf,
}

impl Default for NodeSection {
    fn default() -> Self {
        NodeSection {
            name: "node1".into(),
            datacenter: "dc1".into(),
            data_dir: PathBuf::from("./dotkv-data"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSection {
    pub listen: SocketAddr,
    /// Most requests handled at once; more wait for a slot (within their
    /// request timeout).
    pub max_in_flight: usize,
    /// How long a request waits for an in-flight slot before it is refused
    /// with 503, in milliseconds.
    pub queue_timeout_ms: u64,
    /// Longest a request may take end to end, in milliseconds.
    pub request_timeout_ms: u64,
    /// How long a graceful shutdown waits for requests in flight, in milliseconds.
    pub shutdown_grace_ms: u64,
    /// Most HTTP connections open at once; one more is answered with 503 and
    /// closed.
    pub max_connections: usize,
    /// Longest an HTTP/1 connection may take to send a request's headers,
    /// idle time before them included, in milliseconds. HTTP/2 connections
    /// are pinged at this interval.
    pub header_timeout_ms: u64,
    /// Serve plain HTTP/1.1 requests (a `Content-Length` body of at most
    /// 64 KiB, no `Expect` or `Upgrade`) with the node's own HTTP/1 loop,
    /// handing a connection to hyper at its first other request (see
    /// [`crate::h1`]); `false` has hyper serve every connection.
    pub direct_http1: bool,
}

impl Default for HttpSection {
    fn default() -> Self {
        HttpSection {
            listen: SocketAddr::from(([127, 0, 0, 1], dotkv_api::DEFAULT_HTTP_PORT)),
            max_in_flight: 4096,
            queue_timeout_ms: 2_000,
            request_timeout_ms: 120_000,
            shutdown_grace_ms: 10_000,
            max_connections: 4096,
            header_timeout_ms: 30_000,
            direct_http1: true,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageSection {
    pub durability: Durability,
    pub block_cache_mb: usize,
    pub write_buffer_mb: usize,
    /// Requests waiting for the writer before new ones wait to be queued.
    pub write_queue: usize,
    /// Most requests committed together (one WAL write, one fsync).
    pub max_commit_group: usize,
    /// Memory for the writer's cache of the rows it committed or read
    /// last, in MiB (0: off).
    pub row_cache_mb: usize,
    /// Under `durability = "wal"`, let the request's own runtime thread
    /// commit local writes (flat combining) instead of handing every one to
    /// the writer thread.
    pub inline_commits: bool,
}

impl Default for StorageSection {
    fn default() -> Self {
        StorageSection {
            durability: Durability::Wal,
            block_cache_mb: 128,
            write_buffer_mb: 8,
            write_queue: 4096,
            max_commit_group: 512,
            row_cache_mb: 32,
            inline_commits: true,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSection {
    /// Bearer tokens accepted on `/v1`. Empty: no authentication.
    pub tokens: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsistencySection {
    /// How long a request waits for its causal token or write level when it
    /// gives no `timeout_ms`, in milliseconds.
    pub default_timeout_ms: u64,
    /// The largest `timeout_ms` accepted.
    pub max_timeout_ms: u64,
}

impl Default for ConsistencySection {
    fn default() -> Self {
        ConsistencySection {
            default_timeout_ms: 5_000,
            max_timeout_ms: 60_000,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSection {
    /// A tracing filter, e.g. "info" or "dotkv_node=debug,info". `RUST_LOG`
    /// overrides it.
    pub level: String,
}

impl Default for LogSection {
    fn default() -> Self {
        LogSection {
            level: "info".into(),
        }
    }
}

impl Config {
    /// Load `path` (or the embedded default when `None`), then apply `DOTKV_*`
    /// overrides from the process environment.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        // `std::env::vars` panics on a variable that is not UTF-8; such a
        // variable is refused if it is one of ours and skipped otherwise.
        let mut env = Vec::new();
        for (key, value) in std::env::vars_os() {
            let Ok(key) = key.into_string() else {
                continue;
            };
            match value.into_string() {
                Ok(value) => env.push((key, value)),
                Err(_) if key.starts_with("DOTKV_") => {
                    return Err(ConfigError::Env {
                        var: key,
                        message: "the value is not valid UTF-8".into(),
                    })
                }
                Err(_) => {}
            }
        }
        Self::load_with_env(path, env)
    }

    pub fn load_with_env(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut table = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.to_path_buf(),
                    source,
                })?;
                text.parse::<toml::Table>()
                    .map_err(|e| ConfigError::Invalid {
                        path: Some(p.to_path_buf()),
                        message: e.to_string(),
                    })?
            }
            None => toml::Table::new(),
        };
        apply_env(&mut table, env)?;
        let cfg: Config = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Invalid {
                path: path.map(Path::to_path_buf),
                message: e.to_string(),
            })?;
        cfg.validate().map_err(|message| ConfigError::Invalid {
            path: path.map(Path::to_path_buf),
            message,
        })?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), String> {
        let l = &self.limits;
        if l.max_key_bytes == 0 || l.max_key_bytes > u16::MAX as usize {
            return Err("limits.max_key_bytes must be between 1 and 65535".into());
        }
        if l.max_body_bytes == 0 || l.max_value_bytes == 0 {
            return Err("limits.max_body_bytes and limits.max_value_bytes must be positive".into());
        }
        if l.max_value_depth == 0 || l.max_value_depth > dotkv_api::MAX_VALUE_DEPTH {
            return Err(format!(
                "limits.max_value_depth must be between 1 and {}",
                dotkv_api::MAX_VALUE_DEPTH
            ));
        }
        if self.http.max_connections == 0 || self.http.header_timeout_ms == 0 {
            return Err("http.max_connections and http.header_timeout_ms must be positive".into());
        }
        if self.quic.max_client_connections == 0 {
            return Err("quic.max_client_connections must be positive".into());
        }
        if self.storage.write_queue == 0 || self.storage.max_commit_group == 0 {
            return Err("storage.write_queue and storage.max_commit_group must be positive".into());
        }
        if self.auth.tokens.iter().any(|t| t.is_empty()) {
            return Err("auth.tokens must not contain an empty token".into());
        }
        let q = &self.quic;
        if q.enabled() && (q.cert.is_empty() || q.key.is_empty() || q.ca.is_empty()) {
            return Err("quic.ca, quic.cert and quic.key must be set together".into());
        }
        if !self.peers.is_empty() && !q.enabled() {
            return Err("peers need the QUIC endpoint: set quic.ca, quic.cert and quic.key".into());
        }
        let name_ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 64
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        };
        if !name_ok(&self.node.name) || !name_ok(&self.node.datacenter) {
            return Err(
                "node.name and node.datacenter must be 1 to 64 of A-Z, a-z, 0-9, '-', '_', '.'"
                    .into(),
            );
        }
        let mut names = std::collections::BTreeSet::new();
        for p in &self.peers {
            if !name_ok(&p.name) || !name_ok(&p.datacenter) {
                return Err(format!(
                    "peer {:?}: names and datacenters must be 1 to 64 of A-Z, a-z, 0-9, '-', '_', '.'",
                    p.name
                ));
            }
            if p.name.is_empty() || p.datacenter.is_empty() || p.address.is_empty() {
                return Err("every peer needs a name, a datacenter and an address".into());
            }
            if p.name == self.node.name {
                return Err(format!("peer {:?} has this node's own name", p.name));
            }
            if !names.insert(p.name.as_str()) {
                return Err(format!("peer {:?} is listed twice", p.name));
            }
        }
        let r = &self.replication;
        if r.batch_max_groups == 0
            || r.batch_max_bytes == 0
            || r.window_groups == 0
            || r.causal_buffer_groups == 0
            || r.ack_interval_ms == 0
        {
            return Err(
                "replication batch, window, buffer and ack interval must be positive".into(),
            );
        }
        Ok(())
    }
}

/// Apply `DOTKV_<SECTION>_<OPTION>` variables. Each known option's variable
/// name is derived from the defaults, and the value is read with the type of
/// the default: strings as they are, numbers and booleans parsed, lists split
/// on commas. A variable that names a section but no option of it is
/// refused, as an unknown field in the file is, so that a misspelt
/// override does not go unnoticed.
fn apply_env(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    let defaults = match toml::Value::try_from(Config::default()) {
        Ok(toml::Value::Table(t)) => t,
        _ => return Ok(()),
    };
    let env: Vec<(String, String)> = env.into_iter().collect();
    check_env_names(&defaults, &env)?;
    for (section, options) in &defaults {
        let Some(options) = options.as_table() else {
            continue;
        };
        for (option, default) in options {
            let var = format!("DOTKV_{}_{}", section, option).to_uppercase();
            let Some((_, raw)) = env.iter().find(|(k, _)| *k == var) else {
                continue;
            };
            let err = |message: String| ConfigError::Env {
                var: var.clone(),
                message,
            };
            let value = match default {
                toml::Value::String(_) => toml::Value::String(raw.clone()),
                toml::Value::Integer(_) => toml::Value::Integer(
                    raw.trim()
                        .parse()
                        .map_err(|e| err(format!("{raw:?} is not an integer: {e}")))?,
                ),
                toml::Value::Boolean(_) => toml::Value::Boolean(
                    raw.trim()
                        .parse()
                        .map_err(|e| err(format!("{raw:?} is not true or false: {e}")))?,
                ),
                toml::Value::Array(_) => toml::Value::Array(
                    raw.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(|s| toml::Value::String(s.to_string()))
                        .collect(),
                ),
                other => return Err(err(format!("cannot be set from the environment ({other})"))),
            };
            let entry = table
                .entry(section.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            match entry.as_table_mut() {
                Some(t) => {
                    t.insert(option.clone(), value);
                }
                None => return Err(err(format!("[{section}] in the file is not a table"))),
            }
        }
    }
    Ok(())
}

/// The variable that sets `option` of `section`.
fn env_var(section: &str, option: &str) -> String {
    format!("DOTKV_{section}_{option}").to_uppercase()
}

/// Refuse `DOTKV_<SECTION>_<REST>` where `<SECTION>` is a section of the
/// config and `<REST>` none of its options. Variables of other shapes
/// (`DOTKV_URL`, `DOTKV_CONFIG` and the client's others) are not the
/// config's and are left alone.
fn check_env_names(defaults: &toml::Table, env: &[(String, String)]) -> Result<(), ConfigError> {
    let sections: Vec<(&String, &toml::Table)> = defaults
        .iter()
        .filter_map(|(name, v)| v.as_table().map(|t| (name, t)))
        .collect();
    for (var, _) in env {
        for (section, options) in &sections {
            let prefix = env_var(section, "");
            let Some(rest) = var.strip_prefix(&prefix) else {
                continue;
            };
            let option = rest.to_lowercase();
            if options.contains_key(&option) {
                break;
            }
            let elsewhere = sections
                .iter()
                .find(|(_, o)| o.contains_key(&option))
                .map(|(other, _)| env_var(other, &option));
            let message = match elsewhere {
                Some(right) => {
                    format!("[{section}] has no option `{option}`; did you mean {right}?")
                }
                None => format!(
                    "[{section}] has no option `{option}`; its variables are {}",
                    options
                        .keys()
                        .map(|o| env_var(section, o))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
            return Err(ConfigError::UnknownEnv {
                var: var.clone(),
                message,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_is_the_default() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/single.toml");
        let cfg = Config::load_with_env(Some(&path), Vec::new()).unwrap();
        assert_eq!(cfg, Config::default());
    }

    #[test]
    fn environment_overrides() {
        let env = vec![
            ("DOTKV_HTTP_LISTEN".to_string(), "0.0.0.0:9000".to_string()),
            ("DOTKV_STORAGE_DURABILITY".into(), "fsync".into()),
            ("DOTKV_AUTH_TOKENS".into(), "a, b".into()),
            ("DOTKV_LIMITS_MAX_KEY_BYTES".into(), "64".into()),
            ("DOTKV_NODE_DATA_DIR".into(), "/tmp/x".into()),
        ];
        let cfg = Config::load_with_env(None, env).unwrap();
        assert_eq!(cfg.http.listen, "0.0.0.0:9000".parse().unwrap());
        assert_eq!(cfg.storage.durability, Durability::Fsync);
        assert_eq!(cfg.auth.tokens, vec!["a", "b"]);
        assert_eq!(cfg.limits.max_key_bytes, 64);
        assert_eq!(cfg.node.data_dir, PathBuf::from("/tmp/x"));
        let bad = vec![("DOTKV_LIMITS_MAX_KEY_BYTES".to_string(), "lots".to_string())];
        assert!(matches!(
            Config::load_with_env(None, bad),
            Err(ConfigError::Env { .. })
        ));
    }

    #[test]
    fn misspelt_environment_overrides_are_refused() {
        let load =
            |var: &str| Config::load_with_env(None, vec![(var.to_string(), "1".to_string())]);
        // An option of another section: the message names the right variable.
        let e = load("DOTKV_HTTP_MAX_BODY_BYTES").unwrap_err();
        assert!(matches!(e, ConfigError::UnknownEnv { .. }), "{e}");
        let e = e.to_string();
        assert!(e.contains("DOTKV_HTTP_MAX_BODY_BYTES"), "{e}");
        assert!(
            e.contains("did you mean DOTKV_LIMITS_MAX_BODY_BYTES"),
            "{e}"
        );
        // No such option anywhere: the section's variables are listed.
        let e = load("DOTKV_STORAGE_DURABILTY").unwrap_err().to_string();
        assert!(e.contains("its variables are"), "{e}");
        assert!(e.contains("DOTKV_STORAGE_DURABILITY"), "{e}");
        assert!(e.contains("[storage] has no option `durabilty`"), "{e}");
        // A section name alone, with nothing after it, is no option either.
        assert!(load("DOTKV_LOG_").is_err());
        // Variables that are not the config's are left to their owners.
        for var in [
            "DOTKV_URL",
            "DOTKV_CONFIG",
            "DOTKV_API_TOKEN",
            "DOTKV_QUIC",
            "DOTKV_BIN",
        ] {
            assert!(load(var).is_ok(), "{var}");
        }
        assert_eq!(load("DOTKV_LOG_LEVEL").unwrap().log.level, "1");
    }

    #[test]
    fn peers_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        let quic = "[quic]\nca = \"ca.pem\"\ncert = \"n.pem\"\nkey = \"n.key\"\n";
        let peer = |name: &str| {
            format!("[[peers]]\nname = \"{name}\"\ndatacenter = \"dc2\"\naddress = \"h:1\"\n")
        };
        let load = |text: String| {
            std::fs::write(&p, text).unwrap();
            Config::load_with_env(Some(&p), Vec::new())
        };
        let ok = load(format!("{quic}{}{}", peer("b"), peer("c"))).unwrap();
        assert_eq!(ok.peers.len(), 2);
        assert!(ok.quic.enabled());
        for (text, needle) in [
            (peer("b"), "QUIC"),
            (format!("{quic}{}{}", peer("b"), peer("b")), "twice"),
            (format!("{quic}{}", peer("node1")), "own name"),
            (format!("{quic}{}", peer("b\\\"x")), "names"),
            ("[quic]\ncert = \"n.pem\"\n".to_string(), "together"),
        ] {
            let e = load(text).unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
        }
    }

    #[test]
    fn value_depth_is_bounded() {
        let depth = |v: &str| {
            let env = vec![("DOTKV_LIMITS_MAX_VALUE_DEPTH".to_string(), v.to_string())];
            Config::load_with_env(None, env)
        };
        assert_eq!(depth("1").unwrap().limits.max_value_depth, 1);
        assert_eq!(depth("100").unwrap().limits.max_value_depth, 100);
        for bad in ["0", "101"] {
            let e = depth(bad).unwrap_err().to_string();
            assert!(e.contains("max_value_depth"), "{e}");
        }
    }

    #[test]
    fn typos_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "[http]\nlisten_addr = \"1.2.3.4:5\"\n").unwrap();
        let e = Config::load_with_env(Some(&p), Vec::new()).unwrap_err();
        assert!(e.to_string().contains("listen_addr"), "{e}");
    }
}
