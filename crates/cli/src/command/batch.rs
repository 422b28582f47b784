//! `dotkv batch FILE|-`: sends a batch body (`{"ops":[..]}`) read from a file
//! or stdin. Its shape is checked here; whether each op fits its type and the
//! node's limits is the node's call.

use clap::Args;
use dotkv_api::{from_json_body, Batch};

use super::{read_input, CliError, Ctx};

#[derive(Debug, Args)]
pub struct BatchArgs {
    /// JSON file with {"ops":[{"type","key","op"}..]}, or `-` for stdin.
    #[arg(allow_hyphen_values = true, value_name = "FILE")]
    pub file: String,
}

pub async fn run(args: BatchArgs, ctx: &Ctx) -> Result<(), CliError> {
    let text = read_input(&args.file)?;
    let name = if args.file == "-" {
        "stdin"
    } else {
        &args.file
    };
    let batch: Batch = from_json_body(text.as_bytes())
        .map_err(|e| CliError::Usage(format!("{name}: {}", e.message)))?;
    let answer = ctx.client.batch(&batch, &ctx.write).await?;
    ctx.emit(&answer, |v| {
        let s = if v.applied == 1 { "" } else { "s" };
        format!("applied {} op{s}", v.applied)
    });
    Ok(())
}
