//! Bulk-loads bindings straight into the member databases, bypassing gRPC:
//! the layout comes from `locdb` (through locsvc's own cluster model), each
//! AoR is placed with locsvc's own `Partitioner` and key policy, and rows go
//! in with `LocationStore::copy_in` in multi-row batches to every member of
//! the group, several batches in flight per member.
//!
//! Memory stays bounded whatever the row count: one thread generates rows
//! into per-group buffers and hands full batches to bounded per-member
//! queues, blocking when the databases fall behind.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use locsvc::cluster::model::{self, MemberStatus};
use locsvc::domain::{Aor, Binding, KeyPolicy, UnixTime};
use locsvc::partition::{HashMode, Partitioner};
use locsvc::router::TableMode;
use locsvc::settings::Settings;
use locsvc::store::{
    COLUMNS, DbUrl, Dialect, LocationStore, PoolSettings, SqlStore, StoreError, StoreOptions,
    StoredBinding,
};
use tokio::sync::{Mutex, mpsc};
use xxhash_rust::xxh3::xxh3_64;

use crate::stats::Recorder;
use crate::workload::{Users, is_expired, splitmix64};

/// Most bind parameters in one statement, per dialect (SQLite's
/// SQLITE_MAX_VARIABLE_NUMBER since 3.32; MySQL and PostgreSQL: 65535).
pub fn max_params(d: Dialect) -> usize {
    match d {
        Dialect::Sqlite => 32_766,
        Dialect::MySql | Dialect::Postgres => 65_535,
    }
}

/// Largest batch (rows per statement) `d` accepts: 18 parameters per row.
pub fn max_batch(d: Dialect) -> usize {
    max_params(d) / COLUMNS.len()
}

/// Where the layout is read from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A master database holding `locdb`.
    MasterUrl(String),
    /// The embedded SQLite layout of `locsvc serve --data-dir DIR`.
    DataDir(PathBuf),
}

/// Everything a preload needs.
#[derive(Debug, Clone)]
pub struct PreloadOptions {
    pub source: Source,
    /// Run locsvc's migrations (and, for a data dir, create the embedded
    /// layout as `locsvc serve` would) before loading.
    pub migrate: bool,
    pub table: String,
    pub users: Users,
    pub first: u64,
    pub count: u64,
    pub expires: i64,
    pub expired_fraction: f64,
    pub hash: HashMode,
    pub key_policy: KeyPolicy,
    pub batch: usize,
    /// Batches in flight per member; None: 1 on SQLite (one writer per
    /// file anyway, and concurrent writers keep its WAL from ever being
    /// reset, so it grows without bound), 4 elsewhere.
    pub in_flight: Option<usize>,
    pub query_timeout: Duration,
    pub retries: u32,
    /// Also write members that are off or in maintenance.
    pub include_inactive: bool,
    /// Progress line on stderr every this often (None: quiet).
    pub progress: Option<Duration>,
}

/// One member written to.
#[derive(Debug, Clone)]
pub struct MemberReport {
    pub group: u32,
    pub no: u32,
    pub url: String,
    pub status: String,
    pub in_flight: usize,
    pub rows_ok: u64,
    pub rows_failed: u64,
    pub retries: u64,
    /// Latency of each `copy_in` batch.
    pub batches: Recorder,
}

/// What a preload did.
#[derive(Debug)]
pub struct PreloadReport {
    pub elapsed: Duration,
    pub rows: u64,
    pub expired_rows: u64,
    pub rows_by_group: BTreeMap<u32, u64>,
    pub members: Vec<MemberReport>,
    /// Members of the layout that were not written (not on).
    pub skipped: Vec<String>,
    pub problems: Vec<String>,
    pub migrations: Vec<String>,
    pub batch: usize,
}

impl PreloadReport {
    /// Every batch of every member together.
    pub fn batches(&self) -> Recorder {
        let mut t = Recorder::default();
        for m in &self.members {
            t.merge(&m.batches);
        }
        t
    }

