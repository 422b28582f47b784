//! `dotkv mvregister get|put` (`set` is `put`): multi-value registers, which keep every
//! concurrent write.

use clap::Subcommand;

use super::{json_arg, CliError, Ctx};

#[derive(Debug, Subcommand)]
pub enum MvRegisterCommand {
    /// Print every concurrent value, as a JSON array.
    Get { key: String },
    /// Write a JSON value (`-` reads it from stdin), replacing the values seen.
    // `set` too: the op's name in a batch.
    #[command(visible_alias = "set")]
    Put {
        key: String,
        /// The value as JSON, or `-` to read it from stdin.
        #[arg(allow_hyphen_values = true, value_name = "JSON")]
        value: String,
    },
}

pub async fn run(command: MvRegisterCommand, ctx: &Ctx) -> Result<(), CliError> {
    match command {
        MvRegisterCommand::Get { key } => {
            let answer = ctx.client.mvregister_get(&key, &ctx.read).await?;
            ctx.emit(&answer, |v| {
                let values = serde_json::Value::Array(v.values.clone());
                format!("mvregister/{} = {values}", v.key)
            });
        }
        MvRegisterCommand::Put { key, value } => {
            let value = json_arg(&value)?;
            let answer = ctx.client.mvregister_put(&key, &value, &ctx.write).await?;
            ctx.emit(&answer, |v| format!("mvregister/{} ok", v.key));
        }
    }
    Ok(())
}
