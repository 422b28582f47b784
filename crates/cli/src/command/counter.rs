//! `dotkv counter get|add`: PN-counters.

use clap::Subcommand;

use super::{CliError, Ctx};

#[derive(Debug, Subcommand)]
pub enum CounterCommand {
    /// Print the value (0 if never written).
    Get { key: String },
    /// Add N (negative to subtract) and print the new value.
    Add {
        key: String,
        #[arg(allow_negative_numbers = true)]
        n: i64,
    },
}

pub async fn run(command: CounterCommand, ctx: &Ctx) -> Result<(), CliError> {
    let answer = match command {
        CounterCommand::Get { key } => ctx.client.counter_get(&key, &ctx.read).await?,
        CounterCommand::Add { key, n } => ctx.client.counter_add(&key, n, &ctx.write).await?,
    };
    ctx.emit(&answer, |v| format!("counter/{} = {}", v.key, v.value));
    Ok(())
}
