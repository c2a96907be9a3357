//! locsvc's configuration: its keys, their defaults and parsing, and the
//! rules across settings. Layering, environment names, lists and problem
//! reports follow the shared convention of `svc_base::settings`: keys are
//! dotted (`grpc.listen`), variables are `LOCSVC_` + the key upper-cased
//! with `.` written as `__` (`LOCSVC_GRPC__LISTEN`, `LOCSVC_MASTER_URL`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use svc_base::settings::Refusal;
pub use svc_base::settings::SettingsError;
use svc_base::telemetry::{self, TraceSettings};

use crate::aor_lock::AorLockMode;
use crate::domain::KeyPolicy;
use crate::expiry::SweepSettings;
use crate::failover::FailoverSettings;
use crate::mover::MoverSettings;
use crate::partition::HashMode;
use crate::registrar::{MinExpiresMode, RegistrarPolicy};
use crate::router::{RouterSettings, TableMode};
use crate::store::LocdbTime;
use crate::store::migrate::valid_table_name;
use crate::store::{DbUrl, PoolSettings, StoreOptions};

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// gRPC listener settings.
#[derive(Debug, Clone, PartialEq)]
pub struct GrpcSettings {
    pub listen: SocketAddr,
    /// Bearer token every Location call must carry; None = no auth.
    pub token: Option<String>,
    /// Bearer token of Cluster calls and subscriber administration; None
    /// with `token` set disables them.
    pub admin_token: Option<String>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// PEM CA bundle: when set, clients must present a certificate it signed.
    pub tls_client_ca: Option<PathBuf>,
    /// Allow a non-loopback listener without token or TLS.
    pub insecure: bool,
    /// Requests served at once; more are refused with UNAVAILABLE.
    pub max_in_flight: usize,
    /// Deadline of one request.
    pub request_timeout: Duration,
}

/// Cluster and database settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterSettings {
    pub poll_interval: Duration,
    pub query_timeout: Duration,
    pub pool: PoolSettings,
    pub hash: HashMode,
    pub key_policy: KeyPolicy,
    /// Run migrations on master and members at start-up.
    pub auto_migrate: bool,
    /// When Saves take a lock in the master to serialize across instances.
    pub aor_lock: AorLockMode,
    /// Master connections for those locks (each held for one Save).
    pub aor_lock_connections: u32,
    /// An instance not heard from for this long is gone (docs/layout-changes.md).
    pub instance_lease: Duration,
    /// Pacing of the mover that carries subscribers after a layout change.
    pub mover: MoverSettings,
    /// The clock `locdb.failover` is written in (Kamailio without
    /// `UTC_timestamps` writes local time).
    pub locdb_time: LocdbTime,
    /// How often contacts and AoRs are counted per group for the gauges
    /// (zero: never).
    pub census_interval: Duration,
    /// How long a Lookup answer is kept (`lookup_cache`; zero: off) and
    /// for how many AoRs at most.
    pub lookup_cache: Duration,
    pub lookup_cache_aors: usize,
}

