//! `locsvc ul|groups|subscriber ...`: kamctl-like commands that talk to a
//! running locsvc over gRPC (TLS with `--ca`, a client certificate with
//! `--cert`/`--key`). Output is for people; `--json` prints one JSON
//! document for scripts. `groups` and `subscriber` are administration and
//! send `--admin-token`.

use locsvc_proto::v1 as pb;
use locsvc_proto::v1::cluster_client::ClusterClient;
use locsvc_proto::v1::location_client::LocationClient;
use locsvc_proto::v1::subscribers_client::SubscribersClient;
use serde_json::{Value, json};
use tonic::Request;
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::credentials::split_aor;

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
        /// Also take out the last readable member of its group (its
        /// subscribers fail until another member is read again).
        #[arg(long)]
        force: bool,
    },
}

/// One `subscriber` command (kamctl's `add`, `passwd`, `rm`).
#[derive(Debug, Clone, PartialEq, clap::Subcommand)]
pub enum SubscriberCommand {
    /// Add a subscriber: `sip:user@domain` or `user@domain`, and a password.
    Add { aor: String, password: String },
    /// Change a subscriber's password.
    Passwd { aor: String, password: String },
    /// Remove a subscriber.
    Rm { aor: String },
    /// List subscribers (of one domain with --domain).
    List {
        #[arg(long)]
        domain: Option<String>,
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
    /// Admin bearer token (grpc.admin_token), sent by `groups` and
    /// `subscriber` commands.
    #[arg(
        long,
        global = true,
        env = "LOCSVC_ADMIN_TOKEN",
        hide_env_values = true
    )]
    pub admin_token: Option<String>,
    /// PEM CA certificate to trust for the server; connects over TLS.
    #[arg(long, global = true)]
    pub ca: Option<std::path::PathBuf>,
    /// PEM client certificate (with --key), for a server that requires one.
    #[arg(long, global = true, requires = "key")]
    pub cert: Option<std::path::PathBuf>,
    /// PEM private key of --cert.
    #[arg(long, global = true, requires = "cert")]
    pub key: Option<std::path::PathBuf>,
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
    let (channel, auth) = channel(args, false).await?;
    Ok(LocationClient::with_interceptor(channel, auth))
}

fn read_pem(what: &str, path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| anyhow::anyhow!("{what} {}: {e}", path.display()))
}

/// A channel to the server and the interceptor that adds the token: the
/// admin token for administration (`admin`), else the data-plane one (the
/// other when only one is given).
async fn channel(args: &ClientArgs, admin: bool) -> anyhow::Result<(Channel, AuthFn)> {
    let mut server = args.server.clone();
    let mut tls = None;
    if let Some(ca) = &args.ca {
        if let Some(rest) = server.strip_prefix("http://") {
            server = format!("https://{rest}");
        }
        let mut c =
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read_pem("--ca", ca)?));
        if let (Some(cert), Some(key)) = (&args.cert, &args.key) {
            c = c.identity(Identity::from_pem(
                read_pem("--cert", cert)?,
                read_pem("--key", key)?,
            ));
        }
        tls = Some(c);
    } else if args.cert.is_some() {
        anyhow::bail!("--cert and --key need --ca (the CA that signed the server's certificate)");
    }
    let mut endpoint = Endpoint::from_shared(server.clone())?
        .connect_timeout(std::time::Duration::from_secs(3))
        .timeout(std::time::Duration::from_secs(30));
    if let Some(c) = tls {
        endpoint = endpoint.tls_config(c)?;
    }
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach locsvc at {server}: {e}"))?;
    let token = if admin {
        args.admin_token.as_ref().or(args.token.as_ref())
    } else {
        args.token.as_ref().or(args.admin_token.as_ref())
    };
    let header: Option<MetadataValue<_>> = match token {
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
    let (channel, auth) = channel(args, true).await?;
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
                println!("{}", json!({"group": group, "no": no, "status": status}));
            } else {
                println!("member {group}/{no} set to {status} in locdb");
            }
        }
    }
    Ok(())
}

/// Runs one `subscriber` command against the server.
pub async fn run_subscriber(args: &ClientArgs, cmd: &SubscriberCommand) -> anyhow::Result<()> {
    let (channel, auth) = channel(args, true).await?;
    let mut c = SubscribersClient::with_interceptor(channel, auth);
    let account = |aor: &str| -> anyhow::Result<(String, String)> {
        let (u, d) = split_aor(aor).map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok((u.to_string(), d.to_string()))
    };
    match cmd {
        SubscriberCommand::Add { aor, password } | SubscriberCommand::Passwd { aor, password } => {
            let (username, domain) = account(aor)?;
            let (u, d, password) = (username.clone(), domain.clone(), password.clone());
            let (key, text) = if matches!(cmd, SubscriberCommand::Add { .. }) {
                let req = pb::AddSubscriberRequest {
                    username: u,
                    domain: d,
                    password,
                };
                c.add(req).await.map_err(rpc_error)?;
                ("added", format!("subscriber {username}@{domain} added"))
            } else {
                let req = pb::SetPasswordRequest {
                    username: u,
                    domain: d,
                    password,
                };
                c.set_password(req).await.map_err(rpc_error)?;
                let text = format!("password of {username}@{domain} changed");
                ("password_set", text)
            };
            print_account(args.json, &username, &domain, (key, true), &text);
        }
        SubscriberCommand::Rm { aor } => {
            let (username, domain) = account(aor)?;
            let r = c
                .remove(pb::RemoveSubscriberRequest {
                    username: username.clone(),
                    domain: domain.clone(),
                })
                .await
                .map_err(rpc_error)?
                .into_inner();
            let text = if r.removed {
                format!("subscriber {username}@{domain} removed")
            } else {
                format!("no subscriber {username}@{domain}")
            };
            print_account(args.json, &username, &domain, ("removed", r.removed), &text);
        }
        SubscriberCommand::List { domain } => {
            let mut all = Vec::new();
            let mut page_token = String::new();
            loop {
                let r = c
                    .list(pb::ListSubscribersRequest {
                        domain: domain.clone().unwrap_or_default(),
                        page_size: 0,
                        page_token,
                    })
                    .await
                    .map_err(rpc_error)?
                    .into_inner();
                all.extend(r.subscribers);
                if r.next_page_token.is_empty() {
                    break;
                }
                page_token = r.next_page_token;
            }
            if args.json {
                let v: Vec<Value> = all
                    .iter()
                    .map(|s| json!({"username": s.username, "domain": s.domain, "has_password": s.has_password}))
                    .collect();
                println!("{}", Value::Array(v));
            } else {
                for s in &all {
                    let kind = if s.has_password {
                        "password"
                    } else {
                        "ha1 only"
                    };
                    println!("{}@{}  ({kind})", s.username, s.domain);
                }
                println!("{} subscriber(s)", all.len());
            }
        }
    }
    Ok(())
}

/// Prints what a subscriber command did to `username@domain`: with `--json`
/// `{"username", "domain", <key>: <value>}`, else `text`.
fn print_account(
    json_out: bool,
    username: &str,
    domain: &str,
    (key, value): (&str, bool),
    text: &str,
) {
    if json_out {
        let mut v = json!({"username": username, "domain": domain});
        v[key] = json!(value);
        println!("{v}");
    } else {
        println!("{text}");
    }
}
