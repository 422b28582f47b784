//! The example cluster in `config/cluster/`: every file parses, and the six
//! nodes agree with each other (each lists the five others with their right
//! datacenter and QUIC address), so the README's commands start a working
//! full mesh.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use dotkv_node::config::Config;

fn cluster_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/cluster")
}

/// Every `.toml` file of the directory, loaded with no environment overrides.
fn load_all() -> BTreeMap<String, Config> {
    let mut configs = BTreeMap::new();
    let entries = std::fs::read_dir(cluster_dir()).expect("config/cluster exists");
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let config = Config::load_with_env(Some(&path), Vec::new())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let stem = path.file_stem().unwrap().to_str().unwrap().to_owned();
        configs.insert(stem, config);
    }
    configs
}

#[test]
fn every_file_parses_and_is_named_after_its_node() {
    let configs = load_all();
    let names: Vec<&str> = configs.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        ["dc1-n1", "dc1-n2", "dc2-n1", "dc2-n2", "dc3-n1", "dc3-n2"]
    );
    for (file, config) in &configs {
        assert_eq!(&config.node.name, file, "node.name of {file}.toml");
        let dc = file.split('-').next().unwrap();
        assert_eq!(config.node.datacenter, dc, "node.datacenter of {file}.toml");
        assert!(
            config.quic.enabled(),
            "{file}.toml: QUIC must be on for peers"
        );
        assert_eq!(
            config.quic.cert,
            format!("config/cluster/certs/{file}.pem"),
            "{file}.toml"
        );
        assert_eq!(
            config.quic.key,
            format!("config/cluster/certs/{file}.key"),
            "{file}.toml"
        );
        assert_eq!(config.quic.ca, "config/cluster/certs/ca.pem", "{file}.toml");
    }
}

#[test]
fn ports_and_data_directories_are_distinct() {
    let configs = load_all();
    let mut http = BTreeSet::new();
    let mut quic = BTreeSet::new();
    let mut data = BTreeSet::new();
    for (file, config) in &configs {
        assert!(config.http.listen.ip().is_loopback(), "{file}.toml");
        assert!(config.quic.listen.ip().is_loopback(), "{file}.toml");
        assert!(
            http.insert(config.http.listen),
            "{file}.toml: HTTP address reused"
        );
        assert!(
            quic.insert(config.quic.listen),
            "{file}.toml: QUIC address reused"
        );
        assert!(
            data.insert(config.node.data_dir.clone()),
            "{file}.toml: data_dir reused"
        );
    }
    // No node collides with the single-node defaults either.
    let single = Config::default();
    assert!(!http.contains(&single.http.listen) && !quic.contains(&single.quic.listen));
    assert!(!data.contains(&single.node.data_dir));
}

#[test]
fn every_node_lists_every_other_node_as_it_is() {
    let configs = load_all();
    for (file, config) in &configs {
        let listed: BTreeSet<&str> = config.peers.iter().map(|p| p.name.as_str()).collect();
        let others: BTreeSet<&str> = configs
            .keys()
            .filter(|name| *name != file)
            .map(String::as_str)
            .collect();
        assert_eq!(listed, others, "peers of {file}.toml");
        assert_eq!(
            config.peers.len(),
            others.len(),
            "{file}.toml lists a peer twice"
        );
        for peer in &config.peers {
            let other = &configs[&peer.name];
            assert_eq!(
                peer.datacenter, other.node.datacenter,
                "{file}.toml: datacenter of {}",
                peer.name
            );
            assert_eq!(
                peer.address,
                other.quic.listen.to_string(),
                "{file}.toml: address of {}",
                peer.name
            );
        }
    }
}
