//! `dotkv set get|add|remove|contains`: add-wins sets. Elements on the command
//! line follow `Element::parse_query`: `5` is a number, `'"5"'` the string 5,
//! anything else the text itself.

use clap::Subcommand;
use dotkv_api::{Element, SetUpdate};
use dotkv_client::Page;

use super::{stderr_line, CliError, Ctx};

#[derive(Debug, Subcommand)]
pub enum SetCommand {
    /// Print one page of elements.
    Get {
        key: String,
        /// Page size (the node has a default and a maximum).
        #[arg(long)]
        limit: Option<usize>,
        /// Start after this cursor (the `next` of the previous page).
        #[arg(long)]
        after: Option<String>,
    },
    /// Add elements.
    Add {
        key: String,
        #[arg(required = true, allow_negative_numbers = true)]
        elements: Vec<String>,
    },
    /// Remove elements (an observed remove: concurrent adds survive).
    Remove {
        key: String,
        #[arg(required = true, allow_negative_numbers = true)]
        elements: Vec<String>,
    },
    /// Print whether the set holds an element.
    Contains {
        key: String,
        #[arg(allow_negative_numbers = true)]
        element: String,
    },
}

pub async fn run(command: SetCommand, ctx: &Ctx) -> Result<(), CliError> {
    match command {
        SetCommand::Get { key, limit, after } => {
            let page = Page { limit, after };
            let answer = ctx.client.set_get(&key, &page, &ctx.read).await?;
            ctx.emit(&answer, |v| {
                let elements: Vec<String> = v.elements.iter().map(Element::to_string).collect();
                format!("set/{} = {{{}}}", v.key, elements.join(", "))
            });
            if let (false, Some(next)) = (ctx.json(), &answer.value.next) {
                stderr_line(&format!("more: --after {next}"));
            }
        }
        SetCommand::Add { key, elements } => {
            let update = SetUpdate {
                add: parse_elements(&elements)?,
                remove: Vec::new(),
            };
            let answer = ctx.client.set_update(&key, &update, &ctx.write).await?;
            ctx.emit(&answer, |v| format!("set/{} ok", v.key));
        }
        SetCommand::Remove { key, elements } => {
            let update = SetUpdate {
                add: Vec::new(),
                remove: parse_elements(&elements)?,
            };
            let answer = ctx.client.set_update(&key, &update, &ctx.write).await?;
            ctx.emit(&answer, |v| format!("set/{} ok", v.key));
        }
        SetCommand::Contains { key, element } => {
            let element = parse_element(&element)?;
            let answer = ctx.client.set_contains(&key, &element, &ctx.read).await?;
            ctx.emit(&answer, |v| {
                format!("set/{} contains {element}: {}", v.key, v.contains)
            });
        }
    }
    Ok(())
}

fn parse_elements(args: &[String]) -> Result<Vec<Element>, CliError> {
    args.iter().map(|a| parse_element(a)).collect()
}

/// An element argument; an integer beyond 64 bits is a usage error, before
/// any request.
fn parse_element(arg: &str) -> Result<Element, CliError> {
    Element::parse_query(arg).map_err(|e| CliError::Usage(e.message))
}
