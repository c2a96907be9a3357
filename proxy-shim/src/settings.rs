//! The shim's configuration: its keys, their defaults and parsing, and the
//! rules across settings. Layering, environment names, lists and problem
//! reports follow the shared convention of `svc_base::settings`: the keys
//! are all top-level, so a variable is `PROXY_SHIM_` + the key upper-cased
//! (`PROXY_SHIM_RATE_LIMIT`), and a list is a TOML array or, in the
//! environment, a comma-separated string.
//!
//! Keys: `listen`, `advertise`, `locsvc` (list), `domains` (list, required;
//! `*` = every domain), `mode`, `table`, `locsvc_timeout_ms`,
//! `lookup_batch_max`, `lookup_batch_calls`, `max_in_flight`, `locsvc_token`, `metrics_listen` (an ip:port, or `off`),
//! `log_level`, `trusted` (list of CIDRs), `nat` (`auto`, `always`, `never`),
//! `max_forwards`; the flood limits (see `limits`): `rate_limit`,
//! `rate_burst`, `ban_secs`, `tcp_max_connections`, `tcp_max_per_source`,
//! `tcp_message_timeout_ms`; digest authentication: `auth`, `realm`,
//! `auth_secret`, `nonce_secs`, `credentials_cache_secs`, `auth_algorithms`
//! (list); TLS to locsvc: `locsvc_ca`, `locsvc_cert`, `locsvc_key` (PEM
//! paths, read when the app is built) and `locsvc_tls_domain`; traces:
//! `trace_otlp_endpoint`, `trace_sample_ratio`, `trace_service_name`.

use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

pub use svc_base::settings::SettingsError;
use svc_base::settings::{Refusal, Value};
use svc_base::telemetry::{self, TraceSettings};

/// How requests to a registered user are routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forward statelessly to the best contact (RFC 3261 §16.11).
    Proxy,
    /// Answer 302 with every contact (a pure redirect server).
    Redirect,
}

/// Everything the shim reads from configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// UDP and TCP listen address (port 0 picks a free port, the same for both).
    pub listen: SocketAddr,
    /// The host (and port) we put in our Via and recognise as ourselves;
    /// None = the bound address. Needed when listening on 0.0.0.0.
    pub advertise: Option<Advertise>,
    /// locsvc gRPC endpoints, tried in order with failover.
    pub locsvc: Vec<String>,
    /// Domains served, lower-case; `*` serves every domain. Required: a
    /// shim that serves every domain by accident registers anything.
    pub domains: Vec<String>,
    /// Forward to contacts, or redirect to them.
    pub mode: Mode,
    /// Location table (empty = locsvc's default `location`).
    pub table: String,
    /// Whole budget of one locsvc call, failover included; under T1 (500 ms).
    pub locsvc_timeout: Duration,
    /// How lookups are coalesced into `LookupMany` calls
    /// (`lookup_batch_max`, `lookup_batch_calls`).
    pub lookup_batching: crate::locsvc_client::Batching,
    /// Requests being handled at once; beyond it new requests get 503.
    pub max_in_flight: usize,
    /// Bearer token for locsvc, when it requires one.
    pub locsvc_token: Option<String>,
    /// PEM CA certificate(s) that signed locsvc's server certificate. Set,
    /// every locsvc channel uses TLS (an `http://` URL is upgraded to
    /// `https://`); required for an `https://` URL, as this build has no
    /// system trust roots.
    pub locsvc_ca: Option<PathBuf>,
    /// PEM client certificate for a locsvc that requires one (mTLS); with
    /// `locsvc_key`, both or neither.
    pub locsvc_cert: Option<PathBuf>,
    /// PEM private key of `locsvc_cert`.
    pub locsvc_key: Option<PathBuf>,
    /// Name verified in locsvc's certificate when it is not the URL's host
    /// (e.g. the URL is an IP address and the certificate names a host).
    pub locsvc_tls_domain: Option<String>,
    /// Where Prometheus metrics are served over HTTP; None = not served.
    pub metrics_listen: Option<SocketAddr>,
    /// A tracing filter (`info`, `info,proxy_shim=debug`).
    pub log_level: String,
    /// OTLP trace export (off unless an endpoint is set).
    pub traces: TraceSettings,
    /// Sources that may relay through us and bring Path (edge proxies
    /// that authenticate their users themselves).
    pub trusted: Vec<Cidr>,
    /// When a contact's next hop is the REGISTER's source instead of the
    /// Contact address.
    pub nat: NatMode,
    /// Max-Forwards of a forwarded request is at most this (a request
    /// arriving with 255 would otherwise bounce that many times).
    pub max_forwards: u32,
    /// Digest authentication of REGISTER and of requests from our domains.
    pub auth: AuthMode,
    /// Digest realm; None = the To (REGISTER) or From domain.
    pub realm: Option<String>,
    /// Key of the stateless nonces; shims behind one name share it so any
    /// of them verifies the others' nonces. None = random per process.
    pub auth_secret: Option<String>,
    /// Seconds a nonce is accepted before `stale=true`.
    pub nonce_secs: u64,
    /// Seconds credentials are cached (a changed password is picked up at
    /// the first failed answer, whatever this says).
    pub credentials_cache_secs: u64,
    /// Digest algorithms offered, most preferred first.
    pub auth_algorithms: Vec<crate::digest::Algorithm>,
    /// Messages per second a source (IPv4 address, IPv6 /64) may send
    /// sustained; 0 = no limit. `trusted` sources are exempt.
    pub rate_limit: u32,
    /// Messages a quiet source may send at once.
    pub rate_burst: u32,
    /// How long a source over `rate_limit` is ignored (`ban_secs`); zero =
    /// only the messages over the rate are dropped.
    pub ban: Duration,
    /// Open TCP connections at most; a new one beyond it is closed at once.
    pub tcp_max_connections: usize,
    /// Open TCP connections per source at most (not for `trusted` ones).
    pub tcp_max_per_source: usize,
    /// From the first byte of a TCP message to its last
    /// (`tcp_message_timeout_ms`); a slower sender is disconnected.
    pub tcp_message_timeout: Duration,
}

