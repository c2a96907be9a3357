//! Logs and traces, set up the same way in both binaries: log lines to
//! stderr under the configured filter and, when an OTLP endpoint is set,
//! spans exported over OTLP/gRPC with the W3C trace context carried across
//! the shim → locsvc hop in gRPC metadata (`traceparent`), so one REGISTER
//! is one trace across both services.
//!
//! Traces are off unless configured. Off, nothing is exported, no context
//! is injected or extracted, and the spans that exist only for traces (at
//! debug level) are not even created. On, every span of our own crates up
//! to debug level goes to the exporter (member operations included), events
//! at info and above become span events, and a new trace is recorded with
//! `sample_ratio` (a caller's sampled flag wins, so one REGISTER is
//! recorded in both services or in neither). Spans wait in a bounded queue
//! (dropped, never blocking a request, when the collector falls behind) and
//! leave in batches from the SDK's own thread.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider,
};
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Interest;
use tracing::{Instrument, Level};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::{Context as LayerContext, Filter, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

/// Where and how much to trace.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceSettings {
    /// OTLP/gRPC collector (`http://127.0.0.1:4317`); None: no traces.
    pub otlp_endpoint: Option<String>,
    /// Share of new traces recorded, 0 to 1; a caller's decision wins.
    pub sample_ratio: f64,
    /// `service.name` of every span.
    pub service_name: String,
}

impl TraceSettings {
    /// Traces off, `service.name` = `service_name` once turned on.
    pub fn off(service_name: &str) -> Self {
        Self {
            otlp_endpoint: None,
            sample_ratio: DEFAULT_SAMPLE_RATIO,
            service_name: service_name.to_string(),
        }
    }
}

/// Share of new traces recorded once traces are on: enough to see every
/// kind of request in a minute at production rates without the export
/// costing noticeable CPU; the lab and tests set 1.
pub const DEFAULT_SAMPLE_RATIO: f64 = 0.01;

/// The targets whose spans and events are exported: our own crates, not
/// the libraries under them (whose events would flood a trace).
const TRACED_TARGETS: &[&str] = &["locsvc", "proxy_shim", "svc_base"];

/// Longest a batch may take to reach the collector.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the queue is sent: a trace shows up within about this long.
const EXPORT_EVERY: Duration = Duration::from_secs(1);
/// Spans waiting for export; beyond, new ones are dropped (and counted in
/// the SDK's log at shutdown).
const QUEUE_SPANS: usize = 8192;
/// Longest the last batch may take at shutdown.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// The `otlp_endpoint` setting: empty (no traces) or the `http://` URL of
/// an OTLP/gRPC collector. `https://` is refused here rather than failing
/// every export later: the exporter is built without TLS (run a collector
/// agent next to the service to cross the network).
pub fn otlp_endpoint(v: &str) -> Result<Option<String>, String> {
    if v.is_empty() {
        return Ok(None);
    }
    let u = url::Url::parse(v).map_err(|e| format!("{v:?} is no URL: {e}"))?;
    if u.scheme() == "https" {
        return Err(format!(
            "{v:?}: no TLS to the collector in this build; use http:// to a local collector agent"
        ));
    }
    if u.scheme() != "http" || u.host().is_none() {
        return Err(format!("{v:?}: expected http://host:port (OTLP/gRPC)"));
    }
    Ok(Some(v.to_string()))
}

/// The `sample_ratio` setting: a share from 0 to 1.
pub fn sample_ratio(v: &str) -> Result<f64, String> {
    let r: f64 = v.parse().map_err(|e| format!("{v:?}: {e}"))?;
    if !(0.0..=1.0).contains(&r) {
        return Err("must be from 0 to 1".into());
    }
    Ok(r)
}

/// The `service_name` setting: not empty.
pub fn service_name(v: &str) -> Result<String, String> {
    if v.trim().is_empty() {
        return Err("must not be empty".into());
    }
    Ok(v.to_string())
}

