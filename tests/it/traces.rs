//! Traces as an operator sees them in a collector: the real `locsvc` and
//! `proxy-shim` binaries export OTLP to a real receiver, sipp sends a
//! REGISTER and an INVITE through the shim, and each request is one trace
//! across both services (the shim's SIP span → its gRPC client span →
//! locsvc's server span → the member operations). A shim that does not
//! sample a request makes locsvc record none of it either.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use testkit::free_udp_port;
use testkit::otlp::{OtlpSink, SpanRecord};

use super::harness::{Backend, Layout};
use testkit::process::Service;

const READY: Duration = Duration::from_secs(30);
const SERVER: i32 = 2;
const CLIENT: i32 = 3;

fn scenario(path: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(path)
        .display()
        .to_string()
}

/// One sipp call of `scenario_file` for `user` against `shim`; its exit
/// status must be success (the expected final response arrived).
async fn sipp(dir: &Path, scenario_file: &str, user: &str, shim: std::net::SocketAddr) {
    let csv = dir.join(format!("{user}.csv"));
    std::fs::write(&csv, format!("SEQUENTIAL\n{user}\n")).unwrap();
    let out = tokio::process::Command::new("sipp")
        .current_dir(dir)
        .args([
            "-sf",
            &scenario(scenario_file),
            "-inf",
            &csv.display().to_string(),
            "-key",
            "prefix",
            "",
            "-i",
            "127.0.0.1",
            "-p",
            &free_udp_port().to_string(),
            "-m",
            "1",
            "-nostdin",
            "-timeout",
            "20s",
            "-timeout_error",
            &shim.to_string(),
        ])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(30), out)
        .await
        .expect("sipp ends")
        .expect("sipp runs (Debian package sip-tester)");
    assert!(
        out.status.success(),
        "sipp {scenario_file}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn env(prefix: &str, pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (format!("{prefix}{k}"), v.to_string()))
        .collect()
}

/// A shim in redirect mode in front of `locsvc`, exporting to `sink` at
/// `ratio`.
async fn shim(dir: &Path, locsvc: &str, sink: &OtlpSink, ratio: &str, name: &str) -> Service {
    let vars = env(
        "PROXY_SHIM_",
        &[
            ("LISTEN", "127.0.0.1:0"),
            ("DOMAINS", "example.com"),
            ("MODE", "redirect"),
            ("AUTH", "off"),
            ("METRICS_LISTEN", "off"),
            ("LOCSVC", locsvc),
            ("TRACE_OTLP_ENDPOINT", &sink.endpoint()),
            ("TRACE_SAMPLE_RATIO", ratio),
            ("TRACE_SERVICE_NAME", name),
        ],
    );
    let dir = dir.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    Service::start("proxy-shim", &[], &vars, &dir, READY).await
}

/// The spans of the trace whose shim root is the `method` request with
/// Call-ID `call_id` prefix, by span id.
fn trace_of<'a>(spans: &'a [SpanRecord], method: &str, user: &str) -> Option<Vec<&'a SpanRecord>> {
    let root = spans.iter().find(|s| {
        s.name == format!("SIP {method}")
            && s.attr("sip.call_id").is_some()
            && spans.iter().any(|c| {
                c.trace_id == s.trace_id
                    && c.attr("aor") == Some(&format!("\"sip:{user}@example.com\""))
            })
    })?;
    Some(
        spans
            .iter()
            .filter(|s| s.trace_id == root.trace_id)
            .collect(),
    )
}

/// Checks one request's trace: shim root → client attempt → locsvc server
/// span (`rpc`) → member operations, every parent link inside the trace.
fn check_trace(trace: &[&SpanRecord], method: &str, rpc: &str, status: &str) {
    let shown = format!("{trace:#?}");
    let by_id: HashMap<&str, &SpanRecord> =
        trace.iter().map(|s| (s.span_id.as_str(), *s)).collect();
    let root = trace
        .iter()
        .find(|s| s.parent_span_id.is_empty())
        .unwrap_or_else(|| panic!("a root span: {shown}"));
    assert_eq!(root.service, "shim-sampled", "{shown}");
    assert_eq!(root.name, format!("SIP {method}"), "{shown}");
    assert_eq!(root.kind, SERVER, "{shown}");
    assert_eq!(root.attr("sip.method"), Some(method), "{shown}");
    assert_eq!(root.attr("sip.status_code"), Some(status), "{shown}");
    let client = trace
        .iter()
        .find(|s| s.kind == CLIENT && s.name == format!("locsvc.v1.Location/{rpc}"))
        .unwrap_or_else(|| panic!("the shim's client span: {shown}"));
    assert_eq!(client.service, "shim-sampled");
    assert_eq!(client.parent_span_id, root.span_id, "{shown}");
    assert_eq!(client.attr("rpc.grpc.status_code"), Some("0"), "{shown}");
    assert_eq!(client.attr("rpc.system"), Some("grpc"), "{shown}");
    assert_eq!(client.attr("rpc.method"), Some(rpc), "{shown}");
    assert_eq!(client.attr("server.address"), Some("127.0.0.1"), "{shown}");
    assert!(client.attr("server.port").is_some(), "{shown}");
    let server = trace
        .iter()
        .find(|s| {
            s.service == "locsvc"
                && s.kind == SERVER
                && s.name == format!("locsvc.v1.Location/{rpc}")
        })
        .unwrap_or_else(|| panic!("locsvc's server span: {shown}"));
    assert_eq!(
        server.parent_span_id, client.span_id,
        "locsvc's span is the child of the shim's call: {shown}"
    );
    assert_eq!(server.attr("rpc.grpc.status_code"), Some("0"), "{shown}");
    assert_eq!(
        server.attr("rpc.service"),
        Some("locsvc.v1.Location"),
        "{shown}"
    );
    // Member operations hang below locsvc's server span, in locsvc.
    let members: Vec<&&SpanRecord> = trace.iter().filter(|s| s.name == "member").collect();
    assert!(!members.is_empty(), "member operations traced: {shown}");
    for m in members {
        assert_eq!(m.service, "locsvc");
        let mut at = *m;
        while at.span_id != server.span_id {
            at = by_id
                .get(at.parent_span_id.as_str())
                .unwrap_or_else(|| panic!("{m:?} descends from locsvc's server span: {shown}"));
        }
    }
}