/// Whether requests are authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// HTTP Digest (RFC 3261 §22) against locsvc's `subscriber` table.
    Digest,
    /// None (a trusted network, or an edge in front that authenticates).
    Off,
}

/// When to store the REGISTER's source as a contact's next hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatMode {
    /// Per contact, when NAT is detected (see `register`).
    Auto,
    /// Always (every contact is reached through the REGISTER's source).
    Always,
    /// Never (contacts are reached at their own address).
    Never,
}

pub use crate::netaddr::Cidr;

/// The `advertise` setting: a host (IP address or name) and an optional
/// port (None = the bound port).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advertise {
    /// An IP address (without brackets) or a host name.
    pub host: String,
    /// The port, when one is given.
    pub port: Option<u16>,
}

impl std::str::FromStr for Advertise {
    type Err = ();

    /// `host`, `host:port`, `[v6]`, `[v6]:port` or a bare IPv6 address.
    fn from_str(s: &str) -> Result<Self, ()> {
        let s = s.trim();
        if let Ok(a) = s.parse::<SocketAddr>() {
            return Ok(Self {
                host: a.ip().to_string(),
                port: Some(a.port()),
            });
        }
        let bare = match s.strip_prefix('[') {
            Some(rest) => rest.strip_suffix(']').ok_or(())?,
            None => s,
        };
        if let Ok(ip) = bare.parse::<std::net::IpAddr>() {
            return Ok(Self {
                host: ip.to_string(),
                port: None,
            });
        }
        let (host, port) = match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p.parse::<u16>().map_err(|_| ())?)),
            None => (s, None),
        };
        let name_ok = !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        if !name_ok || port == Some(0) {
            return Err(());
        }
        Ok(Self {
            host: host.to_ascii_lowercase(),
            port,
        })
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 5060)),
            advertise: None,
            locsvc: vec!["http://127.0.0.1:50051".into()],
            domains: Vec::new(),
            mode: Mode::Proxy,
            table: String::new(),
            locsvc_timeout: Duration::from_millis(400),
            lookup_batching: crate::locsvc_client::Batching::default(),
            max_in_flight: 1024,
            locsvc_token: None,
            locsvc_ca: None,
            locsvc_cert: None,
            locsvc_key: None,
            locsvc_tls_domain: None,
            metrics_listen: Some(SocketAddr::from(([127, 0, 0, 1], 9465))),
            log_level: "info".into(),
            traces: TraceSettings::off("proxy-shim"),
            trusted: Vec::new(),
            nat: NatMode::Auto,
            max_forwards: 70,
            auth: AuthMode::Digest,
            realm: None,
            auth_secret: None,
            nonce_secs: 300,
            credentials_cache_secs: 30,
            // MD5 first: many phones read only the first challenge and
            // know no other; SHA-256-capable ones find theirs second.
            auth_algorithms: vec![
                crate::digest::Algorithm::Md5,
                crate::digest::Algorithm::Sha256,
            ],
            rate_limit: 50,
            rate_burst: 100,
            ban: Duration::from_secs(60),
            tcp_max_connections: 1024,
            tcp_max_per_source: 32,
            tcp_message_timeout: Duration::from_secs(10),
        }
    }
}

