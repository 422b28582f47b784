//! The `dotkv` binary: argument parsing and dispatch. Each group of
//! subcommands lives in its own file under `command/`; this file only defines
//! the top-level command tree, the global flags and the exit codes
//! (0 success, 1 failed request, 2 usage error).

mod command;

/// mimalloc instead of glibc's malloc: under load, malloc and free were about a
/// tenth of the server's CPU (perf, counter adds at 48k/s), and mimalloc's
/// per-thread free lists cost less for the many small, short-lived allocations
/// of request handling.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// dotkv: a geo-replicated CRDT key-value store.
#[derive(Debug, Parser)]
#[command(name = "dotkv", version, propagate_version = true)]
struct Cli {
    #[command(flatten)]
    client: command::ClientArgs,

    #[command(subcommand)]
    command: Commands,
}

#[derive(Debug, Subcommand)]
enum Commands {
    // ---- Talking to a running node over HTTP or QUIC: command/*.rs ----
    #[command(flatten)]
    Client(command::ClientCommand),
    //
    // ---- Running a node ----
    /// Run a node: the embedded default config (one node, data in
    /// ./dotkv-data, HTTP on 127.0.0.1:7700), or --config FILE.
    Serve(command::serve::ServeArgs),
    /// Make the cluster CA and node certificates (mutual TLS between nodes).
    #[command(subcommand)]
    Certs(command::certs::CertsCommand),
    /// Start a local cluster of real nodes: N datacenters of M nodes on
    /// 127.0.0.1, with a simulated WAN delay between datacenters. Runs until
    /// Ctrl-C. Prints `DATACENTER NODE URL` per node (--json: one JSON array).
    Demo(command::demo::DemoArgs),
}

fn main() -> ExitCode {
    // Parse errors print usage and exit with 2; --help and --version exit with 0.
    let cli = Cli::parse();
    match cli.command {
        Commands::Client(command) => command::run_client(command, cli.client),
        Commands::Serve(args) => command::serve::run(args),
        Commands::Certs(command) => command::certs::run(command),
        Commands::Demo(args) => command::demo::run(args, cli.client.json),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_tree_is_consistent() {
        Cli::command().debug_assert();
    }

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("dotkv").chain(args.iter().copied()))
    }

    #[test]
    fn global_flags_go_anywhere() {
        let cli = parse(&["counter", "get", "k", "--json", "--url", "http://h:1"]).unwrap();
        assert!(cli.client.json);
        assert_eq!(cli.client.url, "http://h:1");
        assert_eq!(cli.client.quic, None, "HTTP unless --quic");
        assert_eq!(cli.client.ca, std::path::Path::new("./certs/ca.pem"));
        let cli = parse(&["--w", "dc", "--timeout-ms", "50", "flag", "enable", "f"]).unwrap();
        assert_eq!(cli.client.w.as_deref(), Some("dc"));
        assert_eq!(cli.client.timeout_ms, Some(50));
    }

    #[test]
    fn every_subcommand_parses_with_every_global_flag() {
        let globals = [
            "--json",
            "--show-token",
            "--url",
            "http://h:1",
            "--token",
            "t",
            "--w",
            "all",
            "--timeout-ms",
            "5",
            "--causal-token",
            "c",
            "--quic",
            "h:7701",
            "--ca",
            "ca.pem",
            "--server-name",
            "n1",
        ];
        let commands: [&[&str]; 20] = [
            &["counter", "get", "k"],
            &["counter", "add", "k", "1"],
            &["register", "get", "k"],
            &["register", "put", "k", "1"],
            &["mvregister", "get", "k"],
            &["mvregister", "put", "k", "-"],
            &["set", "get", "k", "--limit", "2", "--after", "a"],
            &["set", "add", "k", "a", "5"],
            &["set", "remove", "k", "a"],
            &["set", "contains", "k", "a"],
            &["flag", "get", "k"],
            &["flag", "enable", "k"],
            &["flag", "disable", "k"],
            &["delete", "set", "k"],
            &[
                "keys", "counter", "--prefix", "p", "--limit", "3", "--after", "a",
            ],
            &["keys", "flag"],
            &["batch", "-"],
            &["batch", "file.json"],
            &["status"],
            &["health"],
        ];
        for command in commands {
            let args: Vec<&str> = command.iter().chain(globals.iter()).copied().collect();
            let cli = parse(&args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
            assert!(cli.client.json && cli.client.show_token, "{args:?}");
            assert_eq!(cli.client.causal_token.as_deref(), Some("c"));
            assert_eq!(cli.client.quic.as_deref(), Some("h:7701"), "{args:?}");
            assert_eq!(cli.client.server_name.as_deref(), Some("n1"), "{args:?}");
        }
    }

    #[test]
    fn negative_numbers_are_values() {
        let cli = parse(&["counter", "add", "k", "-5"]).unwrap();
        let Commands::Client(command::ClientCommand::Counter(
            command::counter::CounterCommand::Add { n, .. },
        )) = cli.command
        else {
            panic!("parsed as {:?}", cli.command);
        };
        assert_eq!(n, -5);
        assert!(parse(&["set", "add", "k", "-1.5", "a"]).is_ok());
        assert!(parse(&["register", "put", "k", "-2"]).is_ok());
    }

    #[test]
    fn usage_errors() {
        for args in [
            &["counter", "add", "k"][..],
            &["counter", "add", "k", "x"],
            &["set", "add", "k"],
            &["delete", "map", "k"],
            &["keys"],
            &["nope"],
        ] {
            let err = parse(args).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{args:?}");
        }
    }
}
