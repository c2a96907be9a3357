//! Prometheus metrics, one registry per app instance (no process-global
//! state, so two instances can run in one test), served as text over HTTP
//! by `svc_base::metrics`.

use prometheus::core::Collector;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};
pub use svc_base::metrics::{describe, serve};

/// Every metric locsvc exports.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// RPCs by method and gRPC code.
    pub rpc_requests: IntCounterVec,
    /// RPC latency by method.
    pub rpc_seconds: HistogramVec,
    /// RPCs refused by load shedding.
    pub rpc_shed: IntCounter,
    /// Reads also sent to a second member because the first was slow.
    pub hedged_reads: IntCounter,
    /// Lookups per LookupMany call (each is also counted as a Lookup).
    pub lookup_batch: Histogram,
    /// Lookups answered from the lookup cache (hit) or by a read (miss);
    /// none while the cache is off.
    pub lookup_cache: IntCounterVec,
    /// RPCs being served now.
    pub rpc_in_flight: IntGauge,
    /// Member operation failures by group, member and kind.
    pub member_errors: IntCounterVec,
    /// Writes a member missed while its partner took them.
    pub member_missed_writes: IntCounterVec,
    /// Failover decisions carried out, by action and result.
    pub failover_actions: IntCounterVec,
    /// Configured status per member (0 off, 1 on, 2 maintenance).
    pub member_status: IntGaugeVec,
    /// Whether reads may go to a member (on and holding every write).
    pub member_readable: IntGaugeVec,
    /// Expired bindings deleted.
    pub contacts_swept: IntCounter,
    /// Seconds between the oldest expired row still stored and the last
    /// sweep pass, per table (0: nothing left behind).
    pub sweep_lag: IntGaugeVec,
    /// Unix time the last sweep pass ended.
    pub sweep_last_pass: IntGauge,
    /// Whether the last poll of the `locdb` master succeeded.
    pub master_up: IntGauge,
    /// Resyncs into members: running, rows copied, last progress.
    pub resync: ResyncMetrics,
    /// `locdb` reloads by result.
    pub config_reloads: IntCounterVec,
    /// Current number of `locdb` problems.
    pub config_problems: IntGauge,
    /// Writes whose caller was answered before this member confirmed them.
    pub writes_acked_before_member: IntCounterVec,
    /// Times a member's circuit opened (a transport failure).
    pub circuit_opened: IntCounterVec,
    /// Writes a member missed because its circuit was open.
    pub circuit_skips: IntCounterVec,
    /// Time between the first and the last member confirming one write
    /// (writes every member took); what `ack_grace` must cover.
    pub write_confirm_spread: Histogram,
    /// Other locsvc instances heard from within the lease.
    pub peers_live: IntGauge,
    /// Cross-instance AoR locks by result (taken, busy, fallback).
    pub aor_locks: IntCounterVec,
    /// The layout epoch this instance last read, and its phase (0
    /// announced, 1 moving, 2 done).
    pub layout_epoch: IntGauge,
    pub layout_phase: IntGauge,
    /// AoRs the mover carried to their new group.
    pub mover_aors: IntCounter,
    /// The mover's current pass: valid rows on the old groups when it
    /// began, rows scanned so far, and the seconds it expects to need for
    /// the rest (-1: not known yet).
    pub mover_pass_rows: IntGauge,
    pub mover_pass_scanned: IntGauge,
    pub mover_eta_seconds: IntGauge,
    /// Where a request's time goes, stage by stage (README "Metrics").
    pub stages: Stages,
    /// Valid contacts and distinct AoRs per table and group, as the last
    /// census counted them.
    pub group_contacts: IntGaugeVec,
    pub group_aors: IntGaugeVec,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let registry =
            Registry::new_custom(Some("locsvc".into()), None).unwrap_or_else(|_| Registry::new());
        // Under the registry's prefix: locsvc_process_*.
        svc_base::metrics::register_process_metrics(&registry, "");
        let Rpc {
            rpc_requests,
            rpc_seconds,
            rpc_shed,
            rpc_in_flight,
            hedged_reads,
            lookup_batch,
            lookup_cache,
        } = Rpc::register(&registry);
        let Members {
            member_errors,
            member_status,
            member_readable,
            circuit_opened,
            circuit_skips,
            failover_actions,
        } = Members::register(&registry);
        let Writes {
            member_missed_writes,
            writes_acked_before_member,
            write_confirm_spread,
        } = Writes::register(&registry);
        let Housekeeping {
            contacts_swept,
            sweep_lag,
            sweep_last_pass,
            master_up,
            config_reloads,
            config_problems,
        } = Housekeeping::register(&registry);
        let resync = ResyncMetrics::register(&registry);
        let Serialization {
            peers_live,
            aor_locks,
            layout_epoch,
            layout_phase,
            mover_aors,
            mover_pass_rows,
            mover_pass_scanned,
            mover_eta_seconds,
        } = Serialization::register(&registry);
        let stages = Stages::register(&registry);
        let census = |name: &str, help: &str| {
            let g =
                IntGaugeVec::new(Opts::new(name, help), &["table", "group"]).expect("valid metric");
            registered(&registry, g)
        };
        let group_contacts = census(
            "group_contacts",
            "Valid contacts per table and group (last census)",
        );
        let group_aors = census(
            "group_aors",
            "Distinct AoRs with a valid contact per table and group (last census)",
        );
        Self {
            registry,
            rpc_requests,
            rpc_seconds,
            rpc_shed,
            rpc_in_flight,
            hedged_reads,
            lookup_batch,
            lookup_cache,
            member_errors,
            member_missed_writes,
            failover_actions,
            member_status,
            member_readable,
            contacts_swept,
            sweep_lag,
            sweep_last_pass,
            master_up,
            resync,
            config_reloads,
            config_problems,
            writes_acked_before_member,
            circuit_opened,
            circuit_skips,
            write_confirm_spread,
            peers_live,
            aor_locks,
            layout_epoch,
            layout_phase,
            mover_aors,
            mover_pass_rows,
            mover_pass_scanned,
            mover_eta_seconds,
            stages,
            group_contacts,
            group_aors,
        }
    }

    /// The histograms member stores report their queue and statement
    /// times to.
    pub fn stage_timers(&self) -> crate::store::StageTimers {
        crate::store::StageTimers {
            queued: self.stages.store_queue.clone(),
            statement: self.stages.store_statement.clone(),
            batch: self.stages.store_batch.clone(),
        }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        svc_base::metrics::render(&self.registry)
    }
}

