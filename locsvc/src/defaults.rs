//! Every setting with its default and a one-line explanation: what
//! `locsvc config defaults` prints, a TOML file `--config` reads back. A
//! test loads the printed text into the defaults and checks the README's
//! example names the same keys, so neither drifts from the code.

use svc_base::settings::{Documented, defaults_toml, documented as d};

/// Every setting, in the order of the README's example.
pub const SETTINGS: &[Documented] = &[
    d(
        "master_url",
        "\"\"",
        "database holding locdb (mysql://, postgres://, sqlite://); empty: the embedded SQLite layout",
    ),
    d(
        "data_dir",
        "\"locsvc-data\"",
        "where the embedded layout lives",
    ),
    d("grpc.listen", "\"127.0.0.1:50051\"", "gRPC listen address"),
    d(
        "grpc.token",
        "\"\"",
        "bearer token required on Location calls and GetCredentials",
    ),
    d(
        "grpc.admin_token",
        "\"\"",
        "bearer token of Cluster calls and subscriber administration",
    ),
    d(
        "grpc.tls_cert",
        "\"\"",
        "PEM certificate; with tls_key, serve TLS",
    ),
    d("grpc.tls_key", "\"\"", "PEM key of tls_cert"),
    d(
        "grpc.tls_client_ca",
        "\"\"",
        "PEM CA; when set, clients must present a certificate it signed",
    ),
    d(
        "grpc.insecure",
        "false",
        "allow a non-loopback listen address without token or TLS",
    ),
    d(
        "grpc.max_in_flight",
        "2048",
        "requests served at once; beyond, UNAVAILABLE/OVERLOADED at once",
    ),
    d(
        "grpc.request_timeout_ms",
        "2000",
        "longest a request runs; a caller's grpc-timeout shortens it",
    ),
    d(
        "subscribers.url",
        "\"\"",
        "database with kamctl's subscriber table; empty: the master",
    ),
    d(
        "metrics.listen",
        "\"127.0.0.1:9464\"",
        "Prometheus listen address; \"off\" disables",
    ),
    d("log.format", "\"text\"", "\"text\" or \"json\""),
    d(
        "log.level",
        "\"info\"",
        "level or EnvFilter directive; RUST_LOG wins",
    ),
    d(
        "trace.otlp_endpoint",
        "\"\"",
        "OTLP/gRPC collector for traces (http://host:4317); empty: no traces",
    ),
    d(
        "trace.sample_ratio",
        "0.01",
        "share of new traces recorded; a caller's sampled flag wins",
    ),
    d(
        "trace.service_name",
        "\"locsvc\"",
        "service.name of this instance's spans",
    ),
    d(
        "cluster.poll_interval_ms",
        "2000",
        "how often locdb is re-read",
    ),
    d(
        "cluster.query_timeout_ms",
        "500",
        "deadline of every database statement",
    ),
    d(
        "cluster.acquire_timeout_ms",
        "1000",
        "longest wait for a pooled connection, connecting included",
    ),
    d(
        "cluster.pool_max_connections",
        "16",
        "connections per member database",
    ),
    d(
        "cluster.write_batch_rows",
        "256",
        "group commit: most rows per transaction; 0 = one statement per REGISTER",
    ),
    d(
        "cluster.batch_writers",
        "1",
        "group-commit writers per table per member (SQLite: always 1)",
    ),
    d(
        "cluster.read_batch_aors",
        "64",
        "coalesced reads: most AoRs per IN query (max 64); 0 = one query per read",
    ),
    d(
        "cluster.batch_readers",
        "2",
        "coalescing readers per table per member",
    ),
    d(
        "cluster.auto_migrate",
        "false",
        "migrate master and members at start (always on for the embedded layout)",
    ),
    d(
        "cluster.aor_lock",
        "\"auto\"",
        "serialize an AoR's Saves across instances with a lock in the master: auto, always, off",
    ),
    d(
        "cluster.aor_lock_connections",
        "64",
        "master connections for those locks (one per Save in flight)",
    ),
    d(
        "cluster.instance_lease_ms",
        "120000",
        "an instance not heard from for this long is gone",
    ),
    d(
        "cluster.mover_page_rows",
        "500",
        "after a layout change: rows the mover reads from an old group per page",
    ),
    d(
        "cluster.mover_pause_ms",
        "20",
        "the mover's pause after each page",
    ),
    d(
        "cluster.mover_carry_timeout_ms",
        "2000",
        "deadline of carrying one subscriber",
    ),
    d(
        "cluster.locdb_timestamps",
        "\"utc\"",
        "the clock locdb.failover is written in: utc, local or an offset like +01:00",
    ),
    d(
        "cluster.census_interval_ms",
        "60000",
        "how often contacts and AoRs are counted per group for the gauges; 0 = never",
    ),
    d(
        "cluster.lookup_cache_ms",
        "0",
        "keep Lookup answers this long; another writer's change shows within it; 0 = off",
    ),
    d(
        "cluster.lookup_cache_aors",
        "100000",
        "most AoRs the lookup cache holds",
    ),
    d(
        "partition.hash",
        "\"xxh3\"",
        "xxh3, or crc32-mod (p_usrloc's placement)",
    ),
    d(
        "partition.use_domain",
        "true",
        "the key is user@domain (true) or the user part alone",
    ),
    d(
        "partition.case_sensitive",
        "false",
        "keep the user part's case (the domain is always lower-cased)",
    ),
    d(
        "registrar.default_expires",
        "3600",
        "expiry of a contact the REGISTER gives none",
    ),
    d("registrar.min_expires", "60", "shortest expiry accepted"),
    d(
        "registrar.max_expires",
        "3600",
        "longest expiry granted; also how long a member that missed a write stays unread",
    ),
    d(
        "registrar.min_expires_mode",
        "\"reject\"",
        "reject (423 Interval Too Brief) or raise (to min_expires)",
    ),
    d(
        "registrar.max_contacts",
        "16",
        "contacts per AoR; 0 = no limit",
    ),
    d(
        "registrar.cseq_delay",
        "20",
        "seconds in which an equal CSeq is a retransmission",
    ),
    d(
        "expiry.interval_ms",
        "30000",
        "how often expired contacts are swept",
    ),
    d("expiry.batch_size", "1000", "rows per DELETE"),
    d(
        "expiry.max_batches",
        "100",
        "DELETEs per member and table per pass; the rest waits for the next pass",
    ),
    d(
        "expiry.grace_secs",
        "0",
        "contacts are swept this long after they expire",
    ),
    d(
        "expiry.max_rows_per_sec",
        "2000",
        "rows deleted per second at most, over every member (0: no limit)",
    ),
    d(
        "failover.level",
        "1",
        "1: switch a failing member off; 2: promote a spare from another risk group",
    ),
    d(
        "failover.error_threshold",
        "5",
        "errors within error_window_ms that take a member down",
    ),
    d(
        "failover.error_window_ms",
        "10000",
        "the window of error_threshold",
    ),
    d(
        "failover.down_after",
        "3",
        "failed probes in a row that take a member down",
    ),
    d(
        "failover.up_after",
        "3",
        "good probes in a row that bring an off member back",
    ),
    d(
        "failover.probe_interval_ms",
        "1000",
        "how often each member is probed",
    ),
    d(
        "failover.hedge_delay_ms",
        "50",
        "a read not answered by then also goes to the partner",
    ),
    d(
        "failover.ack_grace_ms",
        "20",
        "once one member took a write, how long the others get before the answer",
    ),
    d(
        "failover.circuit_probe_ms",
        "100",
        "probe interval of a member whose circuit is open",
    ),
    d("failover.resync_batch", "500", "rows per resync batch"),
    d(
        "failover.resync_pause_ms",
        "2",
        "pause between resync batches",
    ),
    d(
        "tables.location",
        "\"cluster\"",
        "location tables: cluster (partitioned) or single (on the master)",
    ),
];