/// Whether traces are exported (set once by `init`).
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether this process exports traces: callers skip work only traces need.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Logging and tracing could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The OTLP exporter refused its configuration.
    #[error("OTLP exporter for {endpoint}: {reason}")]
    Exporter {
        /// The endpoint as configured.
        endpoint: String,
        /// Why the exporter could not be built.
        reason: String,
    },
    /// Another global subscriber was installed first.
    #[error("logging is already set up in this process: {0}")]
    AlreadySet(String),
}

/// What `init` set up; `shutdown` sends the spans still queued.
#[derive(Debug)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports what is still queued (bounded by `FLUSH_TIMEOUT`) and stops
    /// the exporter; call once the app has drained.
    pub async fn shutdown(self) {
        let Some(provider) = self.provider else {
            return;
        };
        // The SDK waits on a std channel for its export thread.
        let done =
            tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(FLUSH_TIMEOUT))
                .await;
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "traces not all exported at shutdown"),
            Err(e) => tracing::warn!(error = %e, "trace export shutdown failed"),
        }
    }
}

/// Installs the process's subscriber: log lines to stderr under `filter`
/// (`RUST_LOG` wins), as JSON when `json`; and, with an OTLP endpoint, the
/// span exporter. Needs a Tokio runtime (the exporter's channel lives on
/// it).
pub fn init(filter: &str, json: bool, traces: &TraceSettings) -> Result<Telemetry, TelemetryError> {
    let env_filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(filter));
    let provider = traces
        .otlp_endpoint
        .as_deref()
        .map(|e| provider(e, traces))
        .transpose()?;
    let installed = match &provider {
        // Logs alone: one global filter, no per-layer filtering.
        None => tracing_subscriber::registry()
            .with(env_filter)
            .with(log_lines(json))
            .try_init(),
        Some(p) => logs_and_spans(
            env_filter,
            log_lines(json),
            p.tracer(traces.service_name.clone()),
        )
        .try_init(),
    };
    installed.map_err(|e| TelemetryError::AlreadySet(e.to_string()))?;
    if let Some(endpoint) = &traces.otlp_endpoint {
        ENABLED.store(true, Ordering::Relaxed);
        tracing::info!(
            endpoint,
            sample_ratio = traces.sample_ratio,
            service = traces.service_name,
            "exporting traces over OTLP/gRPC"
        );
    }
    Ok(Telemetry { provider })
}

/// Log lines under `env_filter` and spans to `tracer`: logs and spans
/// want different things, so each layer filters for itself, and `Fresh`
/// keeps each filter's decision current.
fn logs_and_spans(
    env_filter: EnvFilter,
    logs: Box<dyn Layer<Registry> + Send + Sync>,
    tracer: SdkTracer,
) -> impl tracing::Subscriber + Send + Sync {
    let spans = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_tracked_inactivity(false)
        .with_threads(false)
        .with_location(false)
        .with_target(false)
        .with_filter(Fresh(tracing_subscriber::filter::filter_fn(traced)));
    tracing_subscriber::registry()
        .with(logs.with_filter(Fresh(env_filter)))
        .with(spans)
}

/// Log lines to stderr, as JSON when `json`.
fn log_lines<S>(json: bool) -> Box<dyn Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    if json {
        fmt.json().boxed()
    } else {
        fmt.boxed()
    }
}

/// A per-layer filter whose decision is asked for at every span and event.
///
/// tracing-subscriber hands a per-layer filter's decision from `enabled` to
/// the span's creation through a thread-local, and skips `enabled` for a
/// callsite every filter found `always` interesting. Then a stale decision
/// is used: one left by an `enabled` call for something never created
/// (sqlx asks `log::log_enabled!` after every query, which `tracing-log`
/// turns into `enabled` with metadata that has no callsite), and the span
/// silently misses the layers whose bit says "disabled" (tokio-rs/tracing
/// #2519; seen here as locsvc's server spans missing from traces on
/// MariaDB, their member spans exported as roots). Capping the interest at
/// `sometimes` makes every span and event ask again.
struct Fresh<F>(F);

impl<F: Filter<S>, S: tracing::Subscriber> Filter<S> for Fresh<F> {
    fn enabled(&self, meta: &tracing::Metadata<'_>, cx: &LayerContext<'_, S>) -> bool {
        self.0.enabled(meta, cx)
    }

