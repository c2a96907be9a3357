//! `locsvc ul ...`: kamctl-like commands that talk to a running locsvc over
//! gRPC. Output is for people; `--json` prints one JSON document for scripts.

use locsvc_proto::v1 as pb;
use locsvc_proto::v1::cluster_client::ClusterClient;
use locsvc_proto::v1::location_client::LocationClient;
use serde_json::{Value, json};
use tonic::Request;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};

/// One `ul` command.
#[derive(Debug, Clone, PartialEq, clap::Subcommand)]
pub enum UlCommand {
    /// Register a contact for an AoR.
    Save {
        aor: String,
        contact: String,
        /// Seconds until the binding expires.
        #[arg(long)]
        expires: Option<i64>,
        /// Contact preference, 0 to 1.
        #[arg(long)]
        q: Option<f32>,
    },
    /// Show the valid bindings of an AoR, best first.
    Show { aor: String },
    /// Remove one contact of an AoR, or all of them.
    Rm {
        aor: String,
        contact: Option<String>,
    },
    /// Print every valid binding (of one group with --group).
    Dump {
        #[arg(long, default_value_t = 0)]
        group: u32,
    },
    /// Count contacts and AoRs per group.
    Stats,
}

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
    },
}

/// Connection options shared by every `ul` command.
#[derive(Debug, Clone, PartialEq, clap::Args)]
pub struct ClientArgs {
    /// locsvc gRPC address.
    #[arg(
        long,
        global = true,
        env = "LOCSVC_SERVER",
        default_value = "http://127.0.0.1:50051"
    )]
    pub server: String,
    /// Bearer token, when the server requires one.
    #[arg(long, global = true, env = "LOCSVC_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Location table.
    #[arg(long, global = true, default_value = "location")]
    pub table: String,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
}

/// Adds the bearer token to every request.
type AuthFn = Box<dyn FnMut(Request<()>) -> Result<Request<()>, tonic::Status> + Send>;
type Client = LocationClient<tonic::service::interceptor::InterceptedService<Channel, AuthFn>>;

async fn connect(args: &ClientArgs) -> anyhow::Result<Client> {
    let (channel, auth) = channel(args).await?;
    Ok(LocationClient::with_interceptor(channel, auth))
}

async fn channel(args: &ClientArgs) -> anyhow::Result<(Channel, AuthFn)> {
    let channel = Endpoint::from_shared(args.server.clone())?
        .connect_timeout(std::time::Duration::from_secs(3))
        .timeout(std::time::Duration::from_secs(30))
        .connect()
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach locsvc at {}: {e}", args.server))?;
    let header: Option<MetadataValue<_>> = match &args.token {
        Some(t) => Some(format!("Bearer {t}").parse()?),
        None => None,
    };
    let auth: AuthFn = Box::new(move |mut r: Request<()>| {
        if let Some(h) = &header {
            r.metadata_mut().insert("authorization", h.clone());
        }
        Ok(r)
    });
    Ok((channel, auth))
}

fn binding_json(b: &pb::Binding) -> Value {
    json!({
        "contact": b.contact,
        "expires_in": b.expires_in,
        "q": b.q,
        "call_id": b.call_id,
        "cseq": b.cseq,
        "path": b.path,
        "received": b.received,
        "user_agent": b.user_agent,
        "socket": b.socket,
        "instance": b.instance,
        "reg_id": b.reg_id,
        "ruid": b.ruid,
        "last_modified": b.last_modified,
    })
}

fn binding_line(b: &pb::Binding) -> String {
    let mut s = format!("  Contact: <{}>;expires={}", b.contact, b.expires_in);
    if let Some(q) = b.q {
        s.push_str(&format!(";q={q:.2}"));
    }
    if !b.received.is_empty() {
        s.push_str(&format!(";received=\"{}\"", b.received));
    }
    if !b.instance.is_empty() {
        s.push_str(&format!(";+sip.instance=\"{}\"", b.instance));
    }
    if !b.path.is_empty() {
        s.push_str(&format!("\n    Path: {}", b.path.join(",")));
    }
    if !b.user_agent.is_empty() {
        s.push_str(&format!("\n    User-Agent: {}", b.user_agent));
    }
    s
}

fn print_bindings(json: bool, aor: &str, group: u32, bindings: &[pb::Binding]) {
    if json {
        let v = json!({"aor": aor, "group": group, "bindings": bindings.iter().map(binding_json).collect::<Vec<_>>()});
        println!("{v}");
    } else if bindings.is_empty() {
        println!("AoR: {aor} (group {group}): no valid bindings");
    } else {
        println!("AoR: {aor} (group {group})");
        for b in bindings {
            println!("{}", binding_line(b));
        }
    }
}

/// A gRPC error as one readable line (code, then the server's message).
fn rpc_error(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", s.code(), s.message())
}