    pub fn row_writes_ok(&self) -> u64 {
        self.members.iter().map(|m| m.rows_ok).sum()
    }

    pub fn row_writes_failed(&self) -> u64 {
        self.members.iter().map(|m| m.rows_failed).sum()
    }
}

/// Builds the rows of subscribers: deterministic, so a second preload
/// of the same users updates the same rows instead of adding new ones.
#[derive(Debug, Clone)]
pub struct RowMaker {
    pub users: Users,
    pub key_policy: KeyPolicy,
    pub expires: i64,
    pub expired_fraction: f64,
    pub now: UnixTime,
}

impl RowMaker {
    /// Whether row `i` is generated already expired.
    pub fn expired(&self, i: u64) -> bool {
        is_expired(i, self.expired_fraction)
    }

    /// The row of subscriber `i`. Valid rows expire between `expires / 2`
    /// and `expires` seconds from now (registrations made at different
    /// times); expired ones expired up to an hour ago.
    pub fn row(&self, i: u64) -> anyhow::Result<StoredBinding> {
        let aor = Aor::parse(&self.users.aor(i), self.key_policy)
            .with_context(|| format!("subscriber {i}: {}", self.users.aor(i)))?;
        let jitter = |span: i64| {
            let span = u64::try_from(span.max(1)).unwrap_or(1);
            i64::try_from(splitmix64(i) % span).unwrap_or(0)
        };
        let expires = if self.expired(i) {
            self.now - 1 - jitter(3600)
        } else {
            self.now + self.expires - jitter(self.expires / 2)
        };
        let ruid = format!("ld-{:016x}-{i}", xxh3_64(aor.key().as_bytes()));
        Ok(StoredBinding {
            row_id: 0,
            binding: Binding {
                call_id: format!("preload-{i}@locsvc-load"),
                user_agent: "locsvc-load preload".into(),
                ..Binding::new(
                    &ruid,
                    &self.users.contact(i),
                    expires,
                    expires - self.expires,
                )
            },
            aor,
        })
    }
}

