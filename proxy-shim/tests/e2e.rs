//! End to end: a real locsvc (embedded SQLite in a tempdir) and a real shim,
//! both in-process on port 0, driven by `sipp` as a child process. Each test
//! asserts sipp's exit code (its scenarios check the SIP answers with
//! regexes) and the state in locsvc through a gRPC Lookup.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use locsvc_proto::v1::location_client::LocationClient;
use locsvc_proto::v1::{Binding, ContactSpec, LookupRequest, SaveRequest};
use proxy_shim::app::App as Shim;
use proxy_shim::settings::{Mode, Settings as ShimSettings};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const SIPP: &str = "/usr/bin/sipp";

/// One running in-process locsvc.
struct Locsvc {
    url: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Locsvc {
    async fn start(data_dir: &Path) -> Self {
        let mut settings = locsvc::settings::Settings {
            data_dir: data_dir.to_path_buf(),
            metrics_listen: None,
            ..locsvc::settings::Settings::default()
        };
        settings.grpc.listen = "127.0.0.1:0".parse().expect("addr");
        let app = locsvc::app::App::build(settings)
            .await
            .expect("locsvc builds");
        let url = format!("http://{}", app.grpc_addr());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            app.run(async move {
                let _ = stopped.await;
            })
            .await
            .expect("locsvc runs");
        });
        Self {
            url,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Stops the instance and waits until it no longer serves.
    async fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.expect("locsvc stops cleanly");
        }
    }

    async fn client(&self) -> LocationClient<tonic::transport::Channel> {
        LocationClient::connect(self.url.clone())
            .await
            .expect("connect to locsvc")
    }

    async fn lookup(&self, aor: &str) -> Vec<Binding> {
        self.client()
            .await
            .lookup(LookupRequest {
                table: String::new(),
                aor: aor.into(),
            })
            .await
            .expect("lookup")
            .into_inner()
            .bindings
    }

    async fn save(&self, aor: &str, contacts: &[(&str, f32)]) {
        self.client()
            .await
            .save(SaveRequest {
                aor: aor.into(),
                contacts: contacts
                    .iter()
                    .map(|(uri, q)| ContactSpec {
                        uri: uri.to_string(),
                        q: Some(*q),
                        ..Default::default()
                    })
                    .collect(),
                expires: Some(600),
                call_id: "seed".into(),
                cseq: 1,
                ..Default::default()
            })
            .await
            .expect("save");
    }
}

/// One running in-process shim.
struct RunningShim {
    addr: SocketAddr,
    metrics: std::sync::Arc<proxy_shim::metrics::Metrics>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl RunningShim {
    async fn start(locsvc: &[&Locsvc], mode: Mode) -> Self {
        let settings = ShimSettings {
            listen: "127.0.0.1:0".parse().expect("addr"),
            locsvc: locsvc.iter().map(|l| l.url.clone()).collect(),
            domains: vec!["example.com".into()],
            mode,
            ..ShimSettings::default()
        };
        let app = Shim::build(settings).await.expect("shim builds");
        let addr = app.local_addr();
        let metrics = app.metrics();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(app.run(async move {
            let _ = stopped.await;
        }));
        Self {
            addr,
            metrics,
            stop: Some(stop),
            task: Some(task),
        }
    }

    async fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.expect("shim stops cleanly");
        }
    }
}

fn scenario(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/scenarios")
        .join(name)
}

