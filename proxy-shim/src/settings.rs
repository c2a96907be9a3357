//! Configuration: defaults, then a TOML file, then `PROXY_SHIM_*` environment
//! variables, then command-line flags (the same layering as locsvc). Every
//! layer is flattened to key → value strings so one parser per key serves
//! them all, and every bad or unknown setting is reported at once, by name.
//!
//! Keys: `listen`, `advertise`, `locsvc` (list), `domains` (list, required;
//! `*` = every domain), `mode`, `table`, `locsvc_timeout_ms`,
//! `max_in_flight`, `locsvc_token`, `metrics_listen` (an ip:port, or `off`),
//! `log_level`, `trusted` (list of CIDRs), `nat` (`auto`, `always`, `never`),
//! `max_forwards`; the flood limits (see `limits`): `rate_limit`,
//! `rate_burst`, `ban_secs`, `tcp_max_connections`, `tcp_max_per_source`,
//! `tcp_message_timeout_ms`; digest authentication: `auth`, `realm`,
//! `auth_secret`, `nonce_secs`, `credentials_cache_secs`, `auth_algorithms`;
//! TLS to locsvc: `locsvc_ca`, `locsvc_cert`, `locsvc_key` (PEM paths, read
//! when the app is built) and `locsvc_tls_domain`.
//! Environment: `PROXY_SHIM_` + the key upper-cased; lists are comma-separated.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

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
    pub mode: Mode,
    /// Location table (empty = locsvc's default `location`).
    pub table: String,
    /// Whole budget of one locsvc call, failover included; under T1 (500 ms).
    pub locsvc_timeout: Duration,
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
    pub log_level: String,
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
    pub host: String,
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
            max_in_flight: 1024,
            locsvc_token: None,
            locsvc_ca: None,
            locsvc_cert: None,
            locsvc_key: None,
            locsvc_tls_domain: None,
            metrics_listen: Some(SocketAddr::from(([127, 0, 0, 1], 9465))),
            log_level: "info".into(),
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

/// Every problem found, one per line.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  {}", .0.join("\n  "))]
pub struct SettingsError(pub Vec<String>);

const KEYS: &[&str] = &[
    "listen",
    "advertise",
    "locsvc",
    "domains",
    "mode",
    "table",
    "locsvc_timeout_ms",
    "max_in_flight",
    "locsvc_token",
    "locsvc_ca",
    "locsvc_cert",
    "locsvc_key",
    "locsvc_tls_domain",
    "metrics_listen",
    "log_level",
    "trusted",
    "nat",
    "max_forwards",
    "auth",
    "realm",
    "auth_secret",
    "nonce_secs",
    "credentials_cache_secs",
    "auth_algorithms",
    "rate_limit",
    "rate_burst",
    "ban_secs",
    "tcp_max_connections",
    "tcp_max_per_source",
    "tcp_message_timeout_ms",
];

/// Raw values by key, with where each came from (for error messages).
#[derive(Debug, Default)]
pub struct Layers {
    values: BTreeMap<String, (Vec<String>, String)>,
    errors: Vec<String>,
}

impl Layers {
    pub fn toml(&mut self, text: &str, source: &str) {
        let table: toml::Table = match text.parse() {
            Ok(t) => t,
            Err(e) => {
                self.errors.push(format!("{source}: {e}"));
                return;
            }
        };
        for (k, v) in table {
            let vals = match v {
                toml::Value::Array(a) => a
                    .into_iter()
                    .map(|x| match x {
                        toml::Value::String(s) => s,
                        other => other.to_string(),
                    })
                    .collect(),
                toml::Value::String(s) => vec![s],
                other => vec![other.to_string()],
            };
            self.put(&k, vals, source);
        }
    }

    pub fn env(&mut self, vars: impl IntoIterator<Item = (String, String)>) {
        for (k, v) in vars {
            let Some(key) = k.strip_prefix("PROXY_SHIM_") else {
                continue;
            };
            if key == "CONFIG" {
                continue;
            }
            let vals = v
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect();
            self.put(&key.to_ascii_lowercase(), vals, &format!("env {k}"));
        }
    }

