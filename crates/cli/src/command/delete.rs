//! `dotkv delete TYPE KEY`: observed remove of a whole key of any type.

use clap::Args;
use dotkv_api::CrdtType;

use super::{parse_type, CliError, Ctx};

#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// counter, register, mvregister, set or flag.
    #[arg(value_parser = parse_type, value_name = "TYPE")]
    pub crdt_type: CrdtType,
    pub key: String,
}

pub async fn run(args: DeleteArgs, ctx: &Ctx) -> Result<(), CliError> {
    let answer = ctx
        .client
        .delete(args.crdt_type, &args.key, &ctx.write)
        .await?;
    ctx.emit(&answer, |v| format!("{}/{} deleted", args.crdt_type, v.key));
    Ok(())
}
