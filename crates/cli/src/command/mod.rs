//! Client subcommands: the global client flags ([`ClientArgs`]), the tree of
//! subcommands that talk to a node over HTTP, or QUIC with `--quic`
//! ([`ClientCommand`]), and what they share: the context built from the flags
//! ([`Ctx`]), output in human or `--json` form, and the mapping of failures to
//! exit codes.

pub mod batch;
pub mod certs;
pub mod counter;
pub mod delete;
pub mod demo;
pub mod flag;
pub mod health;
pub mod keys;
pub mod mvregister;
pub mod register;
pub mod serve;
pub mod set;
pub mod status;

use std::fmt;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use dotkv_api::{ApiError, CrdtType};
use dotkv_client::{Client, ClientError, ReadOptions, Response, WriteOptions};
use serde::Serialize;
use serde_json::Value;

/// Flags of every client subcommand. They may come before or after the
/// subcommand.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// URL of the node's HTTP API.
    #[arg(
        long,
        global = true,
        env = "DOTKV_URL",
        default_value = "http://127.0.0.1:7700"
    )]
    pub url: String,

    /// Talk to the node's QUIC endpoint at HOST:PORT (the QUIC client
    /// protocol, ALPN dotkv-client/1) instead of HTTP; --url is then unused.
    #[arg(long, global = true, env = "DOTKV_QUIC", value_name = "HOST:PORT")]
    pub quic: Option<String>,

    /// With --quic: the cluster CA certificate (PEM) that must have signed
    /// the node's certificate.
    #[arg(
        long,
        global = true,
        env = "DOTKV_CA",
        value_name = "PATH",
        default_value = "./certs/ca.pem"
    )]
    pub ca: PathBuf,

    /// With --quic: the name the node's certificate must be valid for (one
    /// of its SANs). Default: the HOST of --quic.
    #[arg(long, global = true, env = "DOTKV_SERVER_NAME", value_name = "NAME")]
    pub server_name: Option<String>,

    /// API token, sent as `Authorization: Bearer <token>`.
    #[arg(long, global = true, env = "DOTKV_API_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// Print the answer as JSON, one line, for scripts.
    #[arg(long, global = true)]
    pub json: bool,

    /// Writes: wait for this replication level (local, dc or all).
    #[arg(long, global = true, value_name = "LEVEL")]
    pub w: Option<String>,

    /// Writes: how long the node may wait for --w, in milliseconds.
    #[arg(long, global = true, value_name = "MS")]
    pub timeout_ms: Option<u64>,

    /// Causal token of an earlier answer: read or write only after it.
    #[arg(long, global = true, value_name = "TOKEN")]
    pub causal_token: Option<String>,

    /// Print the answer's causal token on stderr (`token: ...`).
    #[arg(long, global = true)]
    pub show_token: bool,
}

/// Subcommands that talk to a running node.
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// PN-counters.
    #[command(subcommand)]
    Counter(counter::CounterCommand),
    /// Last-writer-wins registers.
    #[command(subcommand)]
    Register(register::RegisterCommand),
    /// Multi-value registers.
    #[command(subcommand)]
    Mvregister(mvregister::MvRegisterCommand),
    /// Add-wins sets of strings and numbers.
    #[command(subcommand)]
    Set(set::SetCommand),
    /// Enable-wins flags.
    #[command(subcommand)]
    Flag(flag::FlagCommand),
    /// Delete a key of any type (concurrent additions survive).
    Delete(delete::DeleteArgs),
    /// List the keys of a type.
    Keys(keys::KeysArgs),
    /// Apply a batch of ops atomically, from a JSON file or `-` for stdin.
    Batch(batch::BatchArgs),
    /// Show the node's identity, version vector and peers.
    Status,
    /// Check that the node is alive.
    Health,
}

/// Why a client subcommand failed.
#[derive(Debug)]
pub enum CliError {
    /// Bad arguments or input files: exit code 2.
    Usage(String),
    /// The request failed: exit code 1.
    Client(ClientError),
}

impl From<ClientError> for CliError {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Config(m) | ClientError::InvalidRequest(m) => CliError::Usage(m),
            other => CliError::Client(other),
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Usage(m) => f.write_str(m),
            // The contract's `<code>: <message>`, without the HTTP status.
            CliError::Client(ClientError::Api { error, .. }) => write!(f, "{error}"),
            CliError::Client(other) => write!(f, "{other}"),
        }
    }
}

/// What every subcommand needs: the client, the request options from the
/// global flags, and how to print.
pub struct Ctx {
    pub client: Client,
    pub read: ReadOptions,
    pub write: WriteOptions,
    json: bool,
    show_token: bool,
}

impl Ctx {
    async fn new(args: ClientArgs) -> Result<Ctx, CliError> {
        let mut builder = match &args.quic {
            None => Client::builder(args.url),
            Some(target) => {
                let (host, addr) = resolve_quic(target).await?;
                let server_name = args.server_name.unwrap_or(host);
                Client::quic_builder(addr, server_name, args.ca)
            }
        };
        if let Some(token) = args.token {
            builder = builder.bearer_token(token);
        }
        Ok(Ctx {
            client: builder.build()?,
            read: ReadOptions {
                token: args.causal_token.clone(),
            },
            write: WriteOptions {
                w: args.w,
                timeout_ms: args.timeout_ms,
                token: args.causal_token,
            },
            json: args.json,
            show_token: args.show_token,
        })
    }