/// Runs sipp to completion (bounded by `-m` and a timeout) in `dir`;
/// returns (success, combined output for the assertion message).
async fn sipp(dir: &Path, target: SocketAddr, name: &str, extra: &[&str]) -> (bool, String) {
    assert!(
        Path::new(SIPP).exists(),
        "sipp is required for the proxy-shim end-to-end tests: install the Debian package \
         `sip-tester` (apt-get install sip-tester), which provides {SIPP}"
    );
    let mut cmd = tokio::process::Command::new(SIPP);
    cmd.current_dir(dir)
        .arg("-sf")
        .arg(scenario(name))
        .args(["-i", "127.0.0.1", "-nostdin", "-trace_err"])
        .args(["-timeout", "20s", "-timeout_error"])
        .args(extra)
        .args(
            std::env::var("SIPP_EXTRA")
                .map(|v| v.split_whitespace().map(str::to_string).collect::<Vec<_>>())
                .unwrap_or_default(),
        )
        .arg(target.to_string())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(30), cmd.output())
        .await
        .expect("sipp finishes within 30 s")
        .expect("sipp runs");
    let mut log = format!(
        "sipp {name} exited with {:?}\nstderr: {}\n",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Ok(keep) = std::env::var("SIPP_KEEP_LOGS") {
                let _ = std::fs::create_dir_all(&keep);
                let _ = std::fs::copy(e.path(), Path::new(&keep).join(&name));
            }
            if name.contains("errors.log") {
                log.push_str(&std::fs::read_to_string(e.path()).unwrap_or_default());
            }
        }
    }
    (out.status.success(), log)
}

