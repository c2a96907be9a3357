//! `locsvc ul|groups|subscriber ...`: kamctl-like commands that talk to a
//! running locsvc over gRPC (TLS with `--ca`, a client certificate with
//! `--cert`/`--key`). Output is for people; `--json` prints one JSON
//! document for scripts. `groups` and `subscriber` are administration and
//! send `--admin-token`.

use locsvc_proto::v1 as pb;
use locsvc_proto::v1::location_client::LocationClient;
use locsvc_proto::v1::subscribers_client::SubscribersClient;
use serde_json::{Value, json};
use tonic::Request;
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::credentials::split_aor;

/// `println!` for command output, except that a reader who stopped
/// reading (`locsvc ul show ... | grep -q ...`, `| head`) ends the command
/// quietly with status 0, as `grep`/`head` users expect, instead of a
/// panic and a backtrace.
macro_rules! out {
    ($($arg:tt)*) => { $crate::cli::print_line(format_args!($($arg)*)) };
}

/// Writes one line of command output; see [`out!`].
pub fn print_line(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout
        .write_fmt(args)
        .and_then(|()| stdout.write_all(b"\n"))
    {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("locsvc: writing to stdout: {e}");
        std::process::exit(1);
    }
}

mod groups;
pub use groups::{GroupsCommand, run_groups};

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
    Show {
        aor: String,
        /// Only the binding with this record id (Kamailio's ruid).
        #[arg(long)]
        ruid: Option<String>,
    },
    /// Remove one contact of an AoR, or all of them.
    Rm {
        aor: String,
        #[arg(conflicts_with = "ruid")]
        contact: Option<String>,
        /// Remove the binding with this record id instead.
        #[arg(long)]
        ruid: Option<String>,
    },
    /// Print every valid binding (of one group with --group).
    Dump {
        #[arg(long, default_value_t = 0)]
        group: u32,
    },
    /// Count contacts and AoRs per group.
    Stats,
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
type Intercepted = tonic::service::interceptor::InterceptedService<Channel, AuthFn>;
type Client = LocationClient<Intercepted>;

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
        "permanent": b.permanent,
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
    if b.permanent {
        s.push_str(" (permanent)");
    }
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
        out!("{v}");
    } else if bindings.is_empty() {
        out!("AoR: {aor} (group {group}): no valid bindings");
    } else {
        out!("AoR: {aor} (group {group})");
        for b in bindings {
            out!("{}", binding_line(b));
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
            let spec = pb::ContactSpec {
                uri: contact.clone(),
                expires: *expires,
                q: *q,
                ..Default::default()
            };
            ul_save(&mut c, args.json, table, aor, spec).await
        }
        UlCommand::Show { aor, ruid } => {
            let req = pb::LookupRequest {
                table,
                aor: aor.clone(),
                ruid: ruid.clone().unwrap_or_default(),
                ..Default::default()
            };
            ul_show(&mut c, args.json, req).await
        }
        UlCommand::Rm { aor, contact, ruid } => {
            let req = pb::RemoveRequest {
                table,
                aor: aor.clone(),
                contact: contact.clone().unwrap_or_default(),
                ruid: ruid.clone().unwrap_or_default(),
            };
            ul_rm(&mut c, args.json, req).await
        }
        UlCommand::Dump { group } => ul_dump(&mut c, args.json, table, *group).await,
        UlCommand::Stats => ul_stats(&mut c, args.json, table).await,
    }
}

/// `ul save`: registers one contact under a call-id of its own.
async fn ul_save(
    c: &mut Client,
    json_out: bool,
    table: String,
    aor: &str,
    contact: pb::ContactSpec,
) -> anyhow::Result<()> {
    let r = c
        .save(pb::SaveRequest {
            table,
            aor: aor.to_string(),
            contacts: vec![contact],
            call_id: format!("locsvc-cli-{}", uuid::Uuid::new_v4().simple()),
            cseq: 1,
            user_agent: "locsvc-cli".into(),
            ..Default::default()
        })
        .await
        .map_err(rpc_error)?
        .into_inner();
    print_bindings(json_out, aor, r.group, &r.bindings);
    Ok(())
}

/// `ul show`.
async fn ul_show(c: &mut Client, json_out: bool, req: pb::LookupRequest) -> anyhow::Result<()> {
    let aor = req.aor.clone();
    let r = c.lookup(req).await.map_err(rpc_error)?.into_inner();
    print_bindings(json_out, &aor, r.group, &r.bindings);
    Ok(())
}

/// `ul rm`: one contact or ruid, or all of them without either.
async fn ul_rm(c: &mut Client, json_out: bool, req: pb::RemoveRequest) -> anyhow::Result<()> {
    let aor = req.aor.clone();
    let r = c.remove(req).await.map_err(rpc_error)?.into_inner();
    if json_out {
        out!(
            "{}",
            json!({"aor": aor, "group": r.group, "removed": r.removed})
        );
    } else {
        out!(
            "AoR: {aor} (group {}): {} binding(s) removed",
            r.group,
            r.removed
        );
    }
    Ok(())
}

