//! A real OTLP/gRPC trace receiver on loopback, what a collector is to the
//! services: it takes their exports and keeps every span for a test to read.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use crate::serving::Serving;

/// One exported span, flattened.
#[derive(Debug, Clone, PartialEq)]
pub struct SpanRecord {
    /// `service.name` of the process that sent it.
    pub service: String,
    /// Hex trace id.
    pub trace_id: String,
    /// Hex span id.
    pub span_id: String,
    /// Hex parent span id; empty for a root.
    pub parent_span_id: String,
    pub name: String,
    /// OTLP `SpanKind`: 2 server, 3 client, 1 internal.
    pub kind: i32,
    /// Attributes, each value as text.
    pub attributes: BTreeMap<String, String>,
}

impl SpanRecord {
    /// The attribute `key`, if the span has it.
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

struct Received {
    spans: Mutex<Vec<SpanRecord>>,
    /// How many spans have arrived, for waiters.
    count: watch::Sender<usize>,
}

/// The receiver; stops when dropped.
pub struct OtlpSink {
    addr: SocketAddr,
    received: Arc<Received>,
    _serving: Serving<()>,
}

impl OtlpSink {
    /// Listens on a free loopback port.
    pub async fn start() -> Self {
        Self::start_on("127.0.0.1:0".parse().unwrap())
            .await
            .expect("bind the OTLP sink")
    }

    /// Listens on `addr`.
    pub async fn start_on(addr: SocketAddr) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let received = Arc::new(Received {
            spans: Mutex::default(),
            count: watch::channel(0).0,
        });
        let service = TraceServiceServer::new(Collector(received.clone()));
        let serving = Serving::spawn(|stop| async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    stop,
                )
                .await;
        });
        Ok(Self {
            addr,
            received,
            _serving: serving,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// A receiver of the number of spans received so far (taken ones
    /// included), changed by every export.
    pub fn counter(&self) -> watch::Receiver<usize> {
        self.received.count.subscribe()
    }

    /// The endpoint to configure (`http://127.0.0.1:port`).
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<SpanRecord> {
        self.received.spans.lock().unwrap().clone()
    }

    /// Takes every span received so far out of the sink (a long-running
    /// receiver's memory stays bounded); later ones are kept until taken.
    pub fn take_spans(&self) -> Vec<SpanRecord> {
        std::mem::take(&mut *self.received.spans.lock().unwrap())
    }

    /// Waits until the spans received satisfy `done`, woken by each export;
    /// fails the test naming `what` after `within`.
    pub async fn wait_for(
        &self,
        what: &str,
        within: Duration,
        done: impl Fn(&[SpanRecord]) -> bool,
    ) -> Vec<SpanRecord> {
        let mut count = self.counter();
        let waited = tokio::time::timeout(within, async {
            loop {
                // Marks the current count seen: an export after this
                // look wakes `changed`.
                count.borrow_and_update();
                let spans = self.spans();
                if done(&spans) {
                    return spans;
                }
                if count.changed().await.is_err() {
                    return spans;
                }
            }
        })
        .await;
        waited.unwrap_or_else(|_| {
            panic!(
                "timed out after {within:?} waiting for {what}; spans: {:#?}",
                self.spans()
            )
        })
    }
}

struct Collector(Arc<Received>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        req: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut out = Vec::new();
        for rs in req.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref())
                .map(|v| text(&v.value))
                .unwrap_or_default();
            for s in rs.scope_spans.into_iter().flat_map(|ss| ss.spans) {
                out.push(SpanRecord {
                    service: service.clone(),
                    trace_id: hex(&s.trace_id),
                    span_id: hex(&s.span_id),
                    parent_span_id: hex(&s.parent_span_id),
                    name: s.name,
                    kind: s.kind,
                    attributes: s
                        .attributes
                        .into_iter()
                        .map(|kv| (kv.key, kv.value.map(|v| text(&v.value)).unwrap_or_default()))
                        .collect(),
                });
            }
        }
        let n = out.len();
        self.0.spans.lock().unwrap().extend(out);
        self.0.count.send_modify(|total| *total += n);
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

fn text(v: &Option<Value>) -> String {
    match v {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