/// The settings as a commented TOML file of their defaults.
pub fn toml() -> String {
    defaults_toml(
        "locsvc settings: every key at its default (`locsvc config defaults`).\n\
         Environment: LOCSVC_<SECTION>__<KEY>; flags override both.",
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
        // `locsvc config defaults > deploy/config/locsvc.toml`.
        assert_eq!(
            include_str!("../../deploy/config/locsvc.toml"),
            toml(),
            "deploy/config/locsvc.toml is stale"
        );
    }

    #[test]
    fn the_printed_defaults_load_back_into_the_defaults() {
        let mut layers = Layers::default();
        layers.toml(&toml(), "defaults");
        let loaded = layers.resolve().expect("the printed file loads");
        assert_eq!(loaded, Settings::default());
    }

    #[test]
    fn the_readme_example_names_the_same_keys() {
        let readme = include_str!("../../README.md");
        let block = readme
            .split("## Configuration")
            .nth(1)
            .and_then(|r| r.split("```toml\n").nth(1))
            .and_then(|r| r.split("```").next())
            .expect("README's configuration example");
        let mut section = String::new();
        let mut keys = std::collections::BTreeSet::new();
        for line in block.lines() {
            let line = line.trim();
            if let Some(s) = line.strip_prefix('[') {
                section = s.split(']').next().unwrap_or_default().to_string();
            } else if let Some((k, _)) = line.split_once(" = ").filter(|_| !line.starts_with('#')) {
                let k = k.trim();
                keys.insert(if section.is_empty() {
                    k.to_string()
                } else {
                    format!("{section}.{k}")
                });
            }
        }
        // The example's second table is an illustration, not a default.
        keys.remove("tables.cfa");
        let ours: std::collections::BTreeSet<String> =
            SETTINGS.iter().map(|s| s.key.to_string()).collect();
        assert_eq!(keys, ours);
    }

    #[test]
    fn every_key_is_one_the_settings_take() {
        let unknown = svc_base::settings::unknown_keys(SETTINGS, |key| {
            let mut layers = Layers::default();
            layers.set(key, "x".into(), "test");
            layers
                .resolve()
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        });
        assert!(unknown.is_empty(), "{unknown:?}");
    }
}