/// Everything locsvc reads from configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Where the embedded SQLite layout lives.
    pub data_dir: PathBuf,
    /// Master database (holds `locdb`); None = embedded SQLite layout.
    pub master_url: Option<DbUrl>,
    pub grpc: GrpcSettings,
    /// Prometheus listener; None = disabled.
    pub metrics_listen: Option<SocketAddr>,
    pub log_format: LogFormat,
    pub log_level: String,
    /// OTLP trace export (off unless an endpoint is set).
    pub traces: TraceSettings,
    pub cluster: ClusterSettings,
    pub registrar: RegistrarPolicy,
    pub expiry: SweepSettings,
    pub failover: FailoverSettings,
    pub tables: BTreeMap<String, TableMode>,
    /// Database holding kamctl's `subscriber` table; None = the master.
    pub subscribers_url: Option<DbUrl>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("locsvc-data"),
            master_url: None,
            grpc: GrpcSettings {
                listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
                token: None,
                admin_token: None,
                tls_cert: None,
                tls_key: None,
                tls_client_ca: None,
                insecure: false,
                max_in_flight: 2048,
                request_timeout: Duration::from_secs(2),
            },
            metrics_listen: Some(SocketAddr::from(([127, 0, 0, 1], 9464))),
            log_format: LogFormat::Text,
            log_level: "info".into(),
            traces: TraceSettings::off("locsvc"),
            cluster: ClusterSettings {
                poll_interval: Duration::from_secs(2),
                query_timeout: Duration::from_millis(500),
                pool: PoolSettings::default(),
                hash: HashMode::Xxh3,
                key_policy: KeyPolicy::default(),
                auto_migrate: false,
                aor_lock: AorLockMode::Auto,
                aor_lock_connections: 64,
                instance_lease: Duration::from_secs(120),
                mover: MoverSettings::default(),
                locdb_time: LocdbTime::Utc,
                census_interval: Duration::from_secs(60),
                lookup_cache: Duration::ZERO,
                lookup_cache_aors: 100_000,
            },
            registrar: RegistrarPolicy::default(),
            expiry: SweepSettings::default(),
            failover: FailoverSettings::default(),
            tables: BTreeMap::from([("location".to_string(), TableMode::Cluster)]),
            subscribers_url: None,
        }
    }
}

/// Prefix of every `LOCSVC_*` setting variable.
const ENV_PREFIX: &str = "LOCSVC_";

/// `LOCSVC_*` variables that are flags of the binary (`--config`) or of the
/// client commands (`--server`, `--token`, …), not settings of the service.
pub const CLIENT_ONLY_ENV: &[&str] = &[
    "LOCSVC_CONFIG",
    "LOCSVC_SERVER",
    "LOCSVC_TOKEN",
    "LOCSVC_ADMIN_TOKEN",
];

/// locsvc's settings layers, later layers win.
#[derive(Debug, Clone)]
pub struct Layers(svc_base::settings::Layers);

impl Default for Layers {
    fn default() -> Self {
        Self(svc_base::settings::Layers::new(ENV_PREFIX, CLIENT_ONLY_ENV))
    }
}

impl Layers {
    /// Adds the settings of a TOML document.
    pub fn toml(&mut self, text: &str, source: &str) {
        self.0.toml(text, source);
    }

    /// Adds `LOCSVC_*` variables from `vars`.
    pub fn env(&mut self, vars: impl IntoIterator<Item = (String, String)>) {
        self.0.env(vars);
    }

    /// Sets one key.
    pub fn set(&mut self, key: &str, value: String, source: &str) {
        self.0.set(key, value, source);
    }

    /// Resolves every layer into settings, or every problem at once.
    pub fn resolve(self) -> Result<Settings, SettingsError> {
        let mut s = Settings::default();
        let mut table_layer: Option<BTreeMap<String, TableMode>> = None;
        let mut problems = self
            .0
            .resolve(|key, value| apply(&mut s, key, value.one()?, &mut table_layer));
        if let Some(t) = table_layer {
            s.tables = t;
        }
        problems.extend(check(&s));
        SettingsError::check(problems).map(|()| s)
    }
}

fn parse<T: std::str::FromStr>(v: &str) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    v.parse::<T>().map_err(|e| e.to_string())
}

fn millis(v: &str) -> Result<Duration, String> {
    let n: u64 = parse(v)?;
    if n == 0 {
        return Err("must be greater than 0".into());
    }
    Ok(Duration::from_millis(n))
}

fn opt_addr(v: &str) -> Result<Option<SocketAddr>, String> {
    if v.is_empty() || v == "off" {
        Ok(None)
    } else {
        parse(v).map(Some)
    }
}

fn opt_string(v: &str) -> Option<String> {
    (!v.is_empty()).then(|| v.to_string())
}

fn opt_url(v: &str) -> Result<Option<DbUrl>, String> {
    if v.is_empty() {
        Ok(None)
    } else {
        DbUrl::parse(v).map(Some).map_err(|e| e.to_string())
    }
}

