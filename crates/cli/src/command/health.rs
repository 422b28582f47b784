//! `dotkv health`: whether the node answers `GET /health`.

use super::{stdout_line, CliError, Ctx};

pub async fn run(ctx: &Ctx) -> Result<(), CliError> {
    let answer = ctx.client.health().await?;
    let body = answer.value.trim();
    if ctx.json() {
        // The body as the node sent it, or a JSON string if it is not JSON.
        if serde_json::from_str::<serde_json::Value>(body).is_ok() {
            stdout_line(body);
        } else {
            stdout_line(&serde_json::Value::String(body.to_owned()).to_string());
        }
    } else {
        // The node answers {"status":"ok"}; a person reads just the status.
        let status = serde_json::from_str::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v.get("status")?.as_str().map(str::to_owned));
        stdout_line(match &status {
            Some(s) => s,
            None if body.is_empty() => "ok",
            None => body,
        });
    }
    ctx.emit_token(answer.token.as_deref());
    Ok(())
}