    /// A flag: replaces whatever a lower layer set.
    pub fn set(&mut self, key: &str, vals: Vec<String>) {
        self.put(key, vals, "command line");
    }

    fn put(&mut self, key: &str, vals: Vec<String>, source: &str) {
        if !KEYS.contains(&key) {
            self.errors
                .push(format!("{source}: unknown setting `{key}`"));
            return;
        }
        self.values
            .insert(key.to_string(), (vals, source.to_string()));
    }

    pub fn resolve(mut self) -> Result<Settings, SettingsError> {
        let mut s = Settings::default();
        let values = std::mem::take(&mut self.values);
        for (key, (vals, source)) in values {
            let one = vals.last().cloned().unwrap_or_default();
            let mut bad = |why: String| self.errors.push(format!("{source}: `{key}` {why}"));
            match key.as_str() {
                "listen" => match one.parse() {
                    Ok(a) => s.listen = a,
                    Err(_) => bad(format!("is not an ip:port: {one:?}")),
                },
                "advertise" => match one.parse::<Advertise>() {
                    Ok(a) => s.advertise = Some(a),
                    Err(()) => bad(format!(
                        "must be a host or host:port (IP address or DNS name), not {one:?}"
                    )),
                },
                "locsvc" => {
                    if vals.is_empty() {
                        bad("needs at least one address".into());
                    }
                    for v in &vals {
                        if !(v.starts_with("http://") || v.starts_with("https://")) {
                            bad(format!("must be an http(s):// URL: {v:?}"));
                        }
                    }
                    s.locsvc = vals;
                }
                "domains" => s.domains = vals.iter().map(|d| d.to_ascii_lowercase()).collect(),
                "mode" => match one.as_str() {
                    "proxy" => s.mode = Mode::Proxy,
                    "redirect" => s.mode = Mode::Redirect,
                    _ => bad(format!("must be proxy or redirect, not {one:?}")),
                },
                "table" => s.table = one,
                "locsvc_timeout_ms" => match one.parse::<u64>() {
                    Ok(ms) if (1..=10_000).contains(&ms) => {
                        s.locsvc_timeout = Duration::from_millis(ms)
                    }
                    _ => bad(format!("must be 1..=10000 milliseconds, not {one:?}")),
                },
                "max_in_flight" => match one.parse::<usize>() {
                    Ok(n) if n > 0 => s.max_in_flight = n,
                    _ => bad(format!("must be a positive integer, not {one:?}")),
                },
                "locsvc_token" => s.locsvc_token = Some(one).filter(|t| !t.is_empty()),
                "locsvc_ca" => s.locsvc_ca = pem_path(one),
                "locsvc_cert" => s.locsvc_cert = pem_path(one),
                "locsvc_key" => s.locsvc_key = pem_path(one),
                "locsvc_tls_domain" => match one.trim() {
                    "" => s.locsvc_tls_domain = None,
                    d if valid_server_name(d) => s.locsvc_tls_domain = Some(d.to_ascii_lowercase()),
                    _ => bad(format!(
                        "must be a DNS name or an IP address (the name in locsvc's certificate), not {one:?}"
                    )),
                },
                "metrics_listen" => match one.as_str() {
                    "off" | "" => s.metrics_listen = None,
                    _ => match one.parse() {
                        Ok(a) => s.metrics_listen = Some(a),
                        Err(_) => bad(format!("must be an ip:port or `off`, not {one:?}")),
                    },
                },
                "log_level" => s.log_level = one,
                "rate_limit" => match one.parse::<u32>() {
                    Ok(n) if n <= 1_000_000 => s.rate_limit = n,
                    _ => bad(format!(
                        "must be 0..=1000000 messages per second (0 = off), not {one:?}"
                    )),
                },
                "rate_burst" => match one.parse::<u32>() {
                    Ok(n) if (1..=1_000_000).contains(&n) => s.rate_burst = n,
                    _ => bad(format!("must be 1..=1000000 messages, not {one:?}")),
                },
                "ban_secs" => match one.parse::<u64>() {
                    Ok(n) if n <= 86_400 => s.ban = Duration::from_secs(n),
                    _ => bad(format!("must be 0..=86400 seconds, not {one:?}")),
                },
                "tcp_max_connections" => match one.parse::<usize>() {
                    Ok(n) if (1..=1_000_000).contains(&n) => s.tcp_max_connections = n,
                    _ => bad(format!("must be 1..=1000000, not {one:?}")),
                },
                "tcp_max_per_source" => match one.parse::<usize>() {
                    Ok(n) if (1..=1_000_000).contains(&n) => s.tcp_max_per_source = n,
                    _ => bad(format!("must be 1..=1000000, not {one:?}")),
                },
                "tcp_message_timeout_ms" => match one.parse::<u64>() {
                    Ok(ms) if (1..=300_000).contains(&ms) => {
                        s.tcp_message_timeout = Duration::from_millis(ms)
                    }
                    _ => bad(format!("must be 1..=300000 milliseconds, not {one:?}")),
                },
                "trusted" => {
                    s.trusted.clear();
                    for v in &vals {
                        match v.parse::<Cidr>() {
                            Ok(c) => s.trusted.push(c),
                            Err(()) => bad(format!("must be an address or CIDR, not {v:?}")),
                        }
                    }
                }
                "nat" => match one.as_str() {
                    "auto" => s.nat = NatMode::Auto,
                    "always" => s.nat = NatMode::Always,
                    "never" => s.nat = NatMode::Never,
                    _ => bad(format!("must be auto, always or never, not {one:?}")),
                },
                "auth" => match one.as_str() {
                    "digest" => s.auth = AuthMode::Digest,
                    "off" => s.auth = AuthMode::Off,
                    _ => bad(format!("must be digest or off, not {one:?}")),
                },
                "realm" => s.realm = Some(one.to_ascii_lowercase()).filter(|r| !r.is_empty()),
                "auth_secret" => s.auth_secret = Some(one).filter(|t| !t.is_empty()),
                "nonce_secs" => match one.parse::<u64>() {
                    Ok(n) if (10..=86_400).contains(&n) => s.nonce_secs = n,
                    _ => bad(format!("must be 10..=86400 seconds, not {one:?}")),
                },
                "credentials_cache_secs" => match one.parse::<u64>() {
                    Ok(n) if n <= 3600 => s.credentials_cache_secs = n,
                    _ => bad(format!("must be 0..=3600 seconds, not {one:?}")),
                },
                "auth_algorithms" => {
                    let mut algs = Vec::new();
                    for v in &vals {
                        match crate::digest::Algorithm::parse(v) {
                            Some(a) if !algs.contains(&a) => algs.push(a),
                            Some(_) => {}
                            None => bad(format!("must be md5 or sha-256, not {v:?}")),
                        }
                    }
                    if algs.is_empty() {
                        bad("needs at least one algorithm".into());
                    } else {
                        s.auth_algorithms = algs;
                    }
                }
                "max_forwards" => match one.parse::<u32>() {
                    Ok(n) if (1..=255).contains(&n) => s.max_forwards = n,
                    _ => bad(format!("must be 1..=255, not {one:?}")),
                },
                _ => {}
            }
        }
        self.errors.extend(s.problems());
        if self.errors.is_empty() {
            Ok(s)
        } else {
            Err(SettingsError(self.errors))
        }
    }
}

impl Settings {
    /// Settings from an optional TOML file, the process environment, then
    /// flags (`overrides`, key → values).
    pub fn load(
        file: Option<&std::path::Path>,
        overrides: Vec<(&str, Vec<String>)>,
    ) -> Result<Self, SettingsError> {
        let mut layers = Layers::default();
        if let Some(path) = file {
            match std::fs::read_to_string(path) {
                Ok(text) => layers.toml(&text, &path.display().to_string()),
                Err(e) => layers
                    .errors
                    .push(format!("config file {}: {e}", path.display())),
            }
        }
        layers.env(std::env::vars());
        for (k, v) in overrides {
            layers.set(k, v);
        }
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
fn pem_path(v: String) -> Option<PathBuf> {
    Some(v.trim().to_string())
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
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
