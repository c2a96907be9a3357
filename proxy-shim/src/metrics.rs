//! Prometheus metrics of the shim: requests by method, responses we send by
//! status, dropped input by reason, and locsvc call latency. The registry is
//! per App (no process-global state), so several shims can run in one test.
//! Serving it over HTTP is not part of this slice; `render()` gives the text.

use prometheus::{Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    responses: IntCounterVec,
    dropped: IntCounterVec,
    locsvc: HistogramVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "proxy_shim_requests_total",
                "SIP requests received, by method",
            ),
            &["method"],
        )
        .expect("static metric definition");
        let responses = IntCounterVec::new(
            Opts::new(
                "proxy_shim_responses_total",
                "SIP responses the shim generated, by status",
            ),
            &["status"],
        )
        .expect("static metric definition");
        let dropped = IntCounterVec::new(
            Opts::new(
                "proxy_shim_dropped_total",
                "Input dropped without an answer, by reason",
            ),
            &["reason"],
        )
        .expect("static metric definition");
        let locsvc = HistogramVec::new(
            HistogramOpts::new("proxy_shim_locsvc_seconds", "locsvc call latency").buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
            ]),
            &["op", "result"],
        )
        .expect("static metric definition");
        for c in [&requests, &responses, &dropped] {
            let _ = registry.register(Box::new(c.clone()));
        }
        let _ = registry.register(Box::new(locsvc.clone()));
        Self {
            registry,
            requests,
            responses,
            dropped,
            locsvc,
        }
    }

    pub fn request(&self, method: &str) {
        // Method names come from the network: bound the label set.
        let m = match method {
            "REGISTER" | "INVITE" | "ACK" | "BYE" | "CANCEL" | "OPTIONS" | "MESSAGE"
            | "SUBSCRIBE" | "NOTIFY" | "INFO" | "UPDATE" | "PRACK" | "REFER" | "PUBLISH" => method,
            _ => "other",
        };
        self.requests.with_label_values(&[m]).inc();
    }

    pub fn response(&self, status: u16) {
        self.responses
            .with_label_values(&[status.to_string().as_str()])
            .inc();
    }

    pub fn dropped(&self, reason: &'static str) {
        self.dropped.with_label_values(&[reason]).inc();
    }

    pub fn dropped_count(&self, reason: &str) -> u64 {
        self.dropped.with_label_values(&[reason]).get()
    }

    pub fn locsvc_call(&self, op: &'static str, ok: bool, secs: f64) {
        self.locsvc
            .with_label_values(&[op, if ok { "ok" } else { "error" }])
            .observe(secs);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let _ = prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }
}