    /// Prints an answer: its JSON with `--json`, else `human(value)`.
    pub fn emit<T: Serialize>(&self, answer: &Response<T>, human: impl FnOnce(&T) -> String) {
        if self.json {
            match serde_json::to_string(&answer.value) {
                Ok(text) => stdout_line(&text),
                Err(e) => stderr_line(&format!("error: cannot print the answer as JSON: {e}")),
            }
        } else {
            stdout_line(&human(&answer.value));
        }
        self.emit_token(answer.token.as_deref());
    }

    /// Prints `token: ...` on stderr with `--show-token`.
    pub fn emit_token(&self, token: Option<&str>) {
        if let (true, Some(token)) = (self.show_token, token) {
            stderr_line(&format!("token: {token}"));
        }
    }

    /// Whether output is `--json`.
    pub fn json(&self) -> bool {
        self.json
    }
}

/// Runs one client subcommand to the end and gives the exit code.
pub fn run_client(command: ClientCommand, args: ClientArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            stderr_line(&format!("error: cannot start the async runtime: {e}"));
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async {
        let ctx = Ctx::new(args).await?;
        let result = dispatch(command, &ctx).await;
        // Over QUIC, tell the node the connection is done.
        ctx.client.close().await;
        result
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ CliError::Usage(_)) => {
            stderr_line(&format!("error: {e}"));
            ExitCode::from(2)
        }
        Err(e @ CliError::Client(_)) => {
            stderr_line(&format!("error: {e}"));
            ExitCode::from(1)
        }
    }
}

async fn dispatch(command: ClientCommand, ctx: &Ctx) -> Result<(), CliError> {
    match command {
        ClientCommand::Counter(c) => counter::run(c, ctx).await,
        ClientCommand::Register(c) => register::run(c, ctx).await,
        ClientCommand::Mvregister(c) => mvregister::run(c, ctx).await,
        ClientCommand::Set(c) => set::run(c, ctx).await,
        ClientCommand::Flag(c) => flag::run(c, ctx).await,
        ClientCommand::Delete(a) => delete::run(a, ctx).await,
        ClientCommand::Keys(a) => keys::run(a, ctx).await,
        ClientCommand::Batch(a) => batch::run(a, ctx).await,
        ClientCommand::Status => status::run(ctx).await,
        ClientCommand::Health => health::run(ctx).await,
    }
}

/// Splits `--quic HOST:PORT` into the host (the default server name, without
/// the brackets of an IPv6 address) and a resolved address.
async fn resolve_quic(target: &str) -> Result<(String, SocketAddr), CliError> {
    if let Ok(addr) = target.parse::<SocketAddr>() {
        return Ok((addr.ip().to_string(), addr));
    }
    let usage = || {
        CliError::Usage(format!(
            "--quic expects HOST:PORT (e.g. 127.0.0.1:7701 or node1.example:7701), got `{target}`"
        ))
    };
    let (host, port) = target.rsplit_once(':').ok_or_else(usage)?;
    let port: u16 = port.parse().map_err(|_| usage())?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(usage());
    }
    let unresolved = |message: String| {
        CliError::Client(ClientError::Transport {
            method: "CONNECT".into(),
            url: format!("quic://{target}"),
            message,
        })
    };
    let addr = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| unresolved(format!("cannot resolve {host}: {e}")))?
        .next()
        .ok_or_else(|| unresolved(format!("{host} has no address")))?;
    Ok((host.to_owned(), addr))
}

/// Parses a type name for clap: `counter`, `register`, `mvregister`, `set`, `flag`.
pub fn parse_type(text: &str) -> Result<CrdtType, String> {
    text.parse().map_err(|e: ApiError| e.message)
}

/// Reads a JSON value from an argument, or from stdin when it is `-`.
pub fn json_arg(arg: &str) -> Result<Value, CliError> {
    let text = if arg == "-" {
        read_input("-")?
    } else {
        arg.to_owned()
    };
    let value = serde_json::from_str(&text).map_err(|e| {
        CliError::Usage(format!(
            "the value is not valid JSON ({e}); to store a string, quote it, e.g. '\"text\"'"
        ))
    })?;
    // The node refuses an integer beyond 64 bits (serde_json would have read
    // it as a rounded float); so does the API's body parser here, before any
    // request.
    dotkv_api::from_json_body::<serde::de::IgnoredAny>(text.as_bytes())
        .map_err(|e| CliError::Usage(e.message))?;
    Ok(value)
}

/// The contents of a file, or of stdin for `-`.
pub fn read_input(path: &str) -> Result<String, CliError> {
    let mut text = String::new();
    let read = if path == "-" {
        io::stdin().read_to_string(&mut text).map(|_| ())
    } else {
        std::fs::read_to_string(path).map(|t| text = t)
    };
    read.map_err(|e| {
        let name = if path == "-" { "stdin" } else { path };
        CliError::Usage(format!("cannot read {name}: {e}"))
    })?;
    Ok(text)
}

/// Prints a line on stdout; a closed pipe (`dotkv keys set | head`) is not an error.
pub fn stdout_line(line: &str) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{line}");
}

/// Prints a line on stderr.
pub fn stderr_line(line: &str) {
    let _ = writeln!(io::stderr().lock(), "{line}");
}

/// Compact JSON of a value, for human output.
pub fn compact(value: &Value) -> String {
    value.to_string()
}