/// A port that was free a moment ago (for sipp's UAS, which must listen on
/// a port known before its contact is registered).
fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Polls `f` until it holds or the deadline passes (waiting on observable
/// state, not sleeping for a guessed duration).
async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !f().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

struct Env {
    dir: tempfile::TempDir,
    locsvc: Locsvc,
    shim: RunningShim,
}

async fn env(mode: Mode) -> Env {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let locsvc = Locsvc::start(&dir.path().join("data")).await;
    let shim = RunningShim::start(&[&locsvc], mode).await;
    Env { dir, locsvc, shim }
}

impl Env {
    async fn finish(mut self) {
        self.shim.stop().await;
        self.locsvc.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_refresh_add_a_contact_unregister_one_and_query() {
    let e = env(Mode::Proxy).await;
    let (ok, log) = sipp(
        e.dir.path(),
        e.shim.addr,
        "register_lifecycle.xml",
        &["-m", "1"],
    )
    .await;
    assert!(ok, "{log}");
    let b = e.locsvc.lookup("sip:alice@example.com").await;
    let contacts: Vec<_> = b.iter().map(|b| b.contact.as_str()).collect();
    assert_eq!(contacts, ["sip:alice-b@192.0.2.20:5060"]);
    assert_eq!(b[0].q, Some(0.9));
    assert_eq!(b[0].user_agent, "sipp-proxy-shim-test");
    assert_eq!(b[0].cseq, 3);
    assert!(
        b[0].socket.starts_with("udp:127.0.0.1:"),
        "{:?}",
        b[0].socket
    );
    e.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contact_star_with_expires_zero_removes_every_binding() {
    let e = env(Mode::Proxy).await;
    let (ok, log) = sipp(e.dir.path(), e.shim.addr, "contact_star.xml", &["-m", "1"]).await;
    assert!(ok, "{log}");
    assert!(e.locsvc.lookup("sip:carol@example.com").await.is_empty());
    e.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_too_brief_expires_gets_423_with_min_expires_and_stores_nothing() {
    let e = env(Mode::Proxy).await;
    let (ok, log) = sipp(e.dir.path(), e.shim.addr, "register_423.xml", &["-m", "1"]).await;
    assert!(ok, "{log}");
    assert!(e.locsvc.lookup("sip:dave@example.com").await.is_empty());
    e.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invite_to_an_unknown_user_gets_404() {
    let e = env(Mode::Proxy).await;
    let (ok, log) = sipp(e.dir.path(), e.shim.addr, "invite_404.xml", &["-m", "1"]).await;
    assert!(ok, "{log}");
    e.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_mode_answers_302_with_every_contact_best_q_first() {
    let e = env(Mode::Redirect).await;
    e.locsvc
        .save(
            "sip:bob@example.com",
            &[
                ("sip:bob@192.0.2.1:5060", 0.2),
                ("sip:bob@192.0.2.2:5060", 0.8),
            ],
        )
        .await;
    let (ok, log) = sipp(e.dir.path(), e.shim.addr, "invite_302.xml", &["-m", "1"]).await;
    assert!(ok, "{log}");
    e.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invite_is_proxied_to_a_registered_uas_answered_acked_and_byed() {
    let e = env(Mode::Proxy).await;
    // The UAS's contact is registered from the UAS's own port, so the shim
    // sees no NAT and routes to the contact itself.
    let uas_port = free_udp_port().to_string();
    let (ok, log) = sipp(
        e.dir.path(),
        e.shim.addr,
        "register_once.xml",
        &[
            "-m", "1", "-p", &uas_port, "-key", "user", "svc", "-key", "cport", &uas_port,
        ],
    )
    .await;
    assert!(ok, "REGISTER of the UAS: {log}");
    let uas_dir = e.dir.path().join("uas");
    std::fs::create_dir_all(&uas_dir).expect("uas dir");
    let (shim, port) = (e.shim.addr, uas_port.clone());
    // Started before the UAC; if it binds late, the INVITE retransmission reaches it.
    let uas =
        tokio::spawn(
            async move { sipp(&uas_dir, shim, "uas.xml", &["-m", "1", "-p", &port]).await },
        );
    let (ok, log) = sipp(e.dir.path(), e.shim.addr, "uac.xml", &["-m", "1"]).await;
    assert!(ok, "UAC: {log}");
    let (ok, log) = uas.await.expect("uas task");
    assert!(ok, "UAS: {log}");
    e.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_register_over_tcp_is_saved_with_a_tcp_socket() {
    let e = env(Mode::Proxy).await;
    let (ok, log) = sipp(
        e.dir.path(),
        e.shim.addr,
        "register_once.xml",
        &[
            "-m", "1", "-t", "t1", "-key", "user", "tina", "-key", "cport", "5070",
        ],
    )
    .await;
    assert!(ok, "{log}");
    let b = e.locsvc.lookup("sip:tina@example.com").await;
    assert_eq!(b.len(), 1, "{b:?}");
    assert!(
        b[0].socket.starts_with("tcp:127.0.0.1:"),
        "{:?}",
        b[0].socket
    );
    // The contact says port 5070, the connection came from elsewhere: NAT.
    assert!(
        b[0].received.starts_with("sip:127.0.0.1:") && b[0].received.ends_with(";transport=tcp"),
        "{:?}",
        b[0].received
    );
    e.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_malformed_datagrams_is_dropped_and_a_valid_register_still_works() {
    let e = env(Mode::Proxy).await;
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let junk: Vec<Vec<u8>> = vec![
        b"\x00\x01\x02garbage".to_vec(),
        b"REGISTER sip:example.com SIP/2.0\r\nVia: broken".to_vec(),
        b"INVITE  SIP/2.0\r\n\r\n".to_vec(),
        vec![b'A'; 70_000 - 28],
        b"SIP/2.0 abc OK\r\n\r\n".to_vec(),
    ];
    let bursts = 20;
    for _ in 0..bursts {
        for j in &junk {
            // An oversized datagram may be refused by the kernel; that is fine.
            let _ = sock.send_to(j, e.shim.addr).await;
        }
    }
    let m = e.shim.metrics.clone();
    eventually("the shim to count the dropped datagrams", || {
        let m = m.clone();
        async move { m.dropped_count("unparsable") + m.dropped_count("too_large") >= 4 * bursts }
    })
    .await;
    let (ok, log) = sipp(
        e.dir.path(),
        e.shim.addr,
        "register_once.xml",
        &["-m", "1", "-key", "user", "erin", "-key", "cport", "5070"],
    )
    .await;
    assert!(ok, "{log}");
    assert_eq!(e.locsvc.lookup("sip:erin@example.com").await.len(), 1);
    e.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shim_keeps_answering_through_the_first_locsvc_when_the_second_is_stopped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let mut first = Locsvc::start(&data).await;
    // The second instance shares the same databases (as two locsvc nodes would).
    let mut second = Locsvc::start(&data).await;
    // The second is tried first, so stopping it exercises failover.
    let mut shim = RunningShim::start(&[&second, &first], Mode::Proxy).await;
    let (ok, log) = sipp(
        dir.path(),
        shim.addr,
        "register_once.xml",
        &["-m", "1", "-key", "user", "frank", "-key", "cport", "5070"],
    )
    .await;
    assert!(ok, "before the stop: {log}");
    second.stop().await;
    let (ok, log) = sipp(
        dir.path(),
        shim.addr,
        "register_once.xml",
        &["-m", "1", "-key", "user", "gina", "-key", "cport", "5070"],
    )
    .await;
    assert!(ok, "after the stop: {log}");
    assert_eq!(first.lookup("sip:frank@example.com").await.len(), 1);
    assert_eq!(first.lookup("sip:gina@example.com").await.len(), 1);
    shim.stop().await;
    first.stop().await;
}

/// Sends one datagram to the shim and waits (bounded) for one answer.
async fn udp_exchange(shim: SocketAddr, msg: &str) -> String {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let msg = msg.replace(
        "{port}",
        &sock.local_addr().expect("addr").port().to_string(),
    );
    sock.send_to(msg.as_bytes(), shim).await.expect("send");
    let mut buf = vec![0u8; 65536];
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut buf))
        .await
        .expect("an answer within 5 s")
        .expect("recv");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

fn request(method: &str, ruri: &str, to: &str, extra: &str) -> String {
    format!(
        "{method} {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{{port}};branch=z9hG4bK-raw-{method}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:probe@example.com>;tag=p1\r\nTo: <{to}>\r\n\
         Call-ID: raw-{method}@test\r\nCSeq: 1 {method}\r\n{extra}Content-Length: 0\r\n\r\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn options_to_the_shim_itself_gets_200_and_a_foreign_domain_gets_403() {
    let e = env(Mode::Proxy).await;
    let ruri = format!("sip:{}", e.shim.addr);
    let ok = udp_exchange(e.shim.addr, &request("OPTIONS", &ruri, &ruri, "")).await;
    assert!(ok.starts_with("SIP/2.0 200 OK\r\n"), "{ok}");
    assert!(ok.contains("\r\nAllow: "), "{ok}");
    assert!(ok.contains(";branch=z9hG4bK-raw-OPTIONS"), "{ok}");
    let foreign = request(
        "REGISTER",
        "sip:other.org",
        "sip:zoe@other.org",
        "Contact: <sip:zoe@127.0.0.1:5999>\r\n",
    );
    let no = udp_exchange(e.shim.addr, &foreign).await;
    assert!(no.starts_with("SIP/2.0 403 "), "{no}");
    assert!(no.contains("To: <sip:zoe@other.org>;tag=ps-"), "{no}");
    e.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_register_while_locsvc_is_unreachable_gets_503_with_retry_after() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut locsvc = Locsvc::start(&dir.path().join("data")).await;
    let mut shim = RunningShim::start(&[&locsvc], Mode::Proxy).await;
    locsvc.stop().await;
    let reg = request(
        "REGISTER",
        "sip:example.com",
        "sip:ursula@example.com",
        "Contact: <sip:ursula@127.0.0.1:5999>\r\nExpires: 600\r\n",
    );
    let started = std::time::Instant::now();
    let answer = udp_exchange(shim.addr, &reg).await;
    assert!(answer.starts_with("SIP/2.0 503 "), "{answer}");
    assert!(answer.contains("\r\nRetry-After: "), "{answer}");
    // Answered before the UAC's first retransmission (T1 = 500 ms) would be
    // much later: the locsvc budget is 400 ms.
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    shim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crlf_keepalive_on_tcp_is_answered_with_a_crlf() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let e = env(Mode::Proxy).await;
    let mut conn = tokio::net::TcpStream::connect(e.shim.addr)
        .await
        .expect("connect");
    conn.write_all(b"\r\n\r\n").await.expect("ping");
    let mut pong = [0u8; 2];
    tokio::time::timeout(Duration::from_secs(5), conn.read_exact(&mut pong))
        .await
        .expect("a pong within 5 s")
        .expect("read");
    assert_eq!(&pong, b"\r\n");
    e.finish().await;
}