// One family per struct, its fields named as in `Metrics`, so `new` moves
// them over by name and cannot swap two of a type.

/// The serving side: requests, latency, shedding, hedged reads.
struct Rpc {
    rpc_requests: IntCounterVec,
    rpc_seconds: HistogramVec,
    rpc_shed: IntCounter,
    rpc_in_flight: IntGauge,
    hedged_reads: IntCounter,
    lookup_batch: Histogram,
    lookup_cache: IntCounterVec,
}

impl Rpc {
    fn register(registry: &Registry) -> Self {
        let rpc_seconds = HistogramVec::new(
            HistogramOpts::new("rpc_duration_seconds", "RPC latency").buckets(vec![
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0,
            ]),
            &["method"],
        )
        .expect("valid metric");
        let lookup_batch = Histogram::with_opts(
            HistogramOpts::new(
                "lookup_many_size",
                "Lookups per LookupMany call (each also counted as a Lookup in rpc_*)",
            )
            .buckets(powers_of_two(11)),
        )
        .expect("valid metric");
        Self {
            lookup_batch: registered(registry, lookup_batch),
            rpc_requests: counter_vec(
                registry,
                "rpc_requests_total",
                "RPCs by method and code",
                &["method", "code"],
            ),
            rpc_seconds: registered(registry, rpc_seconds),
            rpc_shed: counter(registry, "rpc_shed_total", "RPCs refused by load shedding"),
            rpc_in_flight: registered(
                registry,
                IntGauge::new("rpc_in_flight", "RPCs being served now").expect("valid metric"),
            ),
            hedged_reads: counter(
                registry,
                "hedged_reads_total",
                "Reads also sent to a second member",
            ),
            lookup_cache: counter_vec(
                registry,
                "lookup_cache_total",
                "Lookups answered from the lookup cache (hit) or by a read (miss)",
                &["result"],
            ),
        }
    }
}

