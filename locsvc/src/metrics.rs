//! Prometheus metrics, one registry per app instance (no process-global
//! state, so two instances can run in one test), served as text over HTTP
//! by `svc_base::metrics`.

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
    /// Expired bindings deleted.
    pub contacts_swept: IntCounter,
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
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let registry =
            Registry::new_custom(Some("locsvc".into()), None).unwrap_or_else(|_| Registry::new());
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let rpc_requests = counter_vec(
            "rpc_requests_total",
            "RPCs by method and code",
            &["method", "code"],
        );
        let member_errors = counter_vec(
            "member_errors_total",
            "Member operation failures",
            &["group", "member", "kind"],
        );
        let member_missed_writes = counter_vec(
            "member_missed_writes_total",
            "Writes a member missed while its partner took them",
            &["group", "member"],
        );
        let failover_actions = counter_vec(
            "failover_actions_total",
            "Failover decisions by action and result",
            &["action", "result"],
        );
        let writes_acked_before_member = counter_vec(
            "writes_acked_before_member_total",
            "Writes acknowledged before this member confirmed them",
            &["group", "member"],
        );
        let circuit_opened = counter_vec(
            "member_circuit_opened_total",
            "Times a member's circuit opened on a transport failure",
            &["group", "member"],
        );
        let circuit_skips = counter_vec(
            "member_circuit_skips_total",
            "Writes not sent to a member because its circuit was open",
            &["group", "member"],
        );
        let config_reloads = counter_vec(
            "config_reloads_total",
            "locdb reloads by result",
            &["result"],
        );
        let rpc_seconds = HistogramVec::new(
            HistogramOpts::new("rpc_duration_seconds", "RPC latency").buckets(vec![
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0,
            ]),
            &["method"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(rpc_seconds.clone()))
            .expect("unique metric");
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
        registry
            .register(Box::new(write_confirm_spread.clone()))
            .expect("unique metric");
        let member_status = IntGaugeVec::new(
            Opts::new(
                "member_status",
                "locdb status per member (0 off, 1 on, 2 maintenance)",
            ),
            &["group", "member"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(member_status.clone()))
            .expect("unique metric");
        let rpc_shed = IntCounter::new("rpc_shed_total", "RPCs refused by load shedding")
            .expect("valid metric");
        registry
            .register(Box::new(rpc_shed.clone()))
            .expect("unique metric");
        let rpc_in_flight =
            IntGauge::new("rpc_in_flight", "RPCs being served now").expect("valid metric");
        registry
            .register(Box::new(rpc_in_flight.clone()))
            .expect("unique metric");
        let hedged_reads =
            IntCounter::new("hedged_reads_total", "Reads also sent to a second member")
                .expect("valid metric");
        registry
            .register(Box::new(hedged_reads.clone()))
            .expect("unique metric");
        let contacts_swept = IntCounter::new("contacts_swept_total", "Expired bindings deleted")
            .expect("valid metric");
        registry
            .register(Box::new(contacts_swept.clone()))
            .expect("unique metric");
        let config_problems =
            IntGauge::new("config_problems", "Current locdb problems").expect("valid metric");
        registry
            .register(Box::new(config_problems.clone()))
            .expect("unique metric");
        Self {
            registry,
            rpc_requests,
            rpc_seconds,
            rpc_shed,
            rpc_in_flight,
            hedged_reads,
            member_errors,
            member_missed_writes,
            failover_actions,
            member_status,
            contacts_swept,
            config_reloads,
            config_problems,
            writes_acked_before_member,
            circuit_opened,
            circuit_skips,
            write_confirm_spread,
        }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        svc_base::metrics::render(&self.registry)
    }
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