/// Prefix of every `PROXY_SHIM_*` setting variable.
const ENV_PREFIX: &str = "PROXY_SHIM_";

/// `PROXY_SHIM_*` variables that are flags of the binary, not settings.
const NOT_SETTINGS: &[&str] = &["PROXY_SHIM_CONFIG"];

/// The shim's settings layers, later layers win.
#[derive(Debug)]
pub struct Layers(svc_base::settings::Layers);

impl Default for Layers {
    fn default() -> Self {
        Self(svc_base::settings::Layers::new(ENV_PREFIX, NOT_SETTINGS))
    }
}

impl Layers {
    /// Adds the settings of a TOML document.
    pub fn toml(&mut self, text: &str, source: &str) {
        self.0.toml(text, source);
    }

    /// Adds `PROXY_SHIM_*` variables from `vars`.
    pub fn env(&mut self, vars: impl IntoIterator<Item = (String, String)>) {
        self.0.env(vars);
    }

    /// A flag: replaces whatever a lower layer set.
    pub fn set(&mut self, key: &str, vals: Vec<String>) {
        self.0.set(key, vals, "command line");
    }

    /// Resolves every layer into settings, or every problem at once.
    pub fn resolve(self) -> Result<Settings, SettingsError> {
        let mut s = Settings::default();
        let mut problems = self.0.resolve(|key, value| apply(&mut s, key, value));
        problems.extend(s.problems());
        SettingsError::check(problems).map(|()| s)
    }
}

/// `v` as a number within `range`, or `why`.
fn in_range<T>(v: &str, range: RangeInclusive<T>, why: &str) -> Result<T, Refusal>
where
    T: FromStr + PartialOrd,
{
    v.parse::<T>()
        .ok()
        .filter(|n| range.contains(n))
        .ok_or_else(|| why.into())
}

/// Parses one key into `s`: list keys read `value.list()`, the others
/// `value.one()`.
fn apply(s: &mut Settings, key: &str, value: &Value) -> Result<(), Refusal> {
    let known = apply_sip(s, key, value)?
        || apply_locsvc(s, key, value)?
        || apply_limits(s, key, value)?
        || apply_auth(s, key, value)?;
    if known { Ok(()) } else { Err(Refusal::Unknown) }
}

/// The SIP side: addresses, domains, routing, observability; whether `key`
/// is one of them.
fn apply_sip(s: &mut Settings, key: &str, value: &Value) -> Result<bool, Refusal> {
    match key {
        "listen" => s.listen = value.one()?.parse().map_err(|_| "is not an ip:port")?,
        "advertise" => {
            s.advertise = match value.one()? {
                "" => None,
                v => Some(
                    v.parse::<Advertise>()
                        .map_err(|()| "must be a host or host:port (IP address or DNS name)")?,
                ),
            }
        }
        "domains" => {
            s.domains = value
                .list()
                .iter()
                .map(|d| d.to_ascii_lowercase())
                .collect()
        }
        "mode" => {
            s.mode = match value.one()? {
                "proxy" => Mode::Proxy,
                "redirect" => Mode::Redirect,
                _ => return Err("must be proxy or redirect".into()),
            }
        }
        "metrics_listen" => {
            s.metrics_listen = match value.one()? {
                "off" | "" => None,
                v => Some(v.parse().map_err(|_| "must be an ip:port or `off`")?),
            }
        }
        "log_level" => s.log_level = value.one()?.to_string(),
        "trace_otlp_endpoint" => s.traces.otlp_endpoint = telemetry::otlp_endpoint(value.one()?)?,
        "trace_sample_ratio" => s.traces.sample_ratio = telemetry::sample_ratio(value.one()?)?,
        "trace_service_name" => s.traces.service_name = telemetry::service_name(value.one()?)?,
        "trusted" => s.trusted = trusted(value)?,
        "nat" => {
            s.nat = match value.one()? {
                "auto" => NatMode::Auto,
                "always" => NatMode::Always,
                "never" => NatMode::Never,
                _ => return Err("must be auto, always or never".into()),
            }
        }
        "max_forwards" => s.max_forwards = in_range(value.one()?, 1..=255, "must be 1..=255")?,
        _ => return Ok(false),
    }
    Ok(true)
}