/// Sets what `key` names to `v`; a key no section knows is refused as
/// unknown. `tables` collects this layer's `tables.*` keys.
fn apply(
    s: &mut Settings,
    key: &str,
    v: &str,
    tables: &mut Option<BTreeMap<String, TableMode>>,
) -> Result<(), Refusal> {
    let known = apply_root(s, key, v)?
        || apply_grpc(&mut s.grpc, key, v)?
        || apply_cluster(&mut s.cluster, key, v)?
        || apply_registrar(&mut s.registrar, key, v)?
        || apply_expiry(&mut s.expiry, key, v)?
        || apply_failover(&mut s.failover, key, v)?
        || apply_table(tables, key, v)?;
    if known { Ok(()) } else { Err(Refusal::Unknown) }
}

/// Databases, metrics and logging; whether `key` is one of them.
fn apply_root(s: &mut Settings, key: &str, v: &str) -> Result<bool, Refusal> {
    match key {
        "data_dir" => s.data_dir = PathBuf::from(v),
        "master_url" => s.master_url = opt_url(v)?,
        "subscribers.url" => s.subscribers_url = opt_url(v)?,
        "metrics.listen" => s.metrics_listen = opt_addr(v)?,
        "log.format" => {
            s.log_format = match v {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                _ => return Err("expected text or json".into()),
            }
        }
        "log.level" => s.log_level = v.to_string(),
        "trace.otlp_endpoint" => s.traces.otlp_endpoint = telemetry::otlp_endpoint(v)?,
        "trace.sample_ratio" => s.traces.sample_ratio = telemetry::sample_ratio(v)?,
        "trace.service_name" => s.traces.service_name = telemetry::service_name(v)?,
        _ => return Ok(false),
    }
    Ok(true)
}

/// `grpc.*`; whether `key` is one of them.
fn apply_grpc(g: &mut GrpcSettings, key: &str, v: &str) -> Result<bool, Refusal> {
    match key {
        "grpc.listen" => g.listen = parse(v)?,
        "grpc.token" => g.token = opt_string(v),
        "grpc.admin_token" => g.admin_token = opt_string(v),
        "grpc.tls_client_ca" => g.tls_client_ca = opt_string(v).map(PathBuf::from),
        "grpc.tls_cert" => g.tls_cert = opt_string(v).map(PathBuf::from),
        "grpc.tls_key" => g.tls_key = opt_string(v).map(PathBuf::from),
        "grpc.insecure" => g.insecure = parse(v)?,
        "grpc.max_in_flight" => g.max_in_flight = parse(v)?,
        "grpc.request_timeout_ms" => g.request_timeout = millis(v)?,
        _ => return Ok(false),
    }
    Ok(true)
}

/// `cluster.*` and `partition.*`; whether `key` is one of them.
fn apply_cluster(c: &mut ClusterSettings, key: &str, v: &str) -> Result<bool, Refusal> {
    match key {
        "cluster.poll_interval_ms" => c.poll_interval = millis(v)?,
        "cluster.query_timeout_ms" => c.query_timeout = millis(v)?,
        "cluster.acquire_timeout_ms" => c.pool.acquire_timeout = millis(v)?,
        "cluster.pool_max_connections" => c.pool.max_connections = parse(v)?,
        "cluster.write_batch_rows" => c.pool.write_batch_rows = parse(v)?,
        "cluster.batch_writers" => c.pool.batch_writers = parse(v)?,
        "cluster.read_batch_aors" => c.pool.read_batch_aors = parse(v)?,
        "cluster.batch_readers" => c.pool.batch_readers = parse(v)?,
        "cluster.auto_migrate" => c.auto_migrate = parse(v)?,
        "cluster.aor_lock" => c.aor_lock = parse(v)?,
        "cluster.aor_lock_connections" => c.aor_lock_connections = parse(v)?,
        "cluster.instance_lease_ms" => c.instance_lease = millis(v)?,
        "cluster.mover_page_rows" => c.mover.page = parse(v)?,
        "cluster.mover_pause_ms" => c.mover.pause = millis(v)?,
        "cluster.mover_carry_timeout_ms" => c.mover.carry_timeout = millis(v)?,
        "cluster.locdb_timestamps" => c.locdb_time = parse(v)?,
        "cluster.census_interval_ms" => c.census_interval = millis(v)?,
        "cluster.lookup_cache_ms" => c.lookup_cache = Duration::from_millis(parse(v)?),
        "cluster.lookup_cache_aors" => c.lookup_cache_aors = parse(v)?,
        "partition.hash" => c.hash = parse(v)?,
        "partition.use_domain" => c.key_policy.use_domain = parse(v)?,
        "partition.case_sensitive" => c.key_policy.case_sensitive = parse(v)?,
        _ => return Ok(false),
    }
    Ok(true)
}

