//! `dotkv keys TYPE`: one page of the keys of a type, one per line.

use clap::Args;
use dotkv_api::CrdtType;
use dotkv_client::Page;

use super::{parse_type, stderr_line, CliError, Ctx};

#[derive(Debug, Args)]
pub struct KeysArgs {
    /// counter, register, mvregister, set or flag.
    #[arg(value_parser = parse_type, value_name = "TYPE")]
    pub crdt_type: CrdtType,
    /// Only keys that start with this.
    #[arg(long)]
    pub prefix: Option<String>,
    /// Page size (the node has a default and a maximum).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Start after this key (the `next` of the previous page).
    #[arg(long)]
    pub after: Option<String>,
}

pub async fn run(args: KeysArgs, ctx: &Ctx) -> Result<(), CliError> {
    let page = Page {
        limit: args.limit,
        after: args.after,
    };
    let answer = ctx
        .client
        .list(args.crdt_type, args.prefix.as_deref(), &page, &ctx.read)
        .await?;
    if answer.value.keys.is_empty() && !ctx.json() {
        // Nothing on stdout, so a script reading lines gets none.
        stderr_line("no keys");
        ctx.emit_token(answer.token.as_deref());
        return Ok(());
    }
    ctx.emit(&answer, |v| v.keys.join("\n"));
    if let (false, Some(next)) = (ctx.json(), &answer.value.next) {
        stderr_line(&format!("more: --after {next}"));
    }
    Ok(())
}