/// Several instances on one cluster: who else serves, and the AoR locks
/// that serialize their Saves.
struct Serialization {
    peers_live: IntGauge,
    aor_locks: IntCounterVec,
    layout_epoch: IntGauge,
    layout_phase: IntGauge,
    mover_aors: IntCounter,
    mover_pass_rows: IntGauge,
    mover_pass_scanned: IntGauge,
    mover_eta_seconds: IntGauge,
}

impl Serialization {
    fn register(registry: &Registry) -> Self {
        Self {
            peers_live: gauge(
                registry,
                "peers_live",
                "Other locsvc instances heard from within the lease",
            ),
            aor_locks: counter_vec(
                registry,
                "aor_locks_total",
                "Cross-instance AoR locks in the master by result: taken, busy (held \
                 elsewhere past the deadline), fallback (master unanswered: in-process \
                 lock only)",
                &["result"],
            ),
            layout_epoch: gauge(
                registry,
                "layout_epoch",
                "The layout epoch last read from locsvc_layout",
            ),
            layout_phase: gauge(
                registry,
                "layout_phase",
                "Phase of that epoch: 0 announced, 1 moving, 2 done",
            ),
            mover_aors: counter(
                registry,
                "mover_aors_total",
                "AoRs the mover carried to the group that owns them now",
            ),
            mover_pass_rows: gauge(
                registry,
                "mover_pass_rows",
                "Valid rows on the old groups when the mover's current pass began",
            ),
            mover_pass_scanned: gauge(
                registry,
                "mover_pass_scanned_rows",
                "Rows the mover's current pass has scanned",
            ),
            mover_eta_seconds: gauge(
                registry,
                "mover_eta_seconds",
                "Seconds the mover's current pass expects to need for the rest (-1: not known yet)",
            ),
        }
    }
}

/// Member health and failover: errors, status, circuits, actions taken.
struct Members {
    member_errors: IntCounterVec,
    member_status: IntGaugeVec,
    member_readable: IntGaugeVec,
    circuit_opened: IntCounterVec,
    circuit_skips: IntCounterVec,
    failover_actions: IntCounterVec,
}

impl Members {
    fn register(registry: &Registry) -> Self {
        let member_status = IntGaugeVec::new(
            Opts::new(
                "member_status",
                "locdb status per member (0 off, 1 on, 2 maintenance)",
            ),
            &["group", "member"],
        )
        .expect("valid metric");
        Self {
            member_errors: counter_vec(
                registry,
                "member_errors_total",
                "Member operation failures",
                &["group", "member", "kind"],
            ),
            member_status: registered(registry, member_status),
            member_readable: gauge_vec(
                registry,
                "member_readable",
                "1 when reads may go to the member (on, and holding every write as far as \
                 this instance knows), else 0",
                &["group", "member"],
            ),
            circuit_opened: counter_vec(
                registry,
                "member_circuit_opened_total",
                "Times a member's circuit opened on a transport failure",
                &["group", "member"],
            ),
            circuit_skips: counter_vec(
                registry,
                "member_circuit_skips_total",
                "Writes not sent to a member because its circuit was open",
                &["group", "member"],
            ),
            failover_actions: counter_vec(
                registry,
                "failover_actions_total",
                "Failover decisions by action and result",
                &["action", "result"],
            ),
        }
    }
}

