//! Configuration: defaults, then a TOML file, then `PROXY_SHIM_*` environment
//! variables, then command-line flags (the same layering as locsvc). Every
//! layer is flattened to key → value strings so one parser per key serves
//! them all, and every bad or unknown setting is reported at once, by name.
//!
//! Keys: `listen`, `advertise`, `locsvc` (list), `domains` (list), `mode`,
//! `table`, `locsvc_timeout_ms`, `max_in_flight`, `locsvc_token`,
//! `metrics_listen` (an ip:port, or `off`), `log_level`.
//! Environment: `PROXY_SHIM_` + the key upper-cased; lists are comma-separated.

use std::collections::BTreeMap;
use std::net::SocketAddr;
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
    /// Domains served; empty = every domain.
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
    /// Where Prometheus metrics are served over HTTP; None = not served.
    pub metrics_listen: Option<SocketAddr>,
    pub log_level: String,
}

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
            metrics_listen: Some(SocketAddr::from(([127, 0, 0, 1], 9465))),
            log_level: "info".into(),
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
    "metrics_listen",
    "log_level",
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
                "metrics_listen" => match one.as_str() {
                    "off" | "" => s.metrics_listen = None,
                    _ => match one.parse() {
                        Ok(a) => s.metrics_listen = Some(a),
                        Err(_) => bad(format!("must be an ip:port or `off`, not {one:?}")),
                    },
                },
                "log_level" => s.log_level = one,
                _ => {}
            }
        }
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

    /// Whether `domain` is served (case-insensitive; no list = all).
    pub fn serves(&self, domain: &str) -> bool {
        self.domains.is_empty() || self.domains.iter().any(|d| d.eq_ignore_ascii_case(domain))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_then_env_then_flags_win_in_that_order() {
        let mut l = Layers::default();
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
        let mut l = Layers::default();
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
        let mut l = Layers::default();
        l.set("metrics_listen", vec!["off".into()]);
        assert_eq!(l.resolve().unwrap().metrics_listen, None);
        let mut l = Layers::default();
        l.toml("metrics_listen = \"127.0.0.1:0\"", "f.toml");
        assert_eq!(
            l.resolve().unwrap().metrics_listen,
            Some("127.0.0.1:0".parse().unwrap())
        );
        let mut l = Layers::default();
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
        let mut l = Layers::default();
        l.set("advertise", vec!["not a host".into()]);
        assert!(l.resolve().unwrap_err().to_string().contains("advertise"));
    }
}
