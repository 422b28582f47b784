//! `dotkv flag get|enable|disable`: enable-wins flags.

use clap::Subcommand;

use super::{CliError, Ctx};

#[derive(Debug, Subcommand)]
pub enum FlagCommand {
    /// Print the flag (false if never written).
    Get { key: String },
    /// Turn the flag on.
    Enable { key: String },
    /// Turn the flag off (a concurrent enable wins).
    Disable { key: String },
}

pub async fn run(command: FlagCommand, ctx: &Ctx) -> Result<(), CliError> {
    let (key, enable) = match command {
        FlagCommand::Get { key } => {
            let answer = ctx.client.flag_get(&key, &ctx.read).await?;
            ctx.emit(&answer, |v| format!("flag/{} = {}", v.key, v.value));
            return Ok(());
        }
        FlagCommand::Enable { key } => (key, true),
        FlagCommand::Disable { key } => (key, false),
    };
    let answer = ctx.client.flag_set(&key, enable, &ctx.write).await?;
    ctx.emit(&answer, |v| format!("flag/{} ok", v.key));
    Ok(())
}