/// How the members of a group took each write.
struct Writes {
    member_missed_writes: IntCounterVec,
    writes_acked_before_member: IntCounterVec,
    write_confirm_spread: Histogram,
}

impl Writes {
    fn register(registry: &Registry) -> Self {
        let write_confirm_spread = Histogram::with_opts(
            HistogramOpts::new(
                "write_confirm_spread_seconds",
                "Time between the first and the last member confirming one write",
            )
            .buckets(vec![
                0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5,
            ]),
        )
        .expect("valid metric");
        Self {
            member_missed_writes: counter_vec(
                registry,
                "member_missed_writes_total",
                "Writes a member missed while its partner took them",
                &["group", "member"],
            ),
            writes_acked_before_member: counter_vec(
                registry,
                "writes_acked_before_member_total",
                "Writes acknowledged before this member confirmed them",
                &["group", "member"],
            ),
            write_confirm_spread: registered(registry, write_confirm_spread),
        }
    }
}

/// Background work: the expiry sweep and `locdb` reloads.
struct Housekeeping {
    contacts_swept: IntCounter,
    sweep_lag: IntGaugeVec,
    sweep_last_pass: IntGauge,
    master_up: IntGauge,
    config_reloads: IntCounterVec,
    config_problems: IntGauge,
}

impl Housekeeping {
    fn register(registry: &Registry) -> Self {
        Self {
            contacts_swept: counter(registry, "contacts_swept_total", "Expired bindings deleted"),
            sweep_lag: gauge_vec(
                registry,
                "sweep_lag_seconds",
                "Seconds the oldest expired row still stored had expired when the last sweep \
                 pass ended, per table (worst member; 0: none left)",
                &["table"],
            ),
            sweep_last_pass: gauge(
                registry,
                "sweep_last_pass_timestamp_seconds",
                "Unix time the last expiry sweep pass ended",
            ),
            master_up: gauge(
                registry,
                "master_up",
                "1 when the last poll of the locdb master succeeded, else 0",
            ),
            config_reloads: counter_vec(
                registry,
                "config_reloads_total",
                "locdb reloads by result",
                &["result"],
            ),
            config_problems: registered(
                registry,
                IntGauge::new("config_problems", "Current locdb problems").expect("valid metric"),
            ),
        }
    }
}

/// Resyncs of members that missed writes, by group and member.
#[derive(Debug, Clone)]
pub struct ResyncMetrics {
    /// 1 while a resync (or merge) into the member runs (one at a time).
    pub active: IntGaugeVec,
    /// Rows copied into the member by resyncs.
    pub rows: IntCounterVec,
    /// Unix time a resync into the member last finished a page.
    pub last_progress: IntGaugeVec,
}

impl ResyncMetrics {
    fn register(registry: &Registry) -> Self {
        let labels = &["group", "member"];
        Self {
            active: gauge_vec(
                registry,
                "resync_active",
                "1 while a resync into the member runs",
                labels,
            ),
            rows: counter_vec(
                registry,
                "resync_rows_total",
                "Rows copied into the member by resyncs",
                labels,
            ),
            last_progress: gauge_vec(
                registry,
                "resync_last_progress_timestamp_seconds",
                "Unix time a resync into the member last finished a page",
                labels,
            ),
        }
    }

    /// The series of member `no` of `group`, for one resync.
    pub fn of(&self, group: u32, no: u32) -> ResyncMeter {
        let (g, n) = (group.to_string(), no.to_string());
        ResyncMeter {
            active: self.active.with_label_values(&[&g, &n]),
            rows: self.rows.with_label_values(&[&g, &n]),
            last_progress: self.last_progress.with_label_values(&[&g, &n]),
        }
    }
}

/// One member's resync series.
#[derive(Debug, Clone)]
pub struct ResyncMeter {
    pub active: IntGauge,
    pub rows: IntCounter,
    pub last_progress: IntGauge,
}