/// `registrar.*`; whether `key` is one of them.
fn apply_registrar(r: &mut RegistrarPolicy, key: &str, v: &str) -> Result<bool, Refusal> {
    match key {
        "registrar.default_expires" => r.default_expires = parse(v)?,
        "registrar.min_expires" => r.min_expires = parse(v)?,
        "registrar.max_expires" => r.max_expires = parse(v)?,
        "registrar.max_contacts" => r.max_contacts = parse(v)?,
        "registrar.cseq_delay" => r.cseq_delay = parse(v)?,
        "registrar.min_expires_mode" => {
            r.min_expires_mode = match v {
                "reject" => MinExpiresMode::Reject,
                "raise" => MinExpiresMode::Raise,
                _ => return Err("expected reject or raise".into()),
            }
        }
        _ => return Ok(false),
    }
    Ok(true)
}

/// `expiry.*`; whether `key` is one of them.
fn apply_expiry(x: &mut SweepSettings, key: &str, v: &str) -> Result<bool, Refusal> {
    match key {
        "expiry.interval_ms" => x.interval = millis(v)?,
        "expiry.batch_size" => x.batch = parse(v)?,
        "expiry.max_batches" => x.max_batches = parse(v)?,
        "expiry.grace_secs" => x.grace = parse(v)?,
        "expiry.max_rows_per_sec" => x.max_rows_per_sec = parse(v)?,
        _ => return Ok(false),
    }
    Ok(true)
}

/// `failover.*`; whether `key` is one of them.
fn apply_failover(f: &mut FailoverSettings, key: &str, v: &str) -> Result<bool, Refusal> {
    match key {
        "failover.error_threshold" => f.monitor.error_threshold = parse(v)?,
        "failover.error_window_ms" => f.monitor.error_window_ms = millis(v)?.as_millis() as u64,
        "failover.down_after" => f.monitor.down_after = parse(v)?,
        "failover.up_after" => f.monitor.up_after = parse(v)?,
        "failover.probe_interval_ms" => f.probe_interval = millis(v)?,
        "failover.hedge_delay_ms" => f.hedge_delay = millis(v)?,
        "failover.ack_grace_ms" => f.ack_grace = Duration::from_millis(parse(v)?),
        "failover.circuit_probe_ms" => f.circuit_probe_interval = millis(v)?,
        "failover.level" => {
            f.level = match v {
                "1" => 1,
                "2" => 2,
                _ => return Err("expected 1 (switch off) or 2 (promote a spare)".into()),
            }
        }
        "failover.resync_batch" => f.resync.batch = parse(v)?,
        "failover.resync_pause_ms" => f.resync.pause = Duration::from_millis(parse(v)?),
        _ => return Ok(false),
    }
    Ok(true)
}

/// `tables.<name>`, into `tables`; whether `key` is one.
fn apply_table(
    tables: &mut Option<BTreeMap<String, TableMode>>,
    key: &str,
    v: &str,
) -> Result<bool, Refusal> {
    let Some(name) = key.strip_prefix("tables.") else {
        return Ok(false);
    };
    if !valid_table_name(name) {
        return Err("table names are letters, digits and _ (not locdb)".into());
    }
    let mode = match v {
        "cluster" => TableMode::Cluster,
        "single" => TableMode::Single,
        _ => return Err("expected cluster or single".into()),
    };
    tables
        .get_or_insert_with(BTreeMap::new)
        .insert(name.to_string(), mode);
    Ok(true)
}

