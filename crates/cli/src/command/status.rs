//! `dotkv status`: the node's identity, version vector and peers with their
//! replication lag.

use std::fmt::Write as _;

use dotkv_api::Status;

use super::{CliError, Ctx};

pub async fn run(ctx: &Ctx) -> Result<(), CliError> {
    let answer = ctx.client.status(&ctx.read).await?;
    ctx.emit(&answer, human);
    Ok(())
}

fn human(status: &Status) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "node        {} (id {}, replica {})",
        status.node, status.node_id, status.replica
    );
    let _ = writeln!(out, "datacenter  {}", status.datacenter);
    let vv: Vec<String> = status
        .version_vector
        .iter()
        .map(|(origin, seq)| format!("{origin}={seq}"))
        .collect();
    let _ = write!(out, "applied     {}", vv.join(" "));
    if status.peers.is_empty() {
        out.push_str("\npeers       none");
    }
    for peer in &status.peers {
        let state = if peer.connected { "connected" } else { "down" };
        let _ = write!(
            out,
            "\npeer        {} {} {state}, lag {} groups / {} ms",
            peer.name, peer.address, peer.lag_groups, peer.lag_ms
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use dotkv_api::PeerStatus;

    #[test]
    fn human_form() {
        let status = Status {
            node_id: "u1".into(),
            replica: "0000000000000002".into(),
            datacenter: "dc1".into(),
            node: "n1".into(),
            version_vector: [("u1".to_owned(), 5), ("u2".to_owned(), 3)].into(),
            peers: vec![PeerStatus {
                name: "n2".into(),
                address: "127.0.0.2:7701".into(),
                connected: true,
                lag_groups: 1,
                lag_ms: 20,
                ..PeerStatus::default()
            }],
        };
        assert_eq!(
            human(&status),
            "node        n1 (id u1, replica 0000000000000002)\n\
             datacenter  dc1\n\
             applied     u1=5 u2=3\n\
             peer        n2 127.0.0.2:7701 connected, lag 1 groups / 20 ms"
        );
    }
}
