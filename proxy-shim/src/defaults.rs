//! Every shim setting with its default and a one-line explanation: what
//! `proxy-shim config defaults` prints, a TOML file `--config` reads once
//! `domains` is filled in (it has no default). A test loads the printed
//! text back into the defaults.

use svc_base::settings::{Documented, defaults_toml, documented as d};

/// Every setting.
pub const SETTINGS: &[Documented] = &[
    d("listen", "\"127.0.0.1:5060\"", "UDP and TCP listen address"),
    d(
        "advertise",
        "\"\"",
        "host or host:port in our Via (needed on 0.0.0.0); empty: the bound address",
    ),
    d(
        "domains",
        "[]",
        "domains served, REQUIRED (\"*\" serves every domain)",
    ),
    d(
        "mode",
        "\"proxy\"",
        "proxy (forward statelessly) or redirect (answer 302)",
    ),
    d(
        "metrics_listen",
        "\"127.0.0.1:9465\"",
        "Prometheus listen address; \"off\" disables",
    ),
    d(
        "log_level",
        "\"info\"",
        "level or EnvFilter directive; RUST_LOG wins",
    ),
    d(
        "trace_otlp_endpoint",
        "\"\"",
        "OTLP/gRPC collector for traces (http://host:4317); empty: no traces",
    ),
    d(
        "trace_sample_ratio",
        "0.01",
        "share of SIP requests traced (each one trace with locsvc's spans)",
    ),
    d(
        "trace_service_name",
        "\"proxy-shim\"",
        "service.name of this shim's spans",
    ),
    d(
        "trusted",
        "[]",
        "trusted sources (edge proxy, SBC), addresses or CIDRs: in-dialog relays, no limits",
    ),
    d(
        "nat",
        "\"auto\"",
        "reach a contact through the REGISTER's source: auto (detected), always, never",
    ),
    d("max_forwards", "70", "highest Max-Forwards let through"),
    d(
        "locsvc",
        "[\"http://127.0.0.1:50051\"]",
        "locsvc instances, tried in order",
    ),
    d("table", "\"\"", "location table; empty: locsvc's default"),
    d(
        "locsvc_timeout_ms",
        "400",
        "budget of one locsvc call, failover included (below the phone's T1)",
    ),
    d(
        "lookup_batch_max",
        "64",
        "most lookups coalesced into one LookupMany call; 0: a Lookup call each",
    ),
    d(
        "lookup_batch_calls",
        "2",
        "LookupMany calls in flight before lookups wait to join the next one",
    ),
    d("locsvc_token", "\"\"", "bearer token locsvc requires"),
    d(
        "locsvc_ca",
        "\"\"",
        "PEM CA of locsvc's certificate; turns TLS on",
    ),
    d(
        "locsvc_cert",
        "\"\"",
        "PEM client certificate for a locsvc that wants one",
    ),
    d("locsvc_key", "\"\"", "PEM key of locsvc_cert"),
    d(
        "locsvc_tls_domain",
        "\"\"",
        "name to verify in locsvc's certificate; empty: the address's host",
    ),
    d(
        "max_in_flight",
        "1024",
        "messages handled at once; beyond, 503 at once",
    ),
    d(
        "rate_limit",
        "50",
        "messages per second per source (IPv4 address, IPv6 /64); 0 = no limit",
    ),
    d(
        "rate_burst",
        "100",
        "messages a quiet source may send at once",
    ),
    d(
        "ban_secs",
        "60",
        "seconds a source over the rate is ignored; 0 = drop only what is over",
    ),
    d(
        "tcp_max_connections",
        "1024",
        "open TCP connections at most",
    ),
    d(
        "tcp_max_per_source",
        "32",
        "open TCP connections per source at most",
    ),
    d(
        "tcp_message_timeout_ms",
        "10000",
        "from the first byte of a TCP message to its last",
    ),
    d(
        "auth",
        "\"digest\"",
        "digest (challenge REGISTERs and calls from our domains) or off",
    ),
    d(
        "realm",
        "\"\"",
        "digest realm; empty: the To (REGISTER) or From domain",
    ),
    d(
        "auth_secret",
        "\"\"",
        "key of the digest nonces, the same on every shim behind one name; empty: random",
    ),
    d("nonce_secs", "300", "how long a nonce is accepted"),
    d(
        "credentials_cache_secs",
        "30",
        "how long credentials fetched from locsvc are reused",
    ),
    d(
        "auth_algorithms",
        "[\"MD5\", \"SHA-256\"]",
        "digest challenges offered, in order",
    ),
];

/// The settings as a commented TOML file of their defaults.
pub fn toml() -> String {
    defaults_toml(
        "proxy-shim settings: every key at its default (`proxy-shim config defaults`).\n\
         Environment: PROXY_SHIM_<KEY>; flags override both. Fill in `domains`.",
        SETTINGS,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::{Layers, Settings};

    #[test]
    fn the_shipped_example_configuration_is_the_printed_defaults() {
        // deploy/config is what operators copy; regenerate it with
        // `proxy-shim config defaults > deploy/config/proxy-shim.toml`.
        assert_eq!(
            include_str!("../../deploy/config/proxy-shim.toml"),
            toml(),
            "deploy/config/proxy-shim.toml is stale"
        );
    }

    #[test]
    fn the_printed_defaults_load_back_into_the_defaults() {
        let mut layers = Layers::default();
        layers.toml(&toml(), "defaults");
        layers.set("domains", vec!["example.com".into()]);
        let loaded = layers.resolve().expect("the printed file loads");
        let want = Settings {
            domains: vec!["example.com".into()],
            ..Settings::default()
        };
        assert_eq!(loaded, want);
    }

    #[test]
    fn every_key_is_one_the_settings_take() {
        let unknown = svc_base::settings::unknown_keys(SETTINGS, |key| {
            let mut layers = Layers::default();
            layers.set(key, vec!["x".into()]);
            layers
                .resolve()
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        });
        assert!(unknown.is_empty(), "{unknown:?}");
    }
}