/// Rules that involve several settings.
fn check(s: &Settings) -> Vec<String> {
    let mut e = Vec::new();
    let r = &s.registrar;
    if r.min_expires == 0 {
        e.push("registrar.min_expires: must be at least 1".into());
    }
    if r.max_expires == 0 {
        e.push("registrar.max_expires: must be at least 1 (bindings must expire)".into());
    } else if r.max_expires < r.min_expires {
        e.push("registrar.max_expires: must not be below registrar.min_expires".into());
    }
    if r.default_expires < r.min_expires || (r.max_expires > 0 && r.default_expires > r.max_expires)
    {
        e.push("registrar.default_expires: must lie between min_expires and max_expires".into());
    }
    if s.expiry.batch == 0 {
        e.push("expiry.batch_size: must be at least 1".into());
    }
    if !s.cluster.lookup_cache.is_zero() && s.cluster.lookup_cache_aors == 0 {
        e.push("cluster.lookup_cache_aors: must be at least 1 while lookup_cache_ms is set".into());
    }
    if s.expiry.max_batches == 0 {
        e.push("expiry.max_batches: must be at least 1".into());
    }
    if s.expiry.grace < 0 {
        e.push("expiry.grace_secs: must not be negative".into());
    }
    if s.cluster.pool.max_connections == 0 {
        e.push("cluster.pool_max_connections: must be at least 1".into());
    }
    if s.cluster.mover.page == 0 || s.cluster.mover.carry_timeout.is_zero() {
        e.push(
            "cluster.mover_page_rows and cluster.mover_carry_timeout_ms: must be at least 1".into(),
        );
    }
    if s.cluster.pool.write_batch_rows > 0 && s.cluster.pool.batch_writers == 0 {
        e.push("cluster.batch_writers: must be at least 1 when write_batch_rows > 0".into());
    }
    if s.cluster.pool.read_batch_aors > 64 {
        e.push("cluster.read_batch_aors: at most 64".into());
    }
    if s.cluster.pool.read_batch_aors > 0 && s.cluster.pool.batch_readers == 0 {
        e.push("cluster.batch_readers: must be at least 1 when read_batch_aors > 0".into());
    }
    if s.grpc.max_in_flight == 0 {
        e.push("grpc.max_in_flight: must be at least 1".into());
    }
    if s.tables.is_empty() {
        e.push("tables: at least one location table is needed".into());
    }
    let f = &s.failover.monitor;
    if s.failover.resync.batch == 0 || s.failover.resync.batch > 10_000 {
        e.push(
            "failover.resync_batch: must be between 1 and 10000 (rows per page held in memory)"
                .into(),
        );
    }
    if f.error_threshold == 0 || f.down_after == 0 || f.up_after == 0 {
        e.push("failover.error_threshold, failover.down_after and failover.up_after: must be at least 1".into());
    }
    if s.grpc.tls_cert.is_some() != s.grpc.tls_key.is_some() {
        e.push("grpc.tls_cert and grpc.tls_key: set both or neither".into());
    }
    if s.grpc.tls_client_ca.is_some() && s.grpc.tls_cert.is_none() {
        e.push("grpc.tls_client_ca: needs grpc.tls_cert and grpc.tls_key (client certificates need TLS)".into());
    }
    let tls = s.grpc.tls_cert.is_some();
    if !s.grpc.listen.ip().is_loopback() && s.grpc.token.is_none() && !tls && !s.grpc.insecure {
        e.push(format!(
            "grpc.listen: {} is not a loopback address; set grpc.token or TLS (grpc.tls_cert/grpc.tls_key), or pass --insecure",
            s.grpc.listen
        ));
    }
    e
}

impl Settings {
    /// Settings from an optional TOML file, the process environment and
    /// flag overrides (already as dotted keys).
    pub fn load(
        file: Option<&std::path::Path>,
        overrides: &[(&str, String)],
    ) -> Result<Self, SettingsError> {
        let mut layers = Layers::default();
        layers.0.stack(
            file,
            std::env::vars(),
            overrides.iter().map(|(k, v)| (*k, v.clone())),
        );
        layers.resolve()
    }

    /// Partitioned tables.
    pub fn cluster_tables(&self) -> Vec<String> {
        self.tables_of(TableMode::Cluster)
    }