/// Unix seconds now.
pub fn unix_now() -> UnixTime {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The variant name of a store error (`Unavailable`, `Timeout`, ...),
/// which is how failed batches are grouped.
fn store_error_kind(e: &StoreError) -> String {
    let debug = format!("{e:?}");
    debug
        .split(|c: char| !c.is_alphanumeric())
        .next()
        .unwrap_or("StoreError")
        .to_string()
}

type Batch = Arc<Vec<StoredBinding>>;

struct Target {
    group: u32,
    no: u32,
    url: String,
    status: String,
    in_flight: usize,
    store: Arc<SqlStore>,
    rx: Arc<Mutex<mpsc::Receiver<Batch>>>,
}

/// Runs a preload.
pub async fn preload(o: PreloadOptions) -> anyhow::Result<PreloadReport> {
    if !(0.0..=1.0).contains(&o.expired_fraction) {
        bail!("--expired-fraction must be between 0 and 1");
    }
    if o.batch == 0 || o.in_flight == Some(0) {
        bail!("--batch and --in-flight must be at least 1");
    }
    let pool_for = |in_flight: usize| PoolSettings {
        max_connections: u32::try_from(in_flight).unwrap_or(16),
        // A SQLite writer waits this long for the file lock too.
        acquire_timeout: o.query_timeout,
        ..PoolSettings::default()
    };
    let pool = pool_for(4);
    // What `locsvc::app::migrate` needs to know: the tables and the pools.
    let mut settings = Settings {
        tables: BTreeMap::from([(o.table.clone(), TableMode::Cluster)]),
        ..Settings::default()
    };
    settings.cluster.key_policy = o.key_policy;
    settings.cluster.hash = o.hash;
    settings.cluster.pool = pool.clone();
    settings.cluster.query_timeout = o.query_timeout;
    let master_url = match &o.source {
        Source::MasterUrl(u) => {
            let url = DbUrl::parse(u).map_err(|e| anyhow!("--master-url: {e}"))?;
            settings.master_url = Some(url.clone());
            url
        }
        Source::DataDir(d) => {
            if !o.migrate && !d.join("master.db").exists() {
                bail!(
                    "{} has no master.db: run `locsvc serve --data-dir {}` once, or pass --migrate",
                    d.display(),
                    d.display()
                );
            }
            settings.data_dir = d.clone();
            locsvc::app::embedded_master_url(d)?
        }
    };
    let migrations = if o.migrate {
        locsvc::app::migrate(&settings)
            .await
            .context("migrating master and members")?
    } else {
        Vec::new()
    };

    let master = SqlStore::open(
        &master_url,
        &StoreOptions {
            tables: Vec::new(),
            use_domain: o.key_policy.use_domain,
            pool: pool.clone(),
            query_timeout: o.query_timeout,
        },
    )
    .with_context(|| format!("master {}", master_url.redacted()))?;
    let rows = master
        .load_locdb()
        .await
        .with_context(|| format!("reading locdb on {}", master_url.redacted()))?;
    master.close().await;
    let (config, problems) = model::build(&rows, None);
    let problems: Vec<String> = problems.iter().map(ToString::to_string).collect();
    if config.groups.is_empty() {
        bail!(
            "locdb on {} has no usable group{}",
            master_url.redacted(),
            if problems.is_empty() {
                String::new()
            } else {
                format!(": {}", problems.join("; "))
            }
        );
    }
    let partitioner = Partitioner::new(o.hash, config.groups.keys().copied());

    // Every member that takes writes, with its queue. Only the generator
    // holds the senders, so the writers stop once it is done.
    let mut targets: Vec<Target> = Vec::new();
    let mut senders: BTreeMap<u32, Vec<mpsc::Sender<Batch>>> = BTreeMap::new();
    let mut skipped = Vec::new();
    for (id, g) in &config.groups {
        let mut any = false;
        for m in &g.members {
            let active = m.status == MemberStatus::On;
            if !active && !o.include_inactive {
                skipped.push(format!(
                    "group {id} member {} ({}, {})",
                    m.no,
                    m.url.redacted(),
                    m.status
                ));
                continue;
            }
            let limit = max_batch(m.url.dialect());
            if o.batch > limit {
                bail!(
                    "--batch {} is too large for {} ({} columns per row, at most {} bind parameters: --batch <= {limit})",
                    o.batch,
                    m.url.dialect().name(),
                    COLUMNS.len(),
                    max_params(m.url.dialect()),
                );
            }
            let in_flight = o.in_flight.unwrap_or(match m.url.dialect() {
                Dialect::Sqlite => 1,
                Dialect::MySql | Dialect::Postgres => 4,
            });
            let store = SqlStore::open(
                &m.url,
                &StoreOptions {
                    tables: vec![o.table.clone()],
                    use_domain: o.key_policy.use_domain,
                    pool: pool_for(in_flight),
                    query_timeout: o.query_timeout,
                },
            )
            .with_context(|| format!("member {}", m.url.redacted()))?;
            let (tx, rx) = mpsc::channel(in_flight);
            senders.entry(*id).or_default().push(tx);
            targets.push(Target {
                group: *id,
                no: m.no,
                url: m.url.redacted(),
                status: m.status.to_string(),
                in_flight,
                store: Arc::new(store),
                rx: Arc::new(Mutex::new(rx)),
            });
            any = true;
        }
        if !any {
            bail!(
                "group {id} has no member that is on (use --include-inactive to write the others)"
            );
        }
    }
    // Fail before generating anything if a member cannot be reached or
    // lacks the table.
    for t in &targets {
        t.store.probe(&o.table).await.with_context(|| {
            format!(
                "group {} member {} ({}): table {:?}",
                t.group, t.no, t.url, o.table
            )
        })?;
    }

    let start = Instant::now();
    let generated = Arc::new(AtomicU64::new(0));
    let written = Arc::new(AtomicU64::new(0));

    // Writers: `in_flight` tasks per member share its queue.
    let mut writers = Vec::new();
    for (index, t) in targets.iter().enumerate() {
        for _ in 0..t.in_flight {
            let (rx, store, table, written) = (
                t.rx.clone(),
                t.store.clone(),
                o.table.clone(),
                written.clone(),
            );
            let retries = o.retries;
            writers.push((
                index,
                tokio::spawn(async move {
                    let mut rec = Recorder::default();
                    let (mut ok, mut failed, mut retried) = (0u64, 0u64, 0u64);
                    loop {
                        let next = rx.lock().await.recv().await;
                        let Some(batch) = next else { break };
                        let rows = u64::try_from(batch.len()).unwrap_or(0);
                        let mut attempt = 0;
                        loop {
                            let sent = Instant::now();
                            match store.copy_in(&table, &batch).await {
                                Ok(()) => {
                                    rec.ok(sent.elapsed());
                                    ok += rows;
                                    written.fetch_add(rows, Ordering::Relaxed);
                                    break;
                                }
                                Err(_) if attempt < retries => {
                                    attempt += 1;
                                    retried += 1;
                                    tokio::time::sleep(Duration::from_millis(
                                        100 * u64::from(attempt),
                                    ))
                                    .await;
                                }
                                Err(e) => {
                                    rec.error(&store_error_kind(&e), None, &e.to_string());
                                    failed += rows;
                                    break;
                                }
                            }
                        }
                    }
                    (rec, ok, failed, retried)
                }),
            ));
        }
    }

    let progress = o.progress.map(|every| {
        let (generated, written) = (generated.clone(), written.clone());
        let total = o.count;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                let secs = start.elapsed().as_secs_f64();
                let g = generated.load(Ordering::Relaxed);
                eprintln!(
                    "preload: {g}/{total} rows generated, {} row writes done, {:.0} rows/s so far ({secs:.0} s)",
                    written.load(Ordering::Relaxed),
                    crate::stats::rate(g, start.elapsed()),
                );
            }
        })
    });

    // The generator: one blocking thread, bounded by the member queues.
    let maker = RowMaker {
        users: o.users.clone(),
        key_policy: o.key_policy,
        expires: o.expires,
        expired_fraction: o.expired_fraction,
        now: unix_now(),
    };
    let (first, count, batch, hash) = (o.first, o.count, o.batch, o.hash);
    let gen_counter = generated.clone();
    let generator = tokio::task::spawn_blocking(
        move || -> anyhow::Result<(BTreeMap<u32, u64>, u64)> {
            let mut buffers: BTreeMap<u32, Vec<StoredBinding>> = BTreeMap::new();
            let mut by_group: BTreeMap<u32, u64> = BTreeMap::new();
            let mut expired = 0u64;
            let send = |group: u32, rows: Vec<StoredBinding>| -> anyhow::Result<()> {
                let batch: Batch = Arc::new(rows);
                for tx in &senders[&group] {
                    tx.blocking_send(batch.clone())
                        .map_err(|_| anyhow!("the writers of group {group} stopped"))?;
                }
                Ok(())
            };
            for i in first..first.saturating_add(count) {
                let row = maker.row(i)?;
                let group = partitioner
                    .group_for(row.aor.key())
                    .ok_or_else(|| anyhow!("no groups to place {} on", row.aor.key()))?;
                if !senders.contains_key(&group) {
                    bail!(
                        "hash {hash} places {} on group {group}, which locdb does not define (crc32-mod needs groups 1..N without holes)",
                        row.aor.key()
                    );
                }
                if maker.expired(i) {
                    expired += 1;
                }
                *by_group.entry(group).or_default() += 1;
                let buf = buffers
                    .entry(group)
                    .or_insert_with(|| Vec::with_capacity(batch));
                buf.push(row);
                if buf.len() >= batch {
                    let full = std::mem::replace(buf, Vec::with_capacity(batch));
                    send(group, full)?;
                }
                gen_counter.fetch_add(1, Ordering::Relaxed);
            }
            for (group, rows) in std::mem::take(&mut buffers) {
                if !rows.is_empty() {
                    send(group, rows)?;
                }
            }
            Ok((by_group, expired))
        },
    );
    let generated_result = generator.await.context("the row generator panicked")?;

    let mut members: Vec<MemberReport> = targets
        .iter()
        .map(|t| MemberReport {
            group: t.group,
            no: t.no,
            url: t.url.clone(),
            status: t.status.clone(),
            in_flight: t.in_flight,
            rows_ok: 0,
            rows_failed: 0,
            retries: 0,
            batches: Recorder::default(),
        })
        .collect();
    for (index, w) in writers {
        let (rec, ok, failed, retried) = w.await.context("a writer panicked")?;
        let m = &mut members[index];
        m.batches.merge(&rec);
        m.rows_ok += ok;
        m.rows_failed += failed;
        m.retries += retried;
    }
    if let Some(p) = progress {
        p.abort();
    }
    let elapsed = start.elapsed();
    // Closing the pools checkpoints SQLite's WAL into the database file.
    for t in &targets {
        t.store.close().await;
    }
    let (rows_by_group, expired_rows) = generated_result?;
    Ok(PreloadReport {
        elapsed,
        rows: rows_by_group.values().sum(),
        expired_rows,
        rows_by_group,
        members,
        skipped,
        problems,
        migrations,
        batch: o.batch,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn maker(fraction: f64) -> RowMaker {
        RowMaker {
            users: Users {
                prefix: "User".into(),
                domain: "Example.COM".into(),
                contact_host: "192.0.2.10:5060".into(),
            },
            key_policy: KeyPolicy::default(),
            expires: 3600,
            expired_fraction: fraction,
            now: 1_800_000_000,
        }
    }

    #[test]
    fn rows_carry_the_servers_canonical_aor_and_a_stable_ruid() {
        let m = maker(0.0);
        let r = m.row(42).unwrap();
        assert_eq!(r.aor.key(), "user42@example.com");
        assert_eq!(r.aor.user(), "user42");
        assert_eq!(r.binding.contact, "sip:User42@192.0.2.10:5060");
        assert_eq!(r.binding.ruid, m.row(42).unwrap().binding.ruid);
        assert_ne!(r.binding.ruid, m.row(43).unwrap().binding.ruid);
        assert!(r.binding.ruid.len() <= 64);
        let b = &r.binding;
        assert!(
            b.expires > m.now + 1800 && b.expires <= m.now + 3600,
            "{}",
            b.expires
        );
        assert_eq!(b.last_modified, b.expires - 3600);
    }

    #[test]
    fn the_expired_share_is_already_expired() {
        let m = maker(0.5);
        let expired: Vec<bool> = (0..4)
            .map(|i| m.row(i).unwrap().binding.expires <= m.now)
            .collect();
        assert_eq!(expired, [false, true, false, true]);
    }

    #[test]
    fn batches_respect_the_bind_parameter_limits() {
        assert_eq!(COLUMNS.len(), 18);
        assert_eq!(max_batch(Dialect::Sqlite), 1820);
        assert!(max_batch(Dialect::Sqlite) * COLUMNS.len() <= 32_766);
        assert_eq!(max_batch(Dialect::MySql), 3640);
    }

    #[test]
    fn store_errors_are_grouped_by_variant() {
        let e = StoreError::Timeout(Duration::from_secs(1));
        assert_eq!(store_error_kind(&e), "Timeout");
        let e = StoreError::Rejected("no such table".into());
        assert_eq!(store_error_kind(&e), "Rejected");
    }

    #[test]
    fn an_unparsable_subscriber_is_an_error_not_a_bad_row() {
        let mut m = maker(0.0);
        m.users.domain = "bad domain".into();
        assert!(m.row(1).is_err());
    }
}
