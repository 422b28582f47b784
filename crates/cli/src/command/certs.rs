//! `dotkv certs`: make the cluster CA and the node certificates that nodes
//! present to each other (mutual TLS over QUIC). The work is done by
//! `dotkv_replication::tls`; this file parses the flags and prints the paths
//! written, one per line, so scripts can pick them up.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use dotkv_replication::{init_ca, issue_node_cert, CertFiles, TlsError};

use super::{stderr_line, stdout_line};

/// `dotkv certs init` and `dotkv certs node`.
#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Make the cluster CA: DIR/ca.pem and DIR/ca.key (ECDSA P-256, valid
    /// ten years). Never overwrites existing files. Keep ca.key off the nodes.
    Init {
        /// Directory to write into (created if missing).
        #[arg(long, value_name = "DIR", default_value = "./certs")]
        out: PathBuf,
    },
    /// Issue a node certificate signed by the CA: OUT/NAME.pem and OUT/NAME.key,
    /// usable as TLS server and client certificate. Never overwrites.
    Node {
        /// The node's name: the certificate's common name and a DNS name in it.
        #[arg(long)]
        name: String,
        /// Directory holding ca.pem and ca.key.
        #[arg(long, value_name = "DIR", default_value = "./certs")]
        ca_dir: PathBuf,
        /// Directory to write into (created if missing).
        #[arg(long, value_name = "DIR", default_value = "./certs")]
        out: PathBuf,
        /// A DNS name or IP address the node is reached at; repeat for
        /// several. Without any: localhost and 127.0.0.1.
        #[arg(long = "san", value_name = "HOST_OR_IP")]
        sans: Vec<String>,
    },
}

/// Runs a `certs` subcommand: 0 on success, 2 for an unusable name or SAN,
/// 1 for anything else (existing files, unreadable CA, I/O).
pub fn run(command: CertsCommand) -> ExitCode {
    let result = match command {
        CertsCommand::Init { out } => init_ca(&out),
        CertsCommand::Node {
            name,
            ca_dir,
            out,
            sans,
        } => issue_node_cert(&ca_dir, &name, &sans, &out),
    };
    match result {
        Ok(CertFiles { cert, key }) => {
            stdout_line(&cert.display().to_string());
            stdout_line(&key.display().to_string());
            ExitCode::SUCCESS
        }
        Err(e) => {
            stderr_line(&format!("error: {e}"));
            match e {
                TlsError::InvalidName { .. } | TlsError::InvalidSan { .. } => ExitCode::from(2),
                _ => ExitCode::from(1),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Wrapper {
        #[command(subcommand)]
        command: CertsCommand,
    }

    fn parse(args: &[&str]) -> CertsCommand {
        Wrapper::try_parse_from(std::iter::once("certs").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
            .command
    }

    #[test]
    fn defaults_are_the_certs_directory() {
        let CertsCommand::Init { out } = parse(&["init"]) else {
            panic!("not init");
        };
        assert_eq!(out, PathBuf::from("./certs"));
        let CertsCommand::Node {
            name,
            ca_dir,
            out,
            sans,
        } = parse(&[
            "node",
            "--name",
            "n1",
            "--san",
            "a.example",
            "--san",
            "10.0.0.1",
        ])
        else {
            panic!("not node");
        };
        assert_eq!(name, "n1");
        assert_eq!(
            (ca_dir, out),
            (PathBuf::from("./certs"), PathBuf::from("./certs"))
        );
        assert_eq!(sans, ["a.example", "10.0.0.1"]);
        assert!(
            Wrapper::try_parse_from(["certs", "node"]).is_err(),
            "--name is required"
        );
    }

    #[test]
    fn init_then_node_write_files_and_refuse_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().to_str().unwrap();
        assert_eq!(run(parse(&["init", "--out", out])), ExitCode::SUCCESS);
        assert!(dir.path().join("ca.pem").exists() && dir.path().join("ca.key").exists());
        assert_eq!(run(parse(&["init", "--out", out])), ExitCode::from(1));
        let node = ["node", "--name", "n1", "--ca-dir", out, "--out", out];
        assert_eq!(run(parse(&node)), ExitCode::SUCCESS);
        assert!(dir.path().join("n1.pem").exists() && dir.path().join("n1.key").exists());
        assert_eq!(run(parse(&node)), ExitCode::from(1));
        let bad = ["node", "--name", "../x", "--ca-dir", out, "--out", out];
        assert_eq!(run(parse(&bad)), ExitCode::from(2));
    }
}