#[tokio::test]
async fn on_the_embedded_layout_a_register_and_an_invite_are_each_one_trace() {
    one_trace_per_request(None).await;
}

/// sqlx's MySQL driver asks `log::log_enabled!` after every query on the
/// request's own thread, which once made tracing-subscriber drop locsvc's
/// server spans (svc_base::telemetry's `Fresh`).
#[tokio::test]
async fn on_mariadb_members_a_register_and_an_invite_are_each_one_trace() {
    let layout = Layout::create(
        Backend::MariaDb1,
        &[Backend::MariaDb1, Backend::MariaDb2],
        2,
    )
    .await;
    one_trace_per_request(Some(&layout.master_url)).await;
}

/// The test on the embedded layout (`master_url` None) or on a cluster.
async fn one_trace_per_request(master_url: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    let sink = OtlpSink::start().await;
    let data = dir.path().join("data");
    let locsvc_env = env(
        "LOCSVC_",
        &[
            ("MASTER_URL", master_url.unwrap_or_default()),
            // The production default, at which the MariaDB case failed.
            ("LOG__LEVEL", "info"),
            ("DATA_DIR", data.to_str().unwrap()),
            ("GRPC__LISTEN", "127.0.0.1:0"),
            ("METRICS__LISTEN", "off"),
            ("TRACE__OTLP_ENDPOINT", &sink.endpoint()),
            // Callers without a trace context are sampled at this ratio;
            // the shim's decision wins for its own requests.
            ("TRACE__SAMPLE_RATIO", "1"),
        ],
    );
    let locsvc = Service::start("locsvc", &["serve"], &locsvc_env, dir.path(), READY).await;
    let grpc = format!("http://{}", locsvc.bound_addr());
    let sampled = shim(dir.path(), &grpc, &sink, "1", "shim-sampled").await;
    let unsampled = shim(dir.path(), &grpc, &sink, "0", "shim-unsampled").await;

    // Not sampled by its shim: recorded by neither service.
    sipp(
        dir.path(),
        "benches/faults/register.xml",
        "bob",
        unsampled.bound_addr(),
    )
    .await;
    sipp(
        dir.path(),
        "benches/faults/register.xml",
        "alice",
        sampled.bound_addr(),
    )
    .await;
    // Exported while serving, not only at shutdown.
    let live = sink
        .wait_for(
            "alice's REGISTER trace, live",
            Duration::from_secs(20),
            |spans| {
                trace_of(spans, "REGISTER", "alice").is_some_and(|t| {
                    t.iter().any(|s| s.service == "shim-sampled")
                        && t.iter().any(|s| s.name == "member")
                })
            },
        )
        .await;
    assert!(!live.is_empty());
    sipp(
        dir.path(),
        "benches/sip/scenarios/invite302.xml",
        "alice",
        sampled.bound_addr(),
    )
    .await;

    // Stopping flushes what is still queued: after the exits, the sink has
    // every span either service will ever send.
    for s in [sampled, unsampled, locsvc] {
        let log = s.log();
        assert!(s.stop(Duration::from_secs(20)).await.success(), "{log}");
    }
    let spans = sink.spans();
    let register = trace_of(&spans, "REGISTER", "alice").expect("alice's REGISTER trace");
    check_trace(&register, "REGISTER", "Save", "200");
    let invite = trace_of(&spans, "INVITE", "alice").expect("alice's INVITE trace");
    check_trace(&invite, "INVITE", "Lookup", "302");
    assert_ne!(register[0].trace_id, invite[0].trace_id);

    assert!(
        spans.iter().all(|s| s.service != "shim-unsampled"),
        "a shim at ratio 0 exports nothing"
    );
    let bob = "\"sip:bob@example.com\"";
    assert!(
        spans.iter().all(|s| s.attr("aor") != Some(bob)),
        "locsvc follows the shim's decision not to sample bob's REGISTER: {spans:#?}"
    );
}
