//! `dotkv register get|put` (`set` is `put`): last-writer-wins registers of any JSON value.

use clap::Subcommand;

use super::{compact, json_arg, CliError, Ctx};

#[derive(Debug, Subcommand)]
pub enum RegisterCommand {
    /// Print the value (an error if never written).
    Get { key: String },
    /// Write a JSON value (`-` reads it from stdin). Strings need JSON quotes: '"text"'.
    // `set` too: the op's name in a batch.
    #[command(visible_alias = "set")]
    Put {
        key: String,
        /// The value as JSON, or `-` to read it from stdin.
        #[arg(allow_hyphen_values = true, value_name = "JSON")]
        value: String,
    },
}

pub async fn run(command: RegisterCommand, ctx: &Ctx) -> Result<(), CliError> {
    match command {
        RegisterCommand::Get { key } => {
            let answer = ctx.client.register_get(&key, &ctx.read).await?;
            ctx.emit(&answer, |v| {
                format!("register/{} = {}", v.key, compact(&v.value))
            });
        }
        RegisterCommand::Put { key, value } => {
            let value = json_arg(&value)?;
            let answer = ctx.client.register_put(&key, &value, &ctx.write).await?;
            ctx.emit(&answer, |v| format!("register/{} ok", v.key));
        }
    }
    Ok(())
}