/// How locsvc is reached; whether `key` is one of those settings.
fn apply_locsvc(s: &mut Settings, key: &str, value: &Value) -> Result<bool, Refusal> {
    match key {
        "locsvc" => s.locsvc = locsvc_urls(value)?,
        "table" => s.table = value.one()?.to_string(),
        "locsvc_timeout_ms" => {
            s.locsvc_timeout = Duration::from_millis(in_range(
                value.one()?,
                1..=10_000,
                "must be 1..=10000 milliseconds",
            )?)
        }
        "lookup_batch_max" => {
            s.lookup_batching.max_items = in_range(
                value.one()?,
                0..=1000,
                "must be 0..=1000 (0: one Lookup call per lookup)",
            )?
        }
        "lookup_batch_calls" => {
            s.lookup_batching.max_calls = in_range(value.one()?, 1..=256, "must be 1..=256")?
        }
        "locsvc_token" => s.locsvc_token = opt_string(value.one()?),
        "locsvc_ca" => s.locsvc_ca = pem_path(value.one()?),
        "locsvc_cert" => s.locsvc_cert = pem_path(value.one()?),
        "locsvc_key" => s.locsvc_key = pem_path(value.one()?),
        "locsvc_tls_domain" => {
            s.locsvc_tls_domain = match value.one()? {
                "" => None,
                d if valid_server_name(d) => Some(d.to_ascii_lowercase()),
                _ => {
                    return Err("must be a DNS name or an IP address (the name in \
                                locsvc's certificate)"
                        .into());
                }
            }
        }
        _ => return Ok(false),
    }
    Ok(true)
}

/// Load and flood limits; whether `key` is one of them.
fn apply_limits(s: &mut Settings, key: &str, value: &Value) -> Result<bool, Refusal> {
    match key {
        "max_in_flight" => {
            s.max_in_flight = in_range(value.one()?, 1..=usize::MAX, "must be a positive integer")?
        }
        "rate_limit" => {
            s.rate_limit = in_range(
                value.one()?,
                0..=1_000_000,
                "must be 0..=1000000 messages per second (0 = off)",
            )?
        }
        "rate_burst" => {
            s.rate_burst = in_range(value.one()?, 1..=1_000_000, "must be 1..=1000000 messages")?
        }
        "ban_secs" => {
            s.ban = Duration::from_secs(in_range(
                value.one()?,
                0..=86_400,
                "must be 0..=86400 seconds",
            )?)
        }
        "tcp_max_connections" => {
            s.tcp_max_connections = in_range(value.one()?, 1..=1_000_000, "must be 1..=1000000")?
        }
        "tcp_max_per_source" => {
            s.tcp_max_per_source = in_range(value.one()?, 1..=1_000_000, "must be 1..=1000000")?
        }
        "tcp_message_timeout_ms" => {
            s.tcp_message_timeout = Duration::from_millis(in_range(
                value.one()?,
                1..=300_000,
                "must be 1..=300000 milliseconds",
            )?)
        }
        _ => return Ok(false),
    }
    Ok(true)
}

