//! `locsvc groups ...`: the cluster's members and layout (`list`), a
//! member's status (`set-status`), and online group changes (`add`,
//! `drain`), through the server's Cluster API.

use locsvc_proto::v1 as pb;
use locsvc_proto::v1::cluster_client::ClusterClient;
use serde_json::{Value, json};

use super::{ClientArgs, channel, rpc_error};

/// One `groups` command.
#[derive(Debug, Clone, PartialEq, clap::Subcommand)]
pub enum GroupsCommand {
    /// Every member and spare with status, errors, failover time, whether it
    /// is read, and the last probe.
    List,
    /// Set a member's status in locdb: on, off or maintenance.
    SetStatus {
        group: u32,
        no: u32,
        #[arg(value_parser = ["on", "off", "maintenance"])]
        status: String,
        /// Also take out the last readable member of its group (its
        /// subscribers fail until another member is read again).
        #[arg(long)]
        force: bool,
    },
    /// Add a group: its members' location tables are created, then their
    /// locdb rows; its share of subscribers moves to it online.
    Add {
        group: u32,
        /// Member database URLs, member 1 first (at least two).
        #[arg(required = true, num_args = 2..)]
        urls: Vec<String>,
    },
    /// Drain a group: its subscribers move to the other groups online; when
    /// `groups list` shows the layout done, delete its locdb rows.
    Drain {
        group: u32,
        /// Clear the mark instead: the group owns subscribers again.
        #[arg(long)]
        undo: bool,
    },
}

/// Runs one `groups` command against the server.
pub async fn run_groups(args: &ClientArgs, cmd: &GroupsCommand) -> anyhow::Result<()> {
    let (channel, auth) = channel(args, true).await?;
    let mut c = ClusterClient::with_interceptor(channel, auth);
    match cmd {
        GroupsCommand::List => {
            let r = c
                .list_groups(pb::ListGroupsRequest {})
                .await
                .map_err(rpc_error)?
                .into_inner();
            if args.json {
                print_groups_json(&r);
            } else {
                print_groups_table(&r);
            }
        }
        GroupsCommand::SetStatus {
            group,
            no,
            status,
            force,
        } => {
            let s = match status.as_str() {
                "on" => pb::MemberStatus::On,
                "off" => pb::MemberStatus::Off,
                _ => pb::MemberStatus::Maintenance,
            };
            c.set_status(pb::SetStatusRequest {
                group: *group,
                no: *no,
                status: s as i32,
                force: *force,
            })
            .await
            .map_err(rpc_error)?;
            if args.json {
                out!("{}", json!({"group": group, "no": no, "status": status}));
            } else {
                out!("member {group}/{no} set to {status} in locdb");
            }
        }
        GroupsCommand::Add { group, urls } => {
            c.add_group(pb::AddGroupRequest {
                group: *group,
                urls: urls.clone(),
            })
            .await
            .map_err(rpc_error)?;
            if args.json {
                out!("{}", json!({"group": group, "added": true}));
            } else {
                out!(
                    "group {group} added to locdb; its subscribers move to it online (see `groups list`)"
                );
            }
        }
        GroupsCommand::Drain { group, undo } => {
            c.drain(pb::DrainRequest {
                group: *group,
                undo: *undo,
            })
            .await
            .map_err(rpc_error)?;
            if args.json {
                out!("{}", json!({"group": group, "leaving": !undo}));
            } else if *undo {
                out!("group {group} no longer leaving");
            } else {
                out!(
                    "group {group} marked leaving; delete its locdb rows once `groups list` shows the layout done"
                );
            }
        }
    }
    Ok(())
}

/// The layout line of `groups list`.
fn layout_line(l: &pb::LayoutInfo) -> String {
    let ids = |v: &[u32]| v.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
    let mut line = format!(
        "layout: epoch {} {}, groups {}",
        l.epoch,
        l.phase,
        ids(&l.owners)
    );
    if !l.previous_owners.is_empty() {
        line += &format!(" (moving from {})", ids(&l.previous_owners));
    }
    line += &format!("; carried here: {}", l.carried);
    if l.phase == "moving" && l.pass_rows > 0 {
        let eta = match l.eta_seconds {
            s if s < 0 => "unknown".to_string(),
            s => format!("{s} s"),
        };
        line += &format!(
            "; this pass {} of {} rows, eta {eta}",
            l.pass_scanned, l.pass_rows
        );
    }
    line
}

/// A member's locdb status as `groups set-status` spells it.
fn member_status(m: &pb::MemberInfo) -> &'static str {
    match pb::MemberStatus::try_from(m.status) {
        Ok(pb::MemberStatus::On) => "on",
        Ok(pb::MemberStatus::Off) => "off",
        Ok(pb::MemberStatus::Maintenance) => "maintenance",
        _ => "?",
    }
}

/// A failover time in UTC; `-` for "never" (0, or a reset before 1970).
fn failover_time(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0)
        .filter(|_| t > 0)
        .map_or_else(
            || "-".to_string(),
            |d| d.format("%Y-%m-%d %H:%M:%S").to_string(),
        )
}

/// `groups list --json`.
fn print_groups_json(r: &pb::ListGroupsResponse) {
    let members: Vec<Value> = r
        .members
        .iter()
        .map(|m| {
            json!({
                "group": m.group, "no": m.no, "url": m.url, "status": member_status(m),
                "errors": m.errors, "failover": m.failover, "readable": m.readable,
                "spare": m.spare, "rg": m.risk_group, "transport_errors": m.transport_errors,
                "last_probe_ms": m.last_probe_ms, "last_probe_ok": m.last_probe_ok,
            })
        })
        .collect();
    out!(
        "{}",
        json!({
            "generation": r.generation, "members": members, "problems": r.problems,
            "layout": r.layout.as_ref().map(|l| json!({
                "epoch": l.epoch, "phase": l.phase, "owners": l.owners,
                "previous_owners": l.previous_owners, "carried": l.carried,
                "pass_rows": l.pass_rows, "pass_scanned": l.pass_scanned,
                "eta_seconds": l.eta_seconds,
            })),
        })
    );
}

/// `groups list`: one line per member, then the layout's problems.
fn print_groups_table(r: &pb::ListGroupsResponse) {
    out!(
        "{:>5} {:>3} {:<11} {:<8} {:>6} {:<19} {:>12}  url",
        "group",
        "no",
        "status",
        "readable",
        "errors",
        "failover",
        "probe"
    );
    for m in &r.members {
        let probe = match m.last_probe_ms {
            Some(ms) => {
                format!("{ms:.1}ms {}", if m.last_probe_ok { "ok" } else { "FAIL" })
            }
            None => "-".into(),
        };
        let kind = if m.spare {
            format!("{} spare", member_status(m))
        } else {
            member_status(m).to_string()
        };
        out!(
            "{:>5} {:>3} {:<11} {:<8} {:>6} {:<19} {:>12}  {}",
            m.group,
            m.no,
            kind,
            if m.readable { "yes" } else { "no" },
            m.errors,
            failover_time(m.failover),
            probe,
            m.url
        );
    }
    if let Some(l) = &r.layout {
        out!("{}", layout_line(l));
    }
    for p in &r.problems {
        out!("problem: {p}");
    }
}