/// `ul dump`: text is printed page by page as it streams in; JSON is one
/// array, so it waits for the last page.
async fn ul_dump(c: &mut Client, json_out: bool, table: String, group: u32) -> anyhow::Result<()> {
    let mut stream = c
        .dump(pb::DumpRequest {
            table,
            group,
            page_size: 0,
        })
        .await
        .map_err(rpc_error)?
        .into_inner();
    let mut all = Vec::new();
    while let Some(page) = stream.message().await.map_err(rpc_error)? {
        for ab in page.bindings {
            let Some(b) = ab.binding else { continue };
            if json_out {
                all.push(json!({"group": page.group, "aor": ab.aor, "binding": binding_json(&b)}));
            } else {
                out!(
                    "AoR: {} (group {})\n{}",
                    ab.aor,
                    page.group,
                    binding_line(&b)
                );
            }
        }
    }
    if json_out {
        out!("{}", Value::Array(all));
    }
    Ok(())
}

/// `ul stats`.
async fn ul_stats(c: &mut Client, json_out: bool, table: String) -> anyhow::Result<()> {
    let r = c
        .stats(pb::StatsRequest { table })
        .await
        .map_err(rpc_error)?
        .into_inner();
    if json_out {
        let groups: Vec<Value> = r
            .groups
            .iter()
            .map(|g| json!({"group": g.group, "contacts": g.contacts, "aors": g.aors, "member": g.member}))
            .collect();
        out!(
            "{}",
            json!({"contacts": r.contacts, "aors": r.aors, "groups": groups})
        );
    } else {
        out!("{:>6} {:>10} {:>10}", "group", "contacts", "aors");
        for g in &r.groups {
            out!("{:>6} {:>10} {:>10}", g.group, g.contacts, g.aors);
        }
        out!("{:>6} {:>10} {:>10}", "all", r.contacts, r.aors);
    }
    Ok(())
}

/// Runs one `subscriber` command against the server.
pub async fn run_subscriber(args: &ClientArgs, cmd: &SubscriberCommand) -> anyhow::Result<()> {
    let (channel, auth) = channel(args, true).await?;
    let mut c = SubscribersClient::with_interceptor(channel, auth);
    match cmd {
        SubscriberCommand::Add { aor, password } => {
            let (username, domain) = account(aor)?;
            let req = pb::AddSubscriberRequest {
                username: username.clone(),
                domain: domain.clone(),
                password: password.clone(),
            };
            c.add(req).await.map_err(rpc_error)?;
            let text = format!("subscriber {username}@{domain} added");
            print_account(args.json, &username, &domain, ("added", true), &text);
        }
        SubscriberCommand::Passwd { aor, password } => {
            let (username, domain) = account(aor)?;
            let req = pb::SetPasswordRequest {
                username: username.clone(),
                domain: domain.clone(),
                password: password.clone(),
            };
            c.set_password(req).await.map_err(rpc_error)?;
            let text = format!("password of {username}@{domain} changed");
            print_account(args.json, &username, &domain, ("password_set", true), &text);
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
            let all = list_subscribers(&mut c, domain.clone().unwrap_or_default()).await?;
            print_subscribers(args.json, &all);
        }
    }
    Ok(())
}

/// User and domain of a subscriber's AoR (`sip:user@domain` or `user@domain`).
fn account(aor: &str) -> anyhow::Result<(String, String)> {
    let (u, d) = split_aor(aor).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok((u.to_string(), d.to_string()))
}

/// Every subscriber (of `domain` unless empty), page after page.
async fn list_subscribers(
    c: &mut SubscribersClient<Intercepted>,
    domain: String,
) -> anyhow::Result<Vec<pb::SubscriberInfo>> {
    let mut all = Vec::new();
    let mut page_token = String::new();
    loop {
        let r = c
            .list(pb::ListSubscribersRequest {
                domain: domain.clone(),
                page_size: 0,
                page_token,
            })
            .await
            .map_err(rpc_error)?
            .into_inner();
        all.extend(r.subscribers);
        if r.next_page_token.is_empty() {
            return Ok(all);
        }
        page_token = r.next_page_token;
    }
}

/// `subscriber list`.
fn print_subscribers(json_out: bool, all: &[pb::SubscriberInfo]) {
    if json_out {
        let v: Vec<Value> = all
            .iter()
            .map(|s| json!({"username": s.username, "domain": s.domain, "has_password": s.has_password}))
            .collect();
        out!("{}", Value::Array(v));
    } else {
        for s in all {
            let kind = if s.has_password {
                "password"
            } else {
                "ha1 only"
            };
            out!("{}@{}  ({kind})", s.username, s.domain);
        }
        out!("{} subscriber(s)", all.len());
    }
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
        out!("{v}");
    } else {
        out!("{text}");
    }
}