/// Digest authentication; whether `key` is one of its settings.
fn apply_auth(s: &mut Settings, key: &str, value: &Value) -> Result<bool, Refusal> {
    match key {
        "auth" => {
            s.auth = match value.one()? {
                "digest" => AuthMode::Digest,
                "off" => AuthMode::Off,
                _ => return Err("must be digest or off".into()),
            }
        }
        "realm" => s.realm = opt_string(value.one()?).map(|r| r.to_ascii_lowercase()),
        "auth_secret" => s.auth_secret = opt_string(value.one()?),
        "nonce_secs" => {
            s.nonce_secs = in_range(value.one()?, 10..=86_400, "must be 10..=86400 seconds")?
        }
        "credentials_cache_secs" => {
            s.credentials_cache_secs = in_range(value.one()?, 0..=3600, "must be 0..=3600 seconds")?
        }
        "auth_algorithms" => s.auth_algorithms = auth_algorithms(value)?,
        _ => return Ok(false),
    }
    Ok(true)
}

/// The `locsvc` list: at least one address, each `http://` or `https://`.
fn locsvc_urls(value: &Value) -> Result<Vec<String>, Refusal> {
    let urls = value.list();
    if urls.is_empty() {
        return Err("needs at least one address".into());
    }
    let bad: Vec<&String> = urls
        .iter()
        .filter(|v| !(v.starts_with("http://") || v.starts_with("https://")))
        .collect();
    if !bad.is_empty() {
        return Err(format!("must be http(s):// URLs, not {bad:?}").into());
    }
    Ok(urls)
}

/// The `trusted` list: every item an address or a CIDR.
fn trusted(value: &Value) -> Result<Vec<Cidr>, Refusal> {
    let (good, bad): (Vec<_>, Vec<_>) = value
        .list()
        .into_iter()
        .map(|v| v.parse::<Cidr>().map_err(|()| v))
        .partition(Result::is_ok);
    if !bad.is_empty() {
        let bad: Vec<String> = bad.into_iter().filter_map(Result::err).collect();
        return Err(format!("must be addresses or CIDRs, not {bad:?}").into());
    }
    Ok(good.into_iter().filter_map(Result::ok).collect())
}

/// The `auth_algorithms` list: known names, duplicates dropped, at least one.
fn auth_algorithms(value: &Value) -> Result<Vec<crate::digest::Algorithm>, Refusal> {
    let mut algs = Vec::new();
    let mut bad = Vec::new();
    for v in value.list() {
        match crate::digest::Algorithm::parse(&v) {
            Some(a) if !algs.contains(&a) => algs.push(a),
            Some(_) => {}
            None => bad.push(v),
        }
    }
    if !bad.is_empty() {
        return Err(format!("must be md5 or sha-256, not {bad:?}").into());
    }
    if algs.is_empty() {
        return Err("needs at least one algorithm".into());
    }
    Ok(algs)
}

impl Settings {
    /// Settings from an optional TOML file, the process environment, then
    /// flags (`overrides`, key → values).
    pub fn load(
        file: Option<&std::path::Path>,
        overrides: Vec<(&str, Vec<String>)>,
    ) -> Result<Self, SettingsError> {
        let mut layers = Layers::default();
        layers.0.stack(file, std::env::vars(), overrides);
        layers.resolve()
    }

    /// Whether `domain` is served (case-insensitive; `*` = all).
    pub fn serves(&self, domain: &str) -> bool {
        self.domains
            .iter()
            .any(|d| d == "*" || d.eq_ignore_ascii_case(domain))
    }

    /// Whether `ip` is a trusted source.
    pub fn trusts(&self, ip: std::net::IpAddr) -> bool {
        self.trusted.iter().any(|c| c.contains(ip))
    }

    /// Rules that involve the whole configuration (also checked when an
    /// app is built from settings made in code); every problem, one per line.
    pub fn check(&self) -> Result<(), String> {
        let p = self.problems();
        if p.is_empty() {
            Ok(())
        } else {
            Err(p.join("\n  "))
        }
    }

    /// Whether the channels to locsvc use TLS (`locsvc_ca` is set).
    pub fn locsvc_tls(&self) -> bool {
        self.locsvc_ca.is_some()
    }