    fn callsite_enabled(&self, meta: &'static tracing::Metadata<'static>) -> Interest {
        let interest = self.0.callsite_enabled(meta);
        if interest.is_always() {
            Interest::sometimes()
        } else {
            interest
        }
    }

    fn event_enabled(&self, event: &tracing::Event<'_>, cx: &LayerContext<'_, S>) -> bool {
        self.0.event_enabled(event, cx)
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        self.0.max_level_hint()
    }

    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, cx: LayerContext<'_, S>) {
        self.0.on_new_span(attrs, id, cx);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, cx: LayerContext<'_, S>) {
        self.0.on_record(id, values, cx);
    }

    fn on_enter(&self, id: &Id, cx: LayerContext<'_, S>) {
        self.0.on_enter(id, cx);
    }

    fn on_exit(&self, id: &Id, cx: LayerContext<'_, S>) {
        self.0.on_exit(id, cx);
    }

    fn on_close(&self, id: Id, cx: LayerContext<'_, S>) {
        self.0.on_close(id, cx);
    }
}

fn provider(endpoint: &str, traces: &TraceSettings) -> Result<SdkTracerProvider, TelemetryError> {
    let refused = |reason: String| TelemetryError::Exporter {
        endpoint: endpoint.to_string(),
        reason,
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .with_timeout(EXPORT_TIMEOUT)
        .build()
        .map_err(|e| refused(e.to_string()))?;
    let batches = BatchSpanProcessor::builder(exporter)
        .with_batch_config(
            BatchConfigBuilder::default()
                .with_max_queue_size(QUEUE_SPANS)
                .with_scheduled_delay(EXPORT_EVERY)
                .build(),
        )
        .build();
    Ok(SdkTracerProvider::builder()
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            traces.sample_ratio,
        ))))
        .with_resource(
            Resource::builder()
                .with_service_name(traces.service_name.clone())
                .build(),
        )
        .with_span_processor(batches)
        .build())
}

/// Whether the exporter takes this span or event: our crates' spans up to
/// debug (member operations), their events at info and above.
fn traced(meta: &tracing::Metadata<'_>) -> bool {
    let ours = TRACED_TARGETS.iter().any(|t| {
        meta.target()
            .strip_prefix(t)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
    });
    let most = if meta.is_span() {
        Level::DEBUG
    } else {
        Level::INFO
    };
    ours && *meta.level() <= most
}

/// Puts the current span's trace context into outgoing gRPC metadata
/// (`traceparent`, `tracestate`); nothing when traces are off.
pub fn inject(metadata: &mut MetadataMap) {
    if !enabled() {
        return;
    }
    let cx = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&cx, &mut MetadataInjector(metadata));
}

/// The current span's trace context as a map (`traceparent`,
/// `tracestate`), for a request that travels inside a batch; empty when
/// traces are off.
pub fn context_map() -> std::collections::HashMap<String, String> {
    let mut map = std::collections::HashMap::new();
    if enabled() {
        let cx = tracing::Span::current().context();
        TraceContextPropagator::new().inject_context(&cx, &mut map);
    }
    map
}

/// Names `span` after gRPC method `service/method`
/// (`locsvc.v1.Location/Save`) on the `kind` side ("server" or "client")
/// with OpenTelemetry's RPC attributes; nothing when traces are off, so log
/// lines keep a short span prefix. The span comes from [`rpc_span!`].
pub fn name_rpc_span(span: &tracing::Span, service: &str, method: &str, kind: &'static str) {
    if enabled() {
        span.record("otel.name", format!("{service}/{method}"));
        span.record("otel.kind", kind);
        span.record("rpc.system", "grpc");
        span.record("rpc.service", service);
        span.record("rpc.method", method);
    }
}

/// Records a gRPC outcome on `span` (declaring `rpc.grpc.status_code` and
/// `otel.status_code` as empty fields); nothing when traces are off.
pub fn record_grpc_status(span: &tracing::Span, code: tonic::Code) {
    if enabled() {
        span.record("rpc.grpc.status_code", code as i32);
        if code != tonic::Code::Ok {
            span.record("otel.status_code", "error");
        }
    }
}

