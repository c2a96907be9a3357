//! Faults as a phone sees them: sipp re-REGISTERs users and looks them up
//! (INVITE → 302) through a real proxy-shim (UDP, its default 400 ms budget
//! for locsvc, sipp retransmitting after T1 = 500 ms) while one MariaDB
//! server, member 1 of every group, is killed or hung. Every REGISTER and
//! every lookup must succeed, and every binding must survive.
//!
//! Rates and length come from the environment so the same test measures the
//! release build at higher load (BENCHMARKS.md): `FAULT_REG_RATE`,
//! `FAULT_INV_RATE` (calls/s, default 300 each), `FAULT_SECS` (default 12),
//! `FAULT_USERS` (default 1000).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proxy_shim::settings::{Mode, Settings as ShimSettings};
use testkit::free_udp_port;

use super::*;

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn scenario(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// What one sipp run reported.
#[derive(Debug)]
struct SippRun {
    ok: u64,
    failed: u64,
    /// (wall-clock ms since the epoch, response time ms) per call.
    rtt: Vec<(f64, f64)>,
    log: String,
}

/// Runs sipp with `args` in `dir` until it ends (bounded), and reads its
/// final counters and response times.
async fn sipp(dir: PathBuf, args: Vec<String>) -> SippRun {
    let dir = dir.as_path();
    std::fs::create_dir_all(dir).unwrap();
    // sipp dates its response times in ms since it started (within a few
    // ms of this).
    let started = now_ms();
    let out = tokio::process::Command::new("sipp")
        .current_dir(dir)
        .args(&args)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(300), out)
        .await
        .expect("sipp ends")
        .expect("sipp runs (Debian package sip-tester)");
    let stats = std::fs::read_to_string(dir.join("stats.csv")).unwrap_or_default();
    let rows: Vec<Vec<&str>> = stats
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.split(';').collect())
        .collect();
    let col = |name: &str| -> u64 {
        let (Some(head), Some(last)) = (rows.first(), rows.last()) else {
            return 0;
        };
        head.iter()
            .position(|h| *h == name)
            .and_then(|i| last.get(i))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    let mut rtt = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.file_name().to_string_lossy().ends_with("_rtt.csv") {
            for l in std::fs::read_to_string(e.path()).unwrap().lines().skip(1) {
                let f: Vec<&str> = l.split(';').collect();
                if let (Some(Ok(at)), Some(Ok(ms))) = (
                    f.first().map(|v| v.trim().parse::<f64>()),
                    f.get(1).map(|v| v.trim().parse::<f64>()),
                ) {
                    rtt.push((started + at, ms));
                }
            }
        }
    }
    let mut log = format!(
        "sipp {args:?}: {:?}\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.file_name().to_string_lossy().ends_with("_errors.log") {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            log.push_str(&text.chars().take(4000).collect::<String>());
        }
    }
    SippRun {
        ok: col("SuccessfulCall(C)"),
        failed: col("FailedCall(C)"),
        rtt,
        log,
    }
}

fn sipp_args(
    scenario_file: &str,
    users: &Path,
    port: u16,
    rate: u64,
    calls: u64,
    target: std::net::SocketAddr,
) -> Vec<String> {
    [
        "-sf",
        &scenario(scenario_file).display().to_string(),
        "-inf",
        &users.display().to_string(),
        "-key",
        "prefix",
        "",
        "-i",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-nostdin",
        "-r",
        &rate.to_string(),
        "-m",
        &calls.to_string(),
        // A phone gives up on a transaction after a few retransmissions.
        "-recv_timeout",
        "4000",
        "-timeout",
        &format!("{}s", calls / rate.max(1) + 60),
        "-timeout_error",
        "-trace_err",
        "-trace_stat",
        "-stf",
        "stats.csv",
        "-fd",
        "1",
        "-trace_rtt",
        "-rtt_freq",
        "1",
        &target.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// p50, p99 and max of response times (ms) within [from, to) wall-clock ms.
fn percentiles(rtt: &[(f64, f64)], from: f64, to: f64) -> (usize, f64, f64, f64) {
    let mut v: Vec<f64> = rtt
        .iter()
        .filter(|(at, _)| *at >= from && *at < to)
        .map(|(_, ms)| *ms)
        .collect();
    v.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        v.get(((v.len() as f64 * p) as usize).min(v.len().saturating_sub(1)))
            .copied()
            .unwrap_or(f64::NAN)
    };
    (
        v.len(),
        pct(0.5),
        pct(0.99),
        v.last().copied().unwrap_or(f64::NAN),
    )
}

pub(crate) fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        * 1000.0
}