    /// Tables of `mode`.
    pub fn tables_of(&self, mode: TableMode) -> Vec<String> {
        self.tables
            .iter()
            .filter(|(_, m)| **m == mode)
            .map(|(t, _)| t.clone())
            .collect()
    }

    /// Failover settings completed from the rest: probes query the first
    /// partitioned table, resyncs copy them all, and the staleness window is
    /// the longest registration.
    pub fn failover_settings(&self) -> FailoverSettings {
        let mut f = self.failover.clone();
        f.tables = self.cluster_tables();
        if let Some(t) = f.tables.first() {
            f.probe_table = t.clone();
        }
        f.window = self.stale_window();
        f
    }

    /// How a database serving `tables` is opened.
    pub fn store_options(&self, tables: Vec<String>) -> StoreOptions {
        StoreOptions {
            tables,
            use_domain: self.cluster.key_policy.use_domain,
            pool: self.cluster.pool.clone(),
            query_timeout: self.cluster.query_timeout,
        }
    }

    /// How the router waits on members.
    pub fn router_settings(&self) -> RouterSettings {
        RouterSettings {
            stale_window: self.stale_window(),
            hedge_delay: self.failover.hedge_delay,
            ack_grace: self.failover.ack_grace,
            poll_interval: self.cluster.poll_interval,
        }
    }