/// Runs `fut`, one gRPC call, in `span` and records its outcome there.
pub async fn in_rpc_span<T>(
    span: tracing::Span,
    fut: impl std::future::Future<Output = Result<T, tonic::Status>>,
) -> Result<T, tonic::Status> {
    let r = fut.instrument(span.clone()).await;
    record_grpc_status(
        &span,
        r.as_ref().err().map_or(tonic::Code::Ok, |s| s.code()),
    );
    r
}

/// A `tracing` span with the fields `name_rpc_span` and
/// `record_grpc_status` fill in besides the caller's:
/// `rpc_span!(Level::INFO, "rpc", method = "Save",)`.
#[macro_export]
macro_rules! rpc_span {
    ($level:expr, $name:expr, $($fields:tt)*) => {
        ::tracing::span!(
            $level,
            $name,
            $($fields)*
            otel.name = ::tracing::field::Empty,
            otel.kind = ::tracing::field::Empty,
            otel.status_code = ::tracing::field::Empty,
            rpc.system = ::tracing::field::Empty,
            rpc.service = ::tracing::field::Empty,
            rpc.method = ::tracing::field::Empty,
            rpc.grpc.status_code = ::tracing::field::Empty,
        )
    };
}

/// A caller's trace context, taken from a request's metadata before its
/// body is: the parent of the span that serves it.
#[derive(Debug, Default)]
pub struct Parent(Option<opentelemetry::Context>);

impl Parent {
    /// The trace context in incoming gRPC metadata; none when traces are
    /// off or the caller sent none.
    pub fn of(metadata: &MetadataMap) -> Self {
        if !enabled() {
            return Self(None);
        }
        let cx = TraceContextPropagator::new().extract(&MetadataExtractor(metadata));
        Self(cx.span().span_context().is_valid().then_some(cx))
    }

    /// The trace context in a map [`context_map`] made; none when traces
    /// are off or the map holds none.
    pub fn of_map(map: &std::collections::HashMap<String, String>) -> Self {
        if !enabled() || map.is_empty() {
            return Self(None);
        }
        let cx = TraceContextPropagator::new().extract(map);
        Self(cx.span().span_context().is_valid().then_some(cx))
    }

    /// Makes this context the parent of `span` (before it is entered).
    pub fn adopt(self, span: &tracing::Span) {
        if let Some(cx) = self.0 {
            // Fails only for a span the exporter does not see (filtered out).
            let _ = span.set_parent(cx);
        }
    }
}

struct MetadataInjector<'a>(&'a mut MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (
            MetadataKey::from_bytes(key.as_bytes()),
            MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(k, v);
        }
    }
}

struct MetadataExtractor<'a>(&'a MetadataMap);