async fn through_shim(sig: &'static str, resume: &'static [&'static str]) {
    let _one = FAULT.lock().await;
    let _ = tracing_subscriber::fmt()
        .with_env_filter("locsvc=info,proxy_shim=warn")
        .with_test_writer()
        .try_init();
    let reg_rate = env_num("FAULT_REG_RATE", 300);
    let inv_rate = env_num("FAULT_INV_RATE", 300);
    let secs = env_num("FAULT_SECS", 12);
    let users = env_num("FAULT_USERS", 1000) as usize;
    // Member 1 of both groups on m1, member 2 on m2; the master on PostgreSQL.
    let layout = Layout::create(
        Backend::Postgres,
        &[Backend::MariaDb1, Backend::MariaDb2],
        2,
    )
    .await;
    // The production defaults of every timer that matters here (query
    // deadline 500 ms, probes every second, hedge 50 ms, grace 20 ms).
    let mut settings = layout.settings();
    settings.cluster.query_timeout = locsvc::settings::Settings::default().cluster.query_timeout;
    let app = TestApp::spawn(settings).await;
    let shim = proxy_shim::app::App::build(ShimSettings {
        listen: "127.0.0.1:0".parse().unwrap(),
        locsvc: vec![format!("http://{}", app.addr)],
        domains: vec!["example.com".into()],
        mode: Mode::Redirect,
        metrics_listen: None,
        // Each sipp stands for thousands of phones on one address, and the
        // fault is what is measured here, not authentication.
        rate_limit: 0,
        auth: proxy_shim::settings::AuthMode::Off,
        ..ShimSettings::default()
    })
    .await
    .expect("shim builds");
    let shim_addr = shim.local_addr();
    let (stop_shim, shim_stopped) = tokio::sync::oneshot::channel::<()>();
    let shim_task = tokio::spawn(shim.run(async move {
        let _ = shim_stopped.await;
    }));

    // Every user registered once from the port the re-REGISTERs come from.
    let work = layout
        .dir
        .path()
        .join(format!("sipp{}", sig.trim_start_matches('-')));
    std::fs::create_dir_all(&work).unwrap();
    let csv = work.join("users.csv");
    let names: Vec<String> = (0..users).map(|i| format!("f{i:05}")).collect();
    std::fs::write(&csv, format!("SEQUENTIAL\n{}\n", names.join("\n"))).unwrap();
    let reg_port = free_udp_port();
    let contact = |u: &str| format!("sip:{u}@127.0.0.1:{reg_port}");
    let mut c = app.client().await;
    for chunk in names.chunks(50) {
        let saves = chunk.iter().map(|u| {
            let mut c = c.clone();
            let aor = format!("sip:{u}@example.com");
            let contact = contact(u);
            async move {
                // The servers may still be coming back from the previous
                // fault test: retry a refused pre-registration (bounded).
                let mut tries = 0;
                loop {
                    match c.save(register(&aor, &contact, Some(3600), "pre", 1)).await {
                        Err(e) if e.code() == tonic::Code::Unavailable && tries < 50 => {
                            tries += 1;
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        r => break r,
                    }
                }
            }
        });
        for r in futures::future::join_all(saves).await {
            r.expect("pre-registration");
        }
    }

    let reg = sipp(
        work.join("register"),
        sipp_args(
            "benches/faults/register.xml",
            &csv,
            reg_port,
            reg_rate,
            reg_rate * secs,
            shim_addr,
        ),
    );
    let inv = sipp(
        work.join("invite"),
        sipp_args(
            "benches/sip/scenarios/invite302.xml",
            &csv,
            free_udp_port(),
            inv_rate,
            inv_rate * secs,
            shim_addr,
        ),
    );
    let canaries = super::canary::Canaries::start(Backend::MariaDb2, layout.dir.path()).await;
    let restore = Restore("m1");
    let metrics = app.metrics.clone();
    let fault = async move {
        // A third of the way in, measured by what locsvc has served.
        let served = || {
            metrics
                .rpc_requests
                .with_label_values(&["Save", "Ok"])
                .get()
        };
        let before = served();
        let target = before + reg_rate * secs / 3;
        let waited = Instant::now();
        while served() < target {
            assert!(waited.elapsed() < Duration::from_secs(120), "load too slow");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let at = now_ms();
        signal("m1", sig);
        at
    };
    let (reg, inv, fault_at) = tokio::join!(reg, inv, fault);
    for a in resume {
        signal("m1", a);
    }
    let canaries = canaries.finish().await;

    let rows = layout.master().load_locdb().await.unwrap();
    let switched_off = rows.iter().filter(|r| r.no == 1 && r.status == 0).count();
    let window = (fault_at, fault_at + 5000.0);
    // When the slow calls came (the slowest per 250 ms, and how many), so a
    // failure shows whether it was the fault or a stall elsewhere in the run.
    for (what, run) in [("REGISTER", &reg), ("INVITE", &inv)] {
        let t0 = run.rtt.iter().map(|r| r.0).fold(f64::MAX, f64::min);
        let mut buckets = std::collections::BTreeMap::<i64, (usize, f64)>::new();
        for (at, ms) in &run.rtt {
            let b = buckets.entry(((at - t0) / 250.0) as i64).or_default();
            b.0 += 1;
            b.1 = b.1.max(*ms);
        }
        let line: Vec<String> = buckets
            .iter()
            .map(|(k, (n, m))| format!("{}:{n}/{m:.0}", k * 250))
            .collect();
        eprintln!(
            "DIAG {what} fault at +{:.0} ms: {}",
            fault_at - t0,
            line.join(" ")
        );
    }
    for (what, run) in [("REGISTER", &reg), ("INVITE", &inv)] {
        let all = percentiles(&run.rtt, 0.0, f64::MAX);
        let during = percentiles(&run.rtt, window.0, window.1);
        eprintln!(
            "FAULT-SHIM {sig} {what}: ok {} failed {} | all: n {} p50 {:.0} p99 {:.0} max {:.0} ms \
             | fault window (5 s): n {} p50 {:.0} p99 {:.0} max {:.0} ms",
            run.ok, run.failed, all.0, all.1, all.2, all.3, during.0, during.1, during.2, during.3
        );
    }
    eprintln!("FAULT-SHIM {sig}: member 1 switched off in {switched_off} of 2 groups");
    let second_fault = format!(
        "fault window: {}\nwhole run: {}",
        canaries.summary(window.0, window.1, fault_at),
        canaries.summary(0.0, f64::MAX, fault_at)
    );
    eprintln!("FAULT-SHIM {sig}: {second_fault}");
    // What locsvc saw, for a failure's diagnosis: which members failed
    // statements (a stall of a surviving member is a second fault), what
    // the RPCs answered, how often reads were hedged.
    let seen = format!("{second_fault}\n")
        + &app
            .metrics
            .render()
            .lines()
            .filter(|l| {
                !l.starts_with('#')
                    && [
                        "member_errors",
                        "rpc_requests",
                        "hedged",
                        "circuit",
                        "missed",
                        "rpc_seconds_bucket",
                    ]
                    .iter()
                    .any(|k| l.contains(k))
            })
            .collect::<Vec<_>>()
            .join("\n");
    assert_eq!(reg.failed, 0, "failed REGISTERs\n{seen}\n{}", reg.log);
    assert_eq!(inv.failed, 0, "failed lookups\n{seen}\n{}", inv.log);
    assert_eq!(
        reg.ok,
        reg_rate * secs,
        "every REGISTER answered\n{}",
        reg.log
    );
    assert_eq!(
        inv.ok,
        inv_rate * secs,
        "every INVITE answered\n{}",
        inv.log
    );
    assert!(
        percentiles(&reg.rtt, window.0, window.1).0 > 0,
        "the fault happened while REGISTERs were running"
    );

    // Nothing acknowledged was lost: every user still has its binding.
    let mut lost = Vec::new();
    for u in &names {
        let found = lookup_contacts(&mut c, &format!("sip:{u}@example.com")).await;
        if !found.contains(&contact(u)) {
            lost.push(u.clone());
        }
    }
    assert!(lost.is_empty(), "bindings lost: {lost:?}");
    drop(restore);
    let _ = stop_shim.send(());
    shim_task.await.unwrap();
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_the_shim_a_killed_member_fails_no_register_and_no_lookup() {
    through_shim("-KILL", &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_the_shim_a_hung_member_fails_no_register_and_no_lookup() {
    through_shim("-STOP", &["-CONT"]).await;
}