    /// Every rule `check` enforces that is broken, each naming its settings.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.domains.is_empty() {
            p.push(
                "`domains` is required: the domains this shim serves \
                 (--domain example.com, repeatable), or `*` for every domain"
                    .into(),
            );
        }
        if self.locsvc_ca.is_none() {
            for url in self.locsvc.iter().filter(|u| u.starts_with("https://")) {
                p.push(format!(
                    "`locsvc` {url} is https:// but `locsvc_ca` is not set: this build has no \
                     system trust roots, so give the PEM CA that signed locsvc's certificate \
                     (--locsvc-ca)"
                ));
            }
        }
        match (&self.locsvc_cert, &self.locsvc_key) {
            (Some(_), None) => p.push(
                "`locsvc_cert` is set without `locsvc_key`: the client certificate for \
                 locsvc needs its private key (set both or neither)"
                    .into(),
            ),
            (None, Some(_)) => p.push(
                "`locsvc_key` is set without `locsvc_cert`: the private key for locsvc \
                 needs its client certificate (set both or neither)"
                    .into(),
            ),
            _ => {}
        }
        if !self.locsvc_tls() {
            let without_tls = [
                ("locsvc_cert", self.locsvc_cert.is_some()),
                ("locsvc_key", self.locsvc_key.is_some()),
                ("locsvc_tls_domain", self.locsvc_tls_domain.is_some()),
            ];
            for (key, set) in without_tls {
                if set {
                    p.push(format!(
                        "`{key}` needs TLS to locsvc: set `locsvc_ca` (the PEM CA that \
                         signed locsvc's certificate)"
                    ));
                }
            }
        }
        p
    }
}

/// A PEM path setting; empty = unset.
fn pem_path(v: &str) -> Option<PathBuf> {
    opt_string(v).map(PathBuf::from)
}

/// An optional string setting; empty = unset.
fn opt_string(v: &str) -> Option<String> {
    (!v.is_empty()).then(|| v.to_string())
}