impl Extractor for MetadataExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|k| match k {
                tonic::metadata::KeyRef::Ascii(k) => Some(k.as_str()),
                tonic::metadata::KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_crates_spans_to_debug_and_events_from_info_are_exported() {
        use tracing::callsite::Callsite;
        // Metadata of real callsites, one per case.
        macro_rules! meta {
            ($kind:ident, $target:literal, $level:expr) => {{
                struct Cs;
                static META: tracing::Metadata<'static> = tracing::Metadata::new(
                    "m",
                    $target,
                    $level,
                    None,
                    None,
                    None,
                    tracing::field::FieldSet::new(&[], tracing::callsite::Identifier(&CS)),
                    tracing::metadata::Kind::$kind,
                );
                static CS: Cs = Cs;
                impl Callsite for Cs {
                    fn set_interest(&self, _: tracing::subscriber::Interest) {}
                    fn metadata(&self) -> &tracing::Metadata<'_> {
                        &META
                    }
                }
                &META
            }};
        }
        assert!(traced(meta!(SPAN, "locsvc::router", Level::DEBUG)));
        assert!(traced(meta!(SPAN, "proxy_shim", Level::INFO)));
        assert!(!traced(meta!(SPAN, "locsvc::router", Level::TRACE)));
        assert!(!traced(meta!(EVENT, "locsvc::router", Level::DEBUG)));
        assert!(traced(meta!(EVENT, "locsvc::router", Level::WARN)));
        assert!(!traced(meta!(SPAN, "locsvcx", Level::INFO)));
        assert!(!traced(meta!(SPAN, "h2::proto", Level::INFO)));
        assert!(!traced(meta!(EVENT, "sqlx::query", Level::WARN)));
    }

    #[test]
    fn settings_are_checked() {
        assert_eq!(otlp_endpoint(""), Ok(None));
        assert_eq!(
            otlp_endpoint("http://127.0.0.1:4317"),
            Ok(Some("http://127.0.0.1:4317".into()))
        );
        assert!(otlp_endpoint("127.0.0.1:4317").is_err());
        assert!(otlp_endpoint("udp://collector:4317").is_err());
        assert!(otlp_endpoint("https://collector:4317").is_err());
        assert_eq!(sample_ratio("0.25"), Ok(0.25));
        assert!(sample_ratio("1.5").is_err());
        assert!(sample_ratio("-0.1").is_err());
        assert!(sample_ratio("all").is_err());
        assert!(service_name(" ").is_err());
    }

    #[test]
    fn a_span_after_an_enabled_check_for_nothing_still_reaches_both_layers() {
        use opentelemetry_sdk::trace::InMemorySpanExporter;
        use tracing::callsite::Callsite;
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let logs = tracing_subscriber::fmt::layer()
            .with_writer(std::io::sink)
            .boxed();
        let subscriber = logs_and_spans(EnvFilter::new("info"), logs, provider.tracer("t"));
        // What tracing-log does for sqlx's `log::log_enabled!` after a
        // query: `enabled` for metadata no span or event follows.
        struct LogRecord;
        static META: tracing::Metadata<'static> = tracing::Metadata::new(
            "log record",
            "sqlx::query",
            Level::DEBUG,
            None,
            None,
            None,
            tracing::field::FieldSet::new(&[], tracing::callsite::Identifier(&LOG_RECORD)),
            tracing::metadata::Kind::EVENT,
        );
        static LOG_RECORD: LogRecord = LogRecord;
        impl Callsite for LogRecord {
            fn set_interest(&self, _: Interest) {}
            fn metadata(&self) -> &tracing::Metadata<'_> {
                &META
            }
        }
        tracing::subscriber::with_default(subscriber, || {
            for _ in 0..3 {
                tracing::dispatcher::get_default(|d| d.enabled(&META));
                // Interesting to both layers, like locsvc's `rpc` span.
                let _rpc = tracing::info_span!(target: "locsvc::grpc", "rpc").entered();
                tracing::debug_span!(target: "locsvc::router", "member").in_scope(|| {});
            }
        });
        provider.force_flush().unwrap();
        let spans = exporter.get_finished_spans().unwrap();
        let rpc: Vec<_> = spans.iter().filter(|s| s.name == "rpc").collect();
        assert_eq!(rpc.len(), 3, "{spans:#?}");
        for member in spans.iter().filter(|s| s.name == "member") {
            assert!(
                rpc.iter()
                    .any(|r| r.span_context.span_id() == member.parent_span_id),
                "a member span hangs below its rpc span: {spans:#?}"
            );
        }
    }

    #[test]
    fn off_means_no_context_goes_out() {
        let mut m = MetadataMap::new();
        inject(&mut m);
        assert!(m.is_empty());
    }

    #[test]
    fn a_traceparent_round_trips_through_metadata() {
        let mut m = MetadataMap::new();
        let mut fields = std::collections::HashMap::new();
        fields.insert(
            "traceparent".to_string(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_string(),
        );
        let cx = TraceContextPropagator::new().extract(&fields);
        TraceContextPropagator::new().inject_context(&cx, &mut MetadataInjector(&mut m));
        assert_eq!(
            m.get("traceparent").unwrap().to_str().unwrap(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        let back = TraceContextPropagator::new().extract(&MetadataExtractor(&m));
        assert_eq!(
            back.span().span_context().trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert!(back.span().span_context().is_sampled());
    }
}
