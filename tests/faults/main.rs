//! Real faults: a MariaDB server is killed (SIGKILL: connections refused)
//! or hung (SIGSTOP: accepts connections, never answers) in the middle of a
//! concurrent Save/Lookup load. This binary runs apart from `it` (cargo runs
//! test binaries one after another) and its tests take a lock, so no other
//! test ever sees the faulted server. `scripts/test` builds it in release
//! (`cargo test --release -p locsvc-suite --features faults --test faults`): the tests hold
//! the services to production timers under load, which a debug build on a
//! 2-core machine meets with too little CPU to spare.

mod canary;
#[path = "../it/harness.rs"]
#[allow(dead_code)]
mod harness;
mod moves;
mod through_shim;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use harness::*;
use locsvc_proto::v1 as pb;
use tokio::sync::Mutex;

/// One fault at a time in this binary.
static FAULT: Mutex<()> = Mutex::const_new(());

fn try_testdb(args: &[&str]) -> Result<String, String> {
    let script = std::env::var("LOCSVC_TESTDB_SCRIPT").expect(
        "LOCSVC_TESTDB_SCRIPT is not set: run `scripts/test` or `eval \"$(scripts/testdb.sh up)\"`",
    );
    let out = std::process::Command::new(script)
        .args(args)
        .output()
        .expect("testdb.sh runs");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!(
            "testdb.sh {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn testdb(args: &[&str]) -> String {
    try_testdb(args).unwrap_or_else(|e| panic!("{e}"))
}

fn signal(name: &str, sig: &str) {
    let pid = testdb(&["pid", name]);
    let st = std::process::Command::new("kill")
        .args([sig, &pid])
        .status()
        .unwrap();
    assert!(st.success(), "kill {sig} {pid}");
    if sig != "-KILL" {
        // PostgreSQL serves each connection from a child of the postmaster:
        // stopping the postmaster alone hangs new connections only. A child
        // may exit between the listing and the signal: not an error.
        let _ = std::process::Command::new("kill")
            .arg(sig)
            .args(children(&pid))
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// The child processes of `pid` (none for MariaDB, which runs threads).
fn children(pid: &str) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|c| c.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .collect()
}

/// Brings the server back however the test ends.
struct Restore(&'static str);

impl Drop for Restore {
    fn drop(&mut self) {
        if let Ok(pid) = try_testdb(&["pid", self.0]) {
            let _ = std::process::Command::new("kill")
                .arg("-CONT")
                .arg(&pid)
                .args(children(&pid))
                .status();
        }
        if let Err(e) = try_testdb(&["start", self.0]) {
            eprintln!("cannot restart {}: {e}", self.0);
        }
    }
}

#[derive(Default)]
struct Load {
    ops: AtomicU64,
    failures: AtomicU64,
    stop: AtomicBool,
    acked: std::sync::Mutex<Vec<(String, String)>>,
    errors: std::sync::Mutex<Vec<String>>,
    /// Slowest answer so far, microseconds.
    slowest_us: AtomicU64,
    /// locsvc's own DEADLINE_EXCEEDED answers: in time, typed, nothing
    /// acknowledged (the through-the-shim tests hold the load to zero
    /// failures; here the contract is an answer within the deadline).
    typed_deadlines: AtomicU64,
}

/// locsvc answered, in time, that its members could not (its own
/// DEADLINE_EXCEEDED with an ErrorInfo; the client's timer has none).
fn typed_deadline(e: &tonic::Status) -> bool {
    use tonic_types::StatusExt;
    e.code() == tonic::Code::DeadlineExceeded
        && e.get_details_error_info()
            .is_some_and(|i| i.reason == locsvc_proto::reason::DEADLINE_EXCEEDED)
}

/// The deadline every load request carries (`grpc-timeout`): what a SIP
/// front gives locsvc, with room to spare under the shim's 400 ms.
const CLIENT_DEADLINE: Duration = Duration::from_millis(300);

fn with_deadline<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(CLIENT_DEADLINE);
    r
}

/// `workers` clients each saving a fresh AoR and looking it up, until told
/// to stop; every call carries `CLIENT_DEADLINE`, so a call locsvc does not
/// answer in time fails.
fn start_load(app: &TestApp, workers: usize) -> (Arc<Load>, Vec<tokio::task::JoinHandle<()>>) {
    let load = Arc::new(Load::default());
    let mut tasks = Vec::new();
    for w in 0..workers {
        let load = load.clone();
        let addr = app.addr;
        tasks.push(tokio::spawn(async move {
            let mut c = locsvc_proto::v1::location_client::LocationClient::connect(format!(
                "http://{addr}"
            ))
            .await
            .unwrap();
            let mut i = 0u64;
            let timed = |load: &Load, since: Instant| {
                let us = since.elapsed().as_micros() as u64;
                load.slowest_us.fetch_max(us, Ordering::AcqRel);
            };
            while !load.stop.load(Ordering::Acquire) && i < 100_000 {
                i += 1;
                let aor = format!("sip:w{w}u{i}@example.com");
                let contact = format!("sip:w{w}u{i}@192.0.2.1:5060");
                let t = Instant::now();
                let saved = c
                    .save(with_deadline(register(&aor, &contact, Some(3600), &aor, 1)))
                    .await;
                timed(&load, t);
                load.ops.fetch_add(1, Ordering::AcqRel);
                match saved {
                    Ok(_) => load
                        .acked
                        .lock()
                        .unwrap()
                        .push((aor.clone(), contact.clone())),
                    Err(e) if typed_deadline(&e) => {
                        load.typed_deadlines.fetch_add(1, Ordering::AcqRel);
                        continue;
                    }
                    Err(e) => {
                        load.failures.fetch_add(1, Ordering::AcqRel);
                        load.errors.lock().unwrap().push(format!("save {aor}: {e}"));
                        continue;
                    }
                }
                let t = Instant::now();
                let found = c
                    .lookup(with_deadline(pb::LookupRequest {
                        table: String::new(),
                        aor: aor.clone(),
                        ..Default::default()
                    }))
                    .await;
                timed(&load, t);
                load.ops.fetch_add(1, Ordering::AcqRel);
                match found {
                    Ok(r) if r.get_ref().bindings.iter().any(|b| b.contact == contact) => {}
                    Ok(_) => {
                        load.failures.fetch_add(1, Ordering::AcqRel);
                        load.errors
                            .lock()
                            .unwrap()
                            .push(format!("lookup {aor}: acknowledged binding missing"));
                    }
                    Err(e) if typed_deadline(&e) => {
                        load.typed_deadlines.fetch_add(1, Ordering::AcqRel);
                    }
                    Err(e) => {
                        load.failures.fetch_add(1, Ordering::AcqRel);
                        load.errors
                            .lock()
                            .unwrap()
                            .push(format!("lookup {aor}: {e}"));
                    }
                }
            }
        }));
    }
    (load, tasks)
}

async fn wait_ops(load: &Load, at_least: u64, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while load.ops.load(Ordering::Acquire) < at_least {
        assert!(Instant::now() < deadline, "load too slow: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until `locdb` row (id, no) satisfies `f`; returns how long it took.
async fn wait_locdb(
    layout: &Layout,
    id: i64,
    no: i64,
    what: &str,
    f: impl Fn(&locsvc::store::LocdbRow) -> bool,
) -> Duration {
    let master = layout.master();
    let start = Instant::now();
    loop {
        let rows = master.load_locdb().await.unwrap();
        if rows.iter().any(|r| r.id == id && r.no == no && f(r)) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn fault_settings(layout: &Layout) -> locsvc::settings::Settings {
    let mut s = layout.settings();
    s.cluster.query_timeout = Duration::from_millis(500);
    s.cluster.pool.acquire_timeout = Duration::from_millis(500);
    s.failover.probe_interval = Duration::from_millis(200);
    s.failover.hedge_delay = Duration::from_millis(50);
    s
}

async fn fault_under_load(sig: &'static str, resume: &'static [&'static str]) {
    let _one = FAULT.lock().await;
    // Failover decisions are logged; `--nocapture` shows them.
    let _ = tracing_subscriber::fmt()
        // The first test to initialise tracing sets the filter for all:
        // the shim's warnings (why it answered 503) included.
        .with_env_filter("locsvc=info,proxy_shim=warn")
        .with_test_writer()
        .try_init();
    // Group 1 = member 1 on MariaDB m1, member 2 on MariaDB m2.
    let layout = Layout::create(
        Backend::MariaDb1,
        &[Backend::MariaDb1, Backend::MariaDb2],
        1,
    )
    .await;
    let app = TestApp::spawn(fault_settings(&layout)).await;
    let (load, tasks) = start_load(&app, 8);
    wait_ops(&load, 400, "before the fault").await;

    let restore = Restore("m2");
    let before = load.ops.load(Ordering::Acquire);
    signal("m2", sig);
    let t_fault = Instant::now();
    let detect = wait_locdb(&layout, 1, 2, "member 2 switched off", |r| r.status == 0).await;
    let during = load.ops.load(Ordering::Acquire) - before;
    wait_ops(
        &load,
        load.ops.load(Ordering::Acquire) + 400,
        "after the fault",
    )
    .await;
    load.stop.store(true, Ordering::Release);
    for t in tasks {
        t.await.unwrap();
    }
    let total = load.ops.load(Ordering::Acquire);
    let failures = load.failures.load(Ordering::Acquire);
    eprintln!(
        "FAULT {sig}: ops total {total}, ops until detection {during}, failures {failures}, \
         time to detect {:.0} ms (signal to locdb status 0), slowest answer {:.0} ms \
         (client deadline {} ms), typed DEADLINE_EXCEEDED answers {}",
        detect.as_secs_f64() * 1000.0,
        load.slowest_us.load(Ordering::Acquire) as f64 / 1000.0,
        CLIENT_DEADLINE.as_millis(),
        load.typed_deadlines.load(Ordering::Acquire)
    );
    assert_eq!(
        failures,
        0,
        "errors: {:?}",
        &load.errors.lock().unwrap()[..]
    );

    let rows = layout.master().load_locdb().await.unwrap();
    let m2 = rows.iter().find(|r| r.id == 1 && r.no == 2).unwrap();
    assert_eq!(m2.status, 0);
    assert!(m2.errors > 0, "errors recorded in locdb: {}", m2.errors);

    // Every acknowledged binding can still be looked up.
    let mut acked = load.acked.lock().unwrap().clone();
    let mut c = app.client().await;
    for (aor, contact) in &acked {
        assert!(
            lookup_contacts(&mut c, aor).await.contains(contact),
            "{aor} lost"
        );
    }
    eprintln!(
        "FAULT {sig}: {} acknowledged bindings all found",
        acked.len()
    );
    // While member 2 is out, some bindings are removed: it still holds them.
    let removed: Vec<(String, String)> = acked.drain(..50).collect();
    for (aor, _) in &removed {
        c.remove(pb::RemoveRequest {
            table: String::new(),
            aor: aor.clone(),
            contact: String::new(),
            ..Default::default()
        })
        .await
        .unwrap();
    }

    // The server comes back: probes re-admit it (status 1); a resync fills it
    // from member 1 and drops what was removed; only then is it read again.
    for a in resume {
        signal("m2", a);
    }
    drop(restore);
    let back = wait_locdb(&layout, 1, 2, "member 2 re-admitted", |r| r.status == 1).await;
    let readmitted = Instant::now();
    eprintln!(
        "FAULT {sig}: re-admitted {:.0} ms after the server returned",
        back.as_secs_f64() * 1000.0
    );
    loop {
        let g = app.service.router().topology().groups[&1].clone();
        if g.members[1].config.status == locsvc::cluster::MemberStatus::On
            && app.service.router().readable_members(&g).len() == 2
        {
            break;
        }
        if readmitted.elapsed() > Duration::from_secs(30) {
            let m = &g.members[1];
            panic!(
                "member 2 not readable after resync: status {:?} failover {} missed {} now {}\n{}",
                m.config.status,
                m.config.failover,
                m.health.missed_write_at(),
                chrono::Utc::now().timestamp(),
                app.metrics
                    .render()
                    .lines()
                    .filter(|l| l.contains("failover_actions") || l.contains("missed"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "FAULT {sig}: resync of {} bindings made member 2 readable {:.0} ms after re-admission",
        acked.len(),
        readmitted.elapsed().as_secs_f64() * 1000.0
    );
    let resyncs = app
        .metrics
        .failover_actions
        .with_label_values(&["resync", "done"])
        .get();
    assert!(resyncs >= 1, "member 2 became readable through a resync");
    let now = chrono::Utc::now().timestamp();
    let m1 = open_store(&layout.members[0][0], true);
    let m2 = open_store(&layout.members[0][1], true);
    let s1 = locsvc::store::LocationStore::stats(&m1, "location", now)
        .await
        .unwrap();
    let s2 = locsvc::store::LocationStore::stats(&m2, "location", now)
        .await
        .unwrap();
    assert_eq!(s1, s2, "both members hold the same bindings");
    // Every acknowledged binding, plus at most the Saves answered
    // DEADLINE_EXCEEDED (not acknowledged; they may still have landed).
    let typed = load.typed_deadlines.load(Ordering::Acquire) as usize;
    assert!(
        (acked.len()..=acked.len() + typed).contains(&(s1.contacts as usize)),
        "{} contacts, {} acknowledged, {typed} typed deadline answers",
        s1.contacts,
        acked.len()
    );
    for (aor, contact) in &acked {
        assert!(
            lookup_contacts(&mut c, aor).await.contains(contact),
            "{aor} lost after re-admission"
        );
    }
    for (aor, _) in &removed {
        assert!(
            lookup_contacts(&mut c, aor).await.is_empty(),
            "{aor} was removed"
        );
    }
    let _ = t_fault;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_member_loses_no_acknowledged_registration_and_fails_no_request() {
    fault_under_load("-KILL", &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_member_loses_no_acknowledged_registration_and_fails_no_request() {
    fault_under_load("-STOP", &["-CONT"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_racing_promote_one_spare_exactly_once() {
    let _one = FAULT.lock().await;
    let layout = Layout::create(
        Backend::MariaDb1,
        &[Backend::MariaDb1, Backend::MariaDb2],
        1,
    )
    .await;
    // A spare on PostgreSQL, in risk group 3 (members are in 1 and 2).
    let spare_url = fresh_db(Backend::Postgres, layout.dir.path()).await;
    open_store(&spare_url, true)
        .migrate(locsvc::store::migrate::Scope::Table("location"))
        .await
        .unwrap();
    let mut row = locdb_row(1, 3, &spare_url);
    row.spare = 1;
    row.rg = 3;
    layout.master().insert_locdb(&row).await.unwrap();
    let mut settings = fault_settings(&layout);
    settings.failover.level = 2;
    // The kill shows in probes and broken connections; a stall of both
    // servers before it (seen once: writes to both members timing out
    // together at load start, this box's disk) must not get the spare
    // promoted for the wrong member first, so timeouts alone need more
    // than one stalled round of the 8 workers to count as a failure.
    settings.failover.monitor.error_threshold = 20;
    let a = TestApp::spawn(settings.clone()).await;
    let b = TestApp::spawn(settings).await;
    let (load_a, tasks_a) = start_load(&a, 4);
    let (load_b, tasks_b) = start_load(&b, 4);
    wait_ops(&load_a, 200, "before the fault").await;
    wait_ops(&load_b, 200, "before the fault").await;

    let restore = Restore("m2");
    signal("m2", "-KILL");
    let took = wait_locdb(&layout, 1, 2, "the spare took member 2's place", |r| {
        r.url == spare_url && r.status == 1 && r.spare == 0
    })
    .await;
    eprintln!(
        "FAULT spare: promoted {:.0} ms after the kill",
        took.as_secs_f64() * 1000.0
    );
    wait_ops(&load_a, load_a.ops.load(Ordering::Acquire) + 200, "after").await;
    for l in [&load_a, &load_b] {
        l.stop.store(true, Ordering::Release);
    }
    for t in tasks_a.into_iter().chain(tasks_b) {
        t.await.unwrap();
    }
    drop(restore);
    for l in [&load_a, &load_b] {
        assert_eq!(
            l.failures.load(Ordering::Acquire),
            0,
            "errors: {:?}",
            &l.errors.lock().unwrap()[..]
        );
    }
    let promoted = |app: &TestApp| {
        app.metrics
            .failover_actions
            .with_label_values(&["promote", "done"])
            .get()
    };
    assert_eq!(
        promoted(&a) + promoted(&b),
        1,
        "one promotion across both instances"
    );
    let rows = layout.master().load_locdb().await.unwrap();
    let retired: Vec<_> = rows
        .iter()
        .filter(|r| r.url == layout.members[0][1])
        .collect();
    assert_eq!(retired.len(), 1);
    assert_eq!(
        (retired[0].status, retired[0].spare),
        (0, 1),
        "the dead member is now an off spare"
    );

    // Both instances resync-or-see-resynced the spare, then read it.
    for app in [&a, &b] {
        let start = Instant::now();
        loop {
            let g = app.service.router().topology().groups[&1].clone();
            if g.members.iter().any(|m| m.config.url.expose() == spare_url)
                && app.service.router().readable_members(&g).len() == 2
            {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(30), "spare readable");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let now = chrono::Utc::now().timestamp();
    let s1 = locsvc::store::LocationStore::stats(
        &open_store(&layout.members[0][0], true),
        "location",
        now,
    )
    .await
    .unwrap();
    let s3 = locsvc::store::LocationStore::stats(&open_store(&spare_url, true), "location", now)
        .await
        .unwrap();
    assert_eq!(s1, s3, "the spare holds every binding of its partner");
    let mut c = a.client().await;
    let acked: Vec<(String, String)> = load_a
        .acked
        .lock()
        .unwrap()
        .iter()
        .chain(load_b.acked.lock().unwrap().iter())
        .cloned()
        .collect();
    for (aor, contact) in &acked {
        assert!(
            lookup_contacts(&mut c, aor).await.contains(contact),
            "{aor} lost"
        );
    }
    eprintln!(
        "FAULT spare: {} acknowledged bindings all found",
        acked.len()
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_outage_keeps_serving_and_failover_lands_when_it_returns() {
    let _one = FAULT.lock().await;
    // The master on PostgreSQL; the pair on the two MariaDB servers.
    let layout = Layout::create(
        Backend::Postgres,
        &[Backend::MariaDb1, Backend::MariaDb2],
        1,
    )
    .await;
    let app = TestApp::spawn(fault_settings(&layout)).await;
    // A second instance: Saves take the AoR lock in the master, which
    // hangs with it; they must fall back to this instance's lock, not wait.
    let other = TestApp::spawn(fault_settings(&layout)).await;
    let (load, mut tasks) = start_load(&app, 4);
    let (other_load, other_tasks) = start_load(&other, 2);
    tasks.extend(other_tasks);
    wait_ops(&load, 200, "before the faults").await;
    assert!(
        app.metrics.aor_locks.with_label_values(&["taken"]).get() > 0,
        "two instances lock in the master"
    );

    let master_back = Restore("pg");
    let member_back = Restore("m2");
    signal("pg", "-STOP");
    wait_ops(
        &load,
        load.ops.load(Ordering::Acquire) + 200,
        "with the master hung",
    )
    .await;
    signal("m2", "-KILL");
    wait_ops(
        &load,
        load.ops.load(Ordering::Acquire) + 300,
        "with the master hung and member 2 dead",
    )
    .await;
    let g = app.service.router().topology().groups[&1].clone();
    assert_eq!(
        app.service.router().readable_members(&g).len(),
        1,
        "member 2 not read meanwhile"
    );
    // What the "master unreachable" alert reads.
    testkit::eventually(
        "locsvc_master_up 0 with the master hung",
        Duration::from_secs(10),
        async || app.metrics.master_up.get() == 0,
    )
    .await;

    // The master returns: the pending failover and missed writes land.
    signal("pg", "-CONT");
    drop(master_back);
    let took = wait_locdb(
        &layout,
        1,
        2,
        "member 2 switched off once the master is back",
        |r| r.status == 0 && r.errors > 0,
    )
    .await;
    eprintln!(
        "FAULT master: failover recorded {:.0} ms after the master returned",
        took.as_secs_f64() * 1000.0
    );
    testkit::eventually(
        "locsvc_master_up 1 again",
        Duration::from_secs(10),
        async || app.metrics.master_up.get() == 1,
    )
    .await;
    load.stop.store(true, Ordering::Release);
    other_load.stop.store(true, Ordering::Release);
    for t in tasks {
        t.await.unwrap();
    }
    drop(member_back);
    eprintln!(
        "FAULT master: AoR locks taken {}, fallen back {}",
        app.metrics.aor_locks.with_label_values(&["taken"]).get(),
        app.metrics.aor_locks.with_label_values(&["fallback"]).get()
    );
    let failures =
        load.failures.load(Ordering::Acquire) + other_load.failures.load(Ordering::Acquire);
    eprintln!(
        "FAULT master: ops {}, failures {failures}",
        load.ops.load(Ordering::Acquire)
    );
    assert_eq!(
        failures,
        0,
        "errors: {:?} {:?}",
        &load.errors.lock().unwrap()[..],
        &other_load.errors.lock().unwrap()[..]
    );
    let mut acked = load.acked.lock().unwrap().clone();
    acked.extend(other_load.acked.lock().unwrap().iter().cloned());
    let mut c = app.client().await;
    for (aor, contact) in &acked {
        assert!(
            lookup_contacts(&mut c, aor).await.contains(contact),
            "{aor} lost"
        );
    }
    other.stop().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_member_hung_locsvc_still_answers_within_the_callers_deadline() {
    let _one = FAULT.lock().await;
    let layout = Layout::create(
        Backend::Postgres,
        &[Backend::MariaDb1, Backend::MariaDb2],
        1,
    )
    .await;
    let app = TestApp::spawn(fault_settings(&layout)).await;
    let mut c = app.client().await;
    let aor = "sip:deadline@example.com";
    c.save(with_deadline(register(
        aor,
        "sip:d@192.0.2.1",
        Some(600),
        "d",
        1,
    )))
    .await
    .expect("a healthy pair answers");
    let (_back1, _back2) = (Restore("m1"), Restore("m2"));
    signal("m1", "-STOP");
    signal("m2", "-STOP");
    let answer_of = |s: &tonic::Status| {
        use tonic_types::StatusExt;
        (s.code(), s.get_details_error_info().map(|i| i.reason))
    };
    let start = Instant::now();
    let e = c
        .save(with_deadline(register(
            aor,
            "sip:d@192.0.2.1",
            Some(600),
            "d",
            2,
        )))
        .await
        .unwrap_err();
    let save_took = start.elapsed();
    let start = Instant::now();
    let l = c
        .lookup(with_deadline(pb::LookupRequest {
            table: String::new(),
            aor: aor.into(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    let lookup_took = start.elapsed();
    signal("m1", "-CONT");
    signal("m2", "-CONT");
    eprintln!(
        "FAULT deadline: Save answered in {:.0} ms, Lookup in {:.0} ms (client deadline {} ms)",
        save_took.as_secs_f64() * 1000.0,
        lookup_took.as_secs_f64() * 1000.0,
        CLIENT_DEADLINE.as_millis()
    );
    // locsvc's own typed answer (the client's timer would give no ErrorInfo).
    for s in [&e, &l] {
        assert_eq!(
            answer_of(s),
            (
                tonic::Code::DeadlineExceeded,
                Some("DEADLINE_EXCEEDED".to_string())
            ),
            "{s:?}"
        );
    }
    assert!(save_took < CLIENT_DEADLINE && lookup_took < CLIENT_DEADLINE);
    app.stop().await;
}

/// A transactional write cut off by its deadline while the server is hung
/// (its `BEGIN` sent, never answered) must not leave a pooled connection
/// that the resumed server holds inside that transaction: every later
/// statement on it would run uncommitted and never become visible (seen
/// as resync deletes that did not take).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_cut_off_on_a_hung_server_leaves_no_transaction_open_behind() {
    use locsvc::domain::{Aor, KeyPolicy};
    use locsvc::store::{DbUrl, LocationStore, PoolSettings, SqlStore, StoreError, StoreOptions};

    let _one = FAULT.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let url = fresh_db(Backend::MariaDb2, dir.path()).await;
    let opts = StoreOptions {
        tables: vec!["location".into()],
        use_domain: true,
        // One connection, so the next write gets the one the cut-off
        // write used (unless it was closed); no coalescing.
        pool: PoolSettings {
            max_connections: 1,
            write_batch_rows: 0,
            read_batch_aors: 0,
            ..PoolSettings::default()
        },
        query_timeout: Duration::from_millis(300),
    };
    let store = SqlStore::open(&DbUrl::parse(&url).unwrap(), &opts).unwrap();
    store
        .migrate(locsvc::store::migrate::Scope::Table("location"))
        .await
        .unwrap();
    let now = chrono::Utc::now().timestamp();
    let aor = |u: &str| Aor::parse(&format!("sip:{u}@example.com"), KeyPolicy::default()).unwrap();
    // An upsert and a delete: two statements, so one transaction.
    let gone = vec!["r-none".to_string()];
    let alice = aor("alice");
    store
        .apply(
            "location",
            &alice,
            &[binding("r-a", "sip:a@192.0.2.1", now + 3600, now)],
            &gone,
        )
        .await
        .unwrap();

    let restore = Restore("m2");
    signal("m2", "-STOP");
    let cut = store
        .apply(
            "location",
            &alice,
            &[binding("r-a2", "sip:a2@192.0.2.1", now + 3600, now)],
            &gone,
        )
        .await;
    assert!(matches!(cut, Err(StoreError::Timeout(_))), "{cut:?}");
    signal("m2", "-CONT");
    drop(restore);

    // A one-statement write, then read from a connection of its own.
    let bob = aor("bob");
    let mut attempts = 0;
    while let Err(e) = store
        .apply(
            "location",
            &bob,
            &[binding("r-b", "sip:b@192.0.2.2", now + 3600, now)],
            &[],
        )
        .await
    {
        // The server may take a moment to serve again after SIGCONT.
        attempts += 1;
        assert!(
            attempts < 50,
            "no write succeeds after the server resumed: {e}"
        );
    }
    let other = open_store(&url, true);
    assert_eq!(
        other.load_aor("location", &bob).await.unwrap().len(),
        1,
        "bob's acknowledged write is committed, not held in a stray transaction"
    );
    store.close().await;
}