    /// Seconds after a missed write when a member is complete again: every
    /// binding it could lack has expired by then.
    pub fn stale_window(&self) -> i64 {
        i64::from(self.registrar.max_expires)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_configuration_gives_the_defaults() {
        let s = Layers::default().resolve().unwrap();
        assert_eq!(s, Settings::default());
        assert_eq!(s.grpc.listen.to_string(), "127.0.0.1:50051");
        assert_eq!(s.cluster_tables(), ["location"]);
    }

    #[test]
    fn toml_then_env_then_flags_win_in_that_order() {
        let mut l = Layers::default();
        l.toml(
            "[grpc]\nlisten = \"127.0.0.1:1\"\nmax_in_flight = 10\n[registrar]\nmax_contacts = 3\n",
            "f.toml",
        );
        l.env([
            ("LOCSVC_GRPC__LISTEN".to_string(), "127.0.0.1:2".to_string()),
            ("LOCSVC_REGISTRAR__MAX_CONTACTS".into(), "4".into()),
            ("OTHER".into(), "x".into()),
        ]);
        l.set("registrar.max_contacts", "5".into(), "command line");
        let s = l.resolve().unwrap();
        assert_eq!(s.grpc.listen.port(), 2);
        assert_eq!(s.grpc.max_in_flight, 10);
        assert_eq!(s.registrar.max_contacts, 5);
    }

    #[test]
    fn a_log_filter_from_the_environment_keeps_its_commas() {
        let mut l = Layers::default();
        l.env([(
            "LOCSVC_LOG__LEVEL".to_string(),
            "info,sqlx=warn".to_string(),
        )]);
        assert_eq!(l.resolve().unwrap().log_level, "info,sqlx=warn");
    }

    #[test]
    fn every_bad_setting_is_reported_at_once_with_its_name() {
        let mut l = Layers::default();
        l.toml(
            "master_url = \"oracle://x\"\n[grpc]\nlisten = \"nowhere\"\n[registrar]\nmin_expires = \"soon\"\nbogus = 1\n[tables]\ncfa = \"sometimes\"\n",
            "f.toml",
        );
        l.env([("LOCSVC_EXPIRY__BATCH_SIZE".to_string(), "0".to_string())]);
        let err = l.resolve().unwrap_err();
        let text = err.to_string();
        for name in [
            "master_url",
            "grpc.listen",
            "registrar.min_expires",
            "registrar.bogus",
            "tables.cfa",
            "expiry.batch_size",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
        assert_eq!(err.0.len(), 6, "{text}");
    }

    #[test]
    fn a_lookup_cache_is_read_and_needs_room_for_one_aor() {
        let cache = |aors: &str| {
            let mut l = Layers::default();
            l.set("cluster.lookup_cache_ms", "1500".into(), "t");
            l.set("cluster.lookup_cache_aors", aors.into(), "t");
            l.resolve()
        };
        let s = cache("10").unwrap();
        assert_eq!(s.cluster.lookup_cache, Duration::from_millis(1500));
        assert_eq!(s.cluster.lookup_cache_aors, 10);
        let err = cache("0").unwrap_err().to_string();
        assert!(err.contains("cluster.lookup_cache_aors"), "{err}");
    }

    #[test]
    fn a_public_listener_needs_a_token_tls_or_insecure() {
        let public = |extra: &[(&str, &str)]| {
            let mut l = Layers::default();
            l.set("grpc.listen", "0.0.0.0:50051".into(), "t");
            for (k, v) in extra {
                l.set(k, v.to_string(), "t");
            }
            l.resolve()
        };
        assert!(public(&[]).unwrap_err().to_string().contains("--insecure"));
        assert!(public(&[("grpc.token", "t0k")]).is_ok());
        assert!(public(&[("grpc.insecure", "true")]).is_ok());
        assert!(public(&[("grpc.tls_cert", "c.pem"), ("grpc.tls_key", "k.pem")]).is_ok());
    }

    #[test]
    fn admin_token_subscriber_database_and_client_ca_are_read() {
        let mut l = Layers::default();
        l.env([
            ("LOCSVC_GRPC__ADMIN_TOKEN".to_string(), "adm1n".to_string()),
            ("LOCSVC_ADMIN_TOKEN".into(), "client-side only".into()),
            ("LOCSVC_TOKEN".into(), "client-side only".into()),
        ]);
        l.set("subscribers.url", "mysql://k:pw@db/kamailio".into(), "t");
        l.set("grpc.tls_client_ca", "ca.pem".into(), "t");
        let text = l.clone().resolve().unwrap_err().to_string();
        assert!(text.contains("grpc.tls_client_ca"), "{text}");
        l.set("grpc.tls_cert", "c.pem".into(), "t");
        l.set("grpc.tls_key", "k.pem".into(), "t");
        let s = l.resolve().unwrap();
        assert_eq!(s.grpc.admin_token.as_deref(), Some("adm1n"));
        assert_eq!(
            s.subscribers_url.unwrap().redacted(),
            "mysql://k:***@db/kamailio"
        );
        let mut l = Layers::default();
        l.set("grpc.admin_token", "hunter2".into(), "t");
        l.set("subscribers.url", "oracle://u:hunter2@h/db".into(), "t");
        let text = l.resolve().unwrap_err().to_string();
        assert!(
            text.contains("subscribers.url") && !text.contains("hunter2"),
            "{text}"
        );
    }

    #[test]
    fn tables_from_config_replace_the_default_set() {
        let mut l = Layers::default();
        l.toml("[tables]\nlocation = \"cluster\"\ncfa = \"single\"\n", "f");
        let s = l.resolve().unwrap();
        assert_eq!(s.cluster_tables(), ["location"]);
        assert_eq!(s.tables_of(TableMode::Single), ["cfa"]);
    }

    #[test]
    fn registrar_limits_must_be_consistent() {
        let mut l = Layers::default();
        l.set("registrar.min_expires", "600".into(), "t");
        l.set("registrar.max_expires", "300".into(), "t");
        let text = l.resolve().unwrap_err().to_string();
        assert!(text.contains("registrar.max_expires"));
        assert!(text.contains("registrar.default_expires"));
    }

    #[test]
    fn master_url_passwords_do_not_leak_into_errors() {
        let mut l = Layers::default();
        l.set("master_url", "mysql://u:hunter2@h/db".into(), "t");
        l.set("grpc.listen", "x".into(), "t");
        let text = l.resolve().unwrap_err().to_string();
        assert!(!text.contains("hunter2"), "{text}");
        let mut l = Layers::default();
        l.set("master_url", "oracle://u:hunter2@h/db".into(), "t");
        l.set("grpc.token", "".into(), "t");
        let text = l.resolve().unwrap_err().to_string();
        assert!(
            text.contains("master_url") && !text.contains("hunter2"),
            "{text}"
        );
    }
}