/// Runs one `ul` command against the server.
pub async fn run(args: &ClientArgs, cmd: &UlCommand) -> anyhow::Result<()> {
    let mut c = connect(args).await?;
    let table = args.table.clone();
    match cmd {
        UlCommand::Save {
            aor,
            contact,
            expires,
            q,
        } => {
            let r = c
                .save(pb::SaveRequest {
                    table,
                    aor: aor.clone(),
                    contacts: vec![pb::ContactSpec {
                        uri: contact.clone(),
                        expires: *expires,
                        q: *q,
                        ..Default::default()
                    }],
                    call_id: format!("locsvc-cli-{}", uuid::Uuid::new_v4().simple()),
                    cseq: 1,
                    user_agent: "locsvc-cli".into(),
                    ..Default::default()
                })
                .await
                .map_err(rpc_error)?
                .into_inner();
            print_bindings(args.json, aor, r.group, &r.bindings);
        }
        UlCommand::Show { aor } => {
            let r = c
                .lookup(pb::LookupRequest {
                    table,
                    aor: aor.clone(),
                })
                .await
                .map_err(rpc_error)?
                .into_inner();
            print_bindings(args.json, aor, r.group, &r.bindings);
        }
        UlCommand::Rm { aor, contact } => {
            let r = c
                .remove(pb::RemoveRequest {
                    table,
                    aor: aor.clone(),
                    contact: contact.clone().unwrap_or_default(),
                })
                .await
                .map_err(rpc_error)?
                .into_inner();
            if args.json {
                println!(
                    "{}",
                    json!({"aor": aor, "group": r.group, "removed": r.removed})
                );
            } else {
                println!(
                    "AoR: {aor} (group {}): {} binding(s) removed",
                    r.group, r.removed
                );
            }
        }
        UlCommand::Dump { group } => {
            let mut stream = c
                .dump(pb::DumpRequest {
                    table,
                    group: *group,
                    page_size: 0,
                })
                .await
                .map_err(rpc_error)?
                .into_inner();
            let mut all = Vec::new();
            while let Some(page) = stream.message().await.map_err(rpc_error)? {
                for ab in page.bindings {
                    let Some(b) = ab.binding else { continue };
                    if args.json {
                        all.push(json!({"group": page.group, "aor": ab.aor, "binding": binding_json(&b)}));
                    } else {
                        println!(
                            "AoR: {} (group {})\n{}",
                            ab.aor,
                            page.group,
                            binding_line(&b)
                        );
                    }
                }
            }
            if args.json {
                println!("{}", Value::Array(all));
            }
        }
        UlCommand::Stats => {
            let r = c
                .stats(pb::StatsRequest { table })
                .await
                .map_err(rpc_error)?
                .into_inner();
            if args.json {
                let groups: Vec<Value> = r
                    .groups
                    .iter()
                    .map(|g| json!({"group": g.group, "contacts": g.contacts, "aors": g.aors, "member": g.member}))
                    .collect();
                println!(
                    "{}",
                    json!({"contacts": r.contacts, "aors": r.aors, "groups": groups})
                );
            } else {
                println!("{:>6} {:>10} {:>10}", "group", "contacts", "aors");
                for g in &r.groups {
                    println!("{:>6} {:>10} {:>10}", g.group, g.contacts, g.aors);
                }
                println!("{:>6} {:>10} {:>10}", "all", r.contacts, r.aors);
            }
        }
    }
    Ok(())
}

/// Runs one `groups` command against the server.
pub async fn run_groups(args: &ClientArgs, cmd: &GroupsCommand) -> anyhow::Result<()> {
    let (channel, auth) = channel(args).await?;
    let mut c = ClusterClient::with_interceptor(channel, auth);
    match cmd {
        GroupsCommand::List => {
            let r = c
                .list_groups(pb::ListGroupsRequest {})
                .await
                .map_err(rpc_error)?
                .into_inner();
            let status = |m: &pb::MemberInfo| match pb::MemberStatus::try_from(m.status) {
                Ok(pb::MemberStatus::On) => "on",
                Ok(pb::MemberStatus::Off) => "off",
                Ok(pb::MemberStatus::Maintenance) => "maintenance",
                _ => "?",
            };
            let failover = |t: i64| {
                chrono::DateTime::from_timestamp(t, 0)
                    .filter(|_| t > 0)
                    .map_or_else(
                        || "-".to_string(),
                        |d| d.format("%Y-%m-%d %H:%M:%S").to_string(),
                    )
            };
            if args.json {
                let members: Vec<Value> = r
                    .members
                    .iter()
                    .map(|m| {
                        json!({
                            "group": m.group, "no": m.no, "url": m.url, "status": status(m),
                            "errors": m.errors, "failover": m.failover, "readable": m.readable,
                            "spare": m.spare, "rg": m.risk_group, "transport_errors": m.transport_errors,
                            "last_probe_ms": m.last_probe_ms, "last_probe_ok": m.last_probe_ok,
                        })
                    })
                    .collect();
                println!(
                    "{}",
                    json!({"generation": r.generation, "members": members, "problems": r.problems})
                );
                return Ok(());
            }
            println!(
                "{:>5} {:>3} {:<11} {:<8} {:>6} {:<19} {:>12}  url",
                "group", "no", "status", "readable", "errors", "failover", "probe"
            );
            for m in &r.members {
                let probe = match m.last_probe_ms {
                    Some(ms) => {
                        format!("{ms:.1}ms {}", if m.last_probe_ok { "ok" } else { "FAIL" })
                    }
                    None => "-".into(),
                };
                let kind = if m.spare {
                    format!("{} spare", status(m))
                } else {
                    status(m).to_string()
                };
                println!(
                    "{:>5} {:>3} {:<11} {:<8} {:>6} {:<19} {:>12}  {}",
                    m.group,
                    m.no,
                    kind,
                    if m.readable { "yes" } else { "no" },
                    m.errors,
                    failover(m.failover),
                    probe,
                    m.url
                );
            }
            for p in &r.problems {
                println!("problem: {p}");
            }
        }
        GroupsCommand::SetStatus { group, no, status } => {
            let s = match status.as_str() {
                "on" => pb::MemberStatus::On,
                "off" => pb::MemberStatus::Off,
                _ => pb::MemberStatus::Maintenance,
            };
            c.set_status(pb::SetStatusRequest {
                group: *group,
                no: *no,
                status: s as i32,
            })
            .await
            .map_err(rpc_error)?;
            if args.json {
                println!("{}", json!({"group": group, "no": no, "status": status}));
            } else {
                println!("member {group}/{no} set to {status} in locdb");
            }
        }
    }
    Ok(())
}