/// An IP address or a DNS name (what rustls accepts as a server name).
fn valid_server_name(s: &str) -> bool {
    if s.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    s.len() <= 253
        && s.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Layers with the one required setting.
    fn served() -> Layers {
        let mut l = Layers::default();
        l.set("domains", vec!["example.com".into()]);
        l
    }

    #[test]
    fn domains_are_required_and_star_serves_every_domain() {
        let e = Layers::default().resolve().unwrap_err().to_string();
        assert!(e.contains("domains") && e.contains('*'), "{e}");
        let mut l = Layers::default();
        l.set("domains", vec!["*".into()]);
        let s = l.resolve().unwrap();
        assert!(s.serves("anything.example") && s.serves("example.com"));
        let s = served().resolve().unwrap();
        assert!(s.serves("EXAMPLE.com") && !s.serves("evil.test"));
    }

    #[test]
    fn trusted_nat_and_max_forwards_parse_or_are_reported() {
        let mut l = served();
        l.set("trusted", vec!["10.0.0.0/8".into(), "192.0.2.7".into()]);
        l.set("nat", vec!["never".into()]);
        l.set("max_forwards", vec!["30".into()]);
        let s = l.resolve().unwrap();
        assert!(s.trusts("10.1.2.3".parse().unwrap()));
        assert!(s.trusts("192.0.2.7".parse().unwrap()));
        assert!(!s.trusts("192.0.2.8".parse().unwrap()));
        assert_eq!((s.nat, s.max_forwards), (NatMode::Never, 30));
        assert_eq!(Settings::default().nat, NatMode::Auto);
        assert_eq!(Settings::default().max_forwards, 70);
        let mut l = served();
        l.set("trusted", vec!["10.0.0.0/40".into()]);
        l.set("nat", vec!["sometimes".into()]);
        l.set("max_forwards", vec!["256".into()]);
        let e = l.resolve().unwrap_err();
        assert_eq!(e.0.len(), 3, "{e}");
    }

    #[test]
    fn file_then_env_then_flags_win_in_that_order() {
        let mut l = served();
        l.toml(
            "listen = \"127.0.0.1:5070\"\nlocsvc = [\"http://a:1\", \"http://b:2\"]\nmode = \"redirect\"",
            "f.toml",
        );
        l.env([("PROXY_SHIM_MODE".to_string(), "proxy".to_string())]);
        l.set("domains", vec!["Example.COM".into()]);
        let s = l.resolve().unwrap();
        assert_eq!(s.listen.port(), 5070);
        assert_eq!(s.locsvc, ["http://a:1", "http://b:2"]);
        assert_eq!(s.mode, Mode::Proxy);
        assert!(s.serves("example.com") && !s.serves("other.org"));
    }

    #[test]
    fn env_lists_are_comma_separated_and_single_values_keep_their_commas() {
        let mut l = Layers::default();
        l.env([
            (
                "PROXY_SHIM_DOMAINS".to_string(),
                "A.example, b.example".to_string(),
            ),
            ("PROXY_SHIM_LOCSVC".into(), "http://a:1,http://b:2".into()),
            (
                "PROXY_SHIM_LOG_LEVEL".into(),
                "info,proxy_shim=debug".into(),
            ),
            ("PROXY_SHIM_CONFIG".into(), "read by the flag".into()),
        ]);
        let s = l.resolve().unwrap();
        assert_eq!(s.domains, ["a.example", "b.example"]);
        assert_eq!(s.locsvc, ["http://a:1", "http://b:2"]);
        assert_eq!(s.log_level, "info,proxy_shim=debug");
    }

    #[test]
    fn every_bad_or_unknown_setting_is_reported_at_once() {
        let mut l = served();
        l.toml("listen = \"nope\"\nmode = \"x\"\ncolour = 1", "f.toml");
        let e = l.resolve().unwrap_err();
        assert_eq!(e.0.len(), 3, "{e}");
        assert!(e.to_string().contains("colour"));
    }

    #[test]
    fn metrics_listen_takes_an_address_or_off() {
        assert_eq!(
            Settings::default().metrics_listen,
            Some("127.0.0.1:9465".parse().unwrap())
        );
        let mut l = served();
        l.set("metrics_listen", vec!["off".into()]);
        assert_eq!(l.resolve().unwrap().metrics_listen, None);
        let mut l = served();
        l.toml("metrics_listen = \"127.0.0.1:0\"", "f.toml");
        assert_eq!(
            l.resolve().unwrap().metrics_listen,
            Some("127.0.0.1:0".parse().unwrap())
        );
        let mut l = served();
        l.set("metrics_listen", vec!["9465".into()]);
        assert!(
            l.resolve()
                .unwrap_err()
                .to_string()
                .contains("metrics_listen")
        );
    }

    #[test]
    fn advertise_takes_an_ip_or_a_name_with_an_optional_port() {
        let parse = |s: &str| s.parse::<Advertise>();
        let a = |host: &str, port: Option<u16>| {
            Ok(Advertise {
                host: host.into(),
                port,
            })
        };
        assert_eq!(parse("203.0.113.5"), a("203.0.113.5", None));
        assert_eq!(parse("203.0.113.5:5080"), a("203.0.113.5", Some(5080)));
        assert_eq!(parse("[2001:db8::1]:5080"), a("2001:db8::1", Some(5080)));
        assert_eq!(parse("2001:db8::1"), a("2001:db8::1", None));
        assert_eq!(parse("SIP.Example.com"), a("sip.example.com", None));
        assert_eq!(
            parse("sip.example.com:5070"),
            a("sip.example.com", Some(5070))
        );
        for bad in ["", "a b", "host:x", "host:0", "host:70000", "[::1"] {
            assert_eq!(parse(bad), Err(()), "{bad:?}");
        }
        let mut l = served();
        l.set("advertise", vec!["not a host".into()]);
        assert!(l.resolve().unwrap_err().to_string().contains("advertise"));
    }

    #[test]
    fn locsvc_tls_settings_come_from_every_layer() {
        let mut l = served();
        l.toml(
            "locsvc = [\"https://locsvc-1:50051\"]\nlocsvc_ca = \"/etc/ca.pem\"",
            "f.toml",
        );
        l.env([
            (
                "PROXY_SHIM_LOCSVC_CERT".to_string(),
                "/etc/shim.pem".to_string(),
            ),
            (
                "PROXY_SHIM_LOCSVC_KEY".to_string(),
                "/etc/shim.key".to_string(),
            ),
        ]);
        l.set("locsvc_tls_domain", vec!["LocSvc.Example.com".into()]);
        let s = l.resolve().unwrap();
        assert_eq!(s.locsvc_ca, Some(PathBuf::from("/etc/ca.pem")));
        assert_eq!(s.locsvc_cert, Some(PathBuf::from("/etc/shim.pem")));
        assert_eq!(s.locsvc_key, Some(PathBuf::from("/etc/shim.key")));
        assert_eq!(s.locsvc_tls_domain.as_deref(), Some("locsvc.example.com"));
        assert!(s.locsvc_tls());
        let d = Settings::default();
        assert!(!d.locsvc_tls() && d.locsvc_cert.is_none());
        // An IP address is a server name too.
        let mut l = served();
        l.set("locsvc_ca", vec!["ca.pem".into()]);
        l.set("locsvc_tls_domain", vec!["10.0.0.7".into()]);
        assert_eq!(
            l.resolve().unwrap().locsvc_tls_domain.as_deref(),
            Some("10.0.0.7")
        );
    }

    #[test]
    fn every_bad_locsvc_tls_setting_is_reported_by_name() {
        // https:// without a CA: no system roots in this build.
        let mut l = served();
        l.set(
            "locsvc",
            vec![
                "https://a:1".into(),
                "http://b:2".into(),
                "https://c:3".into(),
            ],
        );
        let e = l.resolve().unwrap_err();
        assert_eq!(e.0.len(), 2, "{e}");
        assert!(
            e.0.iter()
                .all(|m| m.contains("locsvc_ca") && m.contains("https://")),
            "{e}"
        );
        // A certificate without its key and the other way round.
        let mut l = served();
        l.set("locsvc_ca", vec!["ca.pem".into()]);
        l.set("locsvc_cert", vec!["c.pem".into()]);
        let e = l.resolve().unwrap_err().to_string();
        assert!(
            e.contains("`locsvc_cert` is set without `locsvc_key`"),
            "{e}"
        );
        let mut l = served();
        l.set("locsvc_ca", vec!["ca.pem".into()]);
        l.set("locsvc_key", vec!["k.pem".into()]);
        let e = l.resolve().unwrap_err().to_string();
        assert!(
            e.contains("`locsvc_key` is set without `locsvc_cert`"),
            "{e}"
        );
        // Client identity and server name mean nothing without TLS.
        let mut l = served();
        l.set("locsvc_cert", vec!["c.pem".into()]);
        l.set("locsvc_key", vec!["k.pem".into()]);
        l.set("locsvc_tls_domain", vec!["locsvc.example.com".into()]);
        let e = l.resolve().unwrap_err();
        assert_eq!(e.0.len(), 3, "{e}");
        assert!(e.0.iter().all(|m| m.contains("needs TLS")), "{e}");
        // A bad server name is reported with the other bad values.
        let mut l = served();
        l.set("locsvc_ca", vec!["ca.pem".into()]);
        l.set("locsvc_tls_domain", vec!["not a name".into()]);
        l.set("mode", vec!["x".into()]);
        let e = l.resolve().unwrap_err();
        assert_eq!(e.0.len(), 2, "{e}");
        assert!(e.to_string().contains("locsvc_tls_domain"), "{e}");
        // An empty value unsets.
        let mut l = served();
        l.set("locsvc_ca", vec![String::new()]);
        assert_eq!(l.resolve().unwrap().locsvc_ca, None);
        // Settings made in code are checked the same way.
        let s = Settings {
            domains: vec!["example.com".into()],
            locsvc_key: Some("k.pem".into()),
            ..Settings::default()
        };
        let e = s.check().unwrap_err();
        assert!(
            e.contains("locsvc_key") && e.contains("locsvc_ca") && e.contains('\n'),
            "{e}"
        );
    }

    #[test]
    fn the_digest_settings_are_known_keys() {
        let mut l = served();
        l.set("auth", vec!["off".into()]);
        l.set("realm", vec!["Example.com".into()]);
        l.set("auth_secret", vec!["s".into()]);
        l.toml(
            "nonce_secs = 60\ncredentials_cache_secs = 5\nauth_algorithms = [\"sha-256\"]",
            "f.toml",
        );
        let s = l.resolve().unwrap();
        assert_eq!(s.auth, AuthMode::Off);
        assert_eq!(s.realm.as_deref(), Some("example.com"));
        assert_eq!((s.nonce_secs, s.credentials_cache_secs), (60, 5));
        assert_eq!(s.auth_algorithms, [crate::digest::Algorithm::Sha256]);
    }
}