/// Per-stage latency: an RPC's time (`rpc_duration_seconds`) split into
/// waiting for the AoR's locks, each member's part, and within a member
/// the wait for a coalescing worker and the statement itself.
#[derive(Debug, Clone)]
pub struct Stages {
    /// Waits for an AoR's lock (`aor_lock_wait_seconds{lock}`): in this
    /// instance, and across instances (the master's).
    pub aor_lock_local: Histogram,
    pub aor_lock_master: Histogram,
    /// One member's part of a read or write, by group, member and op.
    pub member_query: HistogramVec,
    /// Time a coalesced request waited for a worker, by op.
    pub store_queue: HistogramVec,
    /// Time its batch's statements ran, by op.
    pub store_statement: HistogramVec,
    /// Requests per batch (one transaction or query), by op.
    pub store_batch: HistogramVec,
}

/// One member's part of reads and writes (`member_query_seconds`),
/// resolved once when the member enters a snapshot, not per operation.
#[derive(Debug, Clone)]
pub struct MemberTimers {
    pub read: Histogram,
    pub write: Histogram,
}

impl Metrics {
    /// The query-time histograms of member `no` of `group`.
    pub fn member_timers(&self, group: u32, no: u32) -> MemberTimers {
        let (g, n) = (group.to_string(), no.to_string());
        let of = |op: &str| self.stages.member_query.with_label_values(&[&g, &n, op]);
        MemberTimers {
            read: of("read"),
            write: of("write"),
        }
    }
}

/// Fine at the low end (a loopback round trip is ~0.1 ms) and with a
/// bucket edge at 40 ms, where Nagle meeting a delayed ACK would show.
const STAGE_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.035, 0.05, 0.1, 0.25, 0.5, 1.0,
];

impl Stages {
    fn register(registry: &Registry) -> Self {
        let h = |name: &str, help: &str, labels: &[&str]| {
            let v = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(STAGE_BUCKETS.to_vec()),
                labels,
            )
            .expect("valid metric");
            registered(registry, v)
        };
        let aor_lock_wait = h(
            "aor_lock_wait_seconds",
            "Waits for an AoR's lock, by lock (local, master)",
            &["lock"],
        );
        Self {
            aor_lock_local: aor_lock_wait.with_label_values(&["local"]),
            aor_lock_master: aor_lock_wait.with_label_values(&["master"]),
            member_query: h(
                "member_query_seconds",
                "One member's part of a read or write, by group, member and op",
                &["group", "member", "op"],
            ),
            store_queue: h(
                "store_queue_seconds",
                "Time a coalesced request waited for a worker, by op",
                &["op"],
            ),
            store_statement: h(
                "store_statement_seconds",
                "Time the batch of a coalesced request ran, by op",
                &["op"],
            ),
            store_batch: registered(
                registry,
                HistogramVec::new(
                    HistogramOpts::new(
                        "store_batch_requests",
                        "Requests per coalesced batch (one transaction or query), by op",
                    )
                    .buckets(powers_of_two(9)),
                    &["op"],
                )
                .expect("valid metric"),
            ),
        }
    }
}

/// `metric`, registered in `registry`; a clash is a bug in this module.
/// Buckets 1, 2, 4, … (`n` of them), for counts per batch.
fn powers_of_two(n: usize) -> Vec<f64> {
    prometheus::exponential_buckets(1.0, 2.0, n).expect("valid buckets")
}

fn registered<M: Collector + Clone + 'static>(registry: &Registry, metric: M) -> M {
    registry
        .register(Box::new(metric.clone()))
        .expect("unique metric");
    metric
}

/// A registered gauge with `labels`.
fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    registered(
        registry,
        IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"),
    )
}

/// A registered gauge.
fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    registered(registry, IntGauge::new(name, help).expect("valid metric"))
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    registered(registry, IntCounter::new(name, help).expect("valid metric"))
}

/// A registered counter with `labels`.
fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    registered(registry, c)
}

impl svc_base::metrics::RegistryOwner for Metrics {
    fn registry(&self) -> &Registry {
        &self.registry
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
