//! The harness the shim's end-to-end tests share: a real locsvc (embedded
//! SQLite in a tempdir) and a real shim, both in-process on port 0, sipp as
//! a child process, and raw-datagram helpers. Each test binary uses part of it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use locsvc_proto::v1::location_client::LocationClient;
use locsvc_proto::v1::{Binding, ContactSpec, LookupRequest, SaveRequest};
use proxy_shim::app::App as Shim;
use proxy_shim::settings::{Mode, Settings as ShimSettings};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const SIPP: &str = "/usr/bin/sipp";

/// One running in-process locsvc.
pub struct Locsvc {
    pub url: String,
    pub stop: Option<oneshot::Sender<()>>,
    pub task: Option<JoinHandle<()>>,
}

impl Locsvc {
    pub async fn start(data_dir: &Path) -> Self {
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
        let me = Self {
            url,
            stop: Some(stop),
            task: Some(task),
        };
        me.warm_up().await;
        me
    }

    /// Writes (then removes) a binding in every group, so every member's
    /// pool and queues exist before a test's first REGISTER: the shim gives
    /// locsvc 400 ms, and a cold start on a loaded machine can take longer
    /// (it is not what the tests measure).
    async fn warm_up(&self) {
        let mut c = self.client().await;
        let mut groups = std::collections::BTreeSet::new();
        for i in 0..64 {
            let aor = format!("sip:warmup-{i}@example.com");
            let saved = c
                .save(SaveRequest {
                    aor: aor.clone(),
                    contacts: vec![ContactSpec {
                        uri: format!("sip:warmup-{i}@192.0.2.250"),
                        ..Default::default()
                    }],
                    expires: Some(60),
                    call_id: "warm-up".into(),
                    cseq: 1,
                    ..Default::default()
                })
                .await
                .expect("warm-up save")
                .into_inner();
            c.remove(locsvc_proto::v1::RemoveRequest {
                table: String::new(),
                aor,
                contact: String::new(),
            })
            .await
            .expect("warm-up remove");
            groups.insert(saved.group);
            if groups.len() >= 2 {
                break;
            }
        }
    }

    /// Stops the instance and waits until it no longer serves.
    pub async fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.expect("locsvc stops cleanly");
        }
    }

    pub async fn client(&self) -> LocationClient<tonic::transport::Channel> {
        LocationClient::connect(self.url.clone())
            .await
            .expect("connect to locsvc")
    }

    pub async fn lookup(&self, aor: &str) -> Vec<Binding> {
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

    /// Adds a subscriber through the admin API (the test locsvc has no
    /// tokens).
    pub async fn add_subscriber(&self, username: &str, domain: &str, password: &str) {
        locsvc_proto::v1::subscribers_client::SubscribersClient::connect(self.url.clone())
            .await
            .expect("connect to locsvc")
            .add(locsvc_proto::v1::AddSubscriberRequest {
                username: username.into(),
                domain: domain.into(),
                password: password.into(),
            })
            .await
            .expect("add subscriber");
    }

    /// Changes a subscriber's password through the admin API.
    pub async fn set_password(&self, username: &str, domain: &str, password: &str) {
        locsvc_proto::v1::subscribers_client::SubscribersClient::connect(self.url.clone())
            .await
            .expect("connect to locsvc")
            .set_password(locsvc_proto::v1::SetPasswordRequest {
                username: username.into(),
                domain: domain.into(),
                password: password.into(),
            })
            .await
            .expect("set password");
    }

    pub async fn save(&self, aor: &str, contacts: &[(&str, f32)]) {
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
pub struct RunningShim {
    pub addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub metrics: std::sync::Arc<proxy_shim::metrics::Metrics>,
    pub stop: Option<oneshot::Sender<()>>,
    pub task: Option<JoinHandle<()>>,
}

impl RunningShim {
    pub async fn start(locsvc: &[&Locsvc], mode: Mode) -> Self {
        let urls = locsvc.iter().map(|l| l.url.clone()).collect();
        Self::start_with(urls, mode, |_| {}).await
    }

    /// A shim on port 0 (SIP and metrics) with `tweak` applied to its settings.
    pub async fn start_with(
        locsvc: Vec<String>,
        mode: Mode,
        tweak: impl FnOnce(&mut ShimSettings),
    ) -> Self {
        let mut settings = ShimSettings {
            listen: "127.0.0.1:0".parse().expect("addr"),
            locsvc,
            domains: vec!["example.com".into()],
            mode,
            metrics_listen: Some("127.0.0.1:0".parse().expect("addr")),
            // Tests of routing and limits; tests/auth.rs turns it on.
            auth: proxy_shim::settings::AuthMode::Off,
            ..ShimSettings::default()
        };
        tweak(&mut settings);
        let app = Shim::build(settings).await.expect("shim builds");
        let addr = app.local_addr();
        let metrics_addr = app.metrics_addr().expect("metrics are served");
        let metrics = app.metrics();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(app.run(async move {
            let _ = stopped.await;
        }));
        Self {
            addr,
            metrics_addr,
            metrics,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// The value of one series in the Prometheus text (0 when absent).
    pub fn metric(&self, series: &str) -> u64 {
        self.metrics
            .render()
            .lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0)
    }

    /// `GET /metrics` over plain HTTP/1.1.
    pub async fn scrape(&self) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut conn = tokio::net::TcpStream::connect(self.metrics_addr)
            .await
            .expect("connect to the metrics listener");
        conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: shim\r\nConnection: close\r\n\r\n")
            .await
            .expect("send the scrape");
        let mut text = String::new();
        tokio::time::timeout(Duration::from_secs(5), conn.read_to_string(&mut text))
            .await
            .expect("a scrape answer within 5 s")
            .expect("read the scrape");
        assert!(text.starts_with("HTTP/1.1 200 "), "{text}");
        text
    }

    pub async fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.expect("shim stops cleanly");
        }
    }
}

pub fn scenario(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/scenarios")
        .join(name)
}

/// Runs sipp to completion (bounded by `-m` and a timeout) in `dir`;
/// returns (success, combined output for the assertion message).
pub async fn sipp(dir: &Path, target: SocketAddr, name: &str, extra: &[&str]) -> (bool, String) {
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
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Polls `f` until it holds or the deadline passes (waiting on observable
/// state, not sleeping for a guessed duration).
pub async fn eventually<F, Fut>(what: &str, mut f: F)
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

pub struct Env {
    pub dir: tempfile::TempDir,
    pub locsvc: Locsvc,
    pub shim: RunningShim,
}

pub async fn env(mode: Mode) -> Env {
    env_with(mode, |_| {}).await
}

/// `env` with `tweak` applied to the shim's settings.
pub async fn env_with(mode: Mode, tweak: impl FnOnce(&mut ShimSettings)) -> Env {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let locsvc = Locsvc::start(&dir.path().join("data")).await;
    let shim = RunningShim::start_with(vec![locsvc.url.clone()], mode, tweak).await;
    Env { dir, locsvc, shim }
}

impl Env {
    pub async fn finish(mut self) {
        self.shim.stop().await;
        self.locsvc.stop().await;
    }
}

/// Sends one datagram to the shim and waits (bounded) for one answer.
pub async fn udp_exchange(shim: SocketAddr, msg: &str) -> String {
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

pub fn request(method: &str, ruri: &str, to: &str, extra: &str) -> String {
    format!(
        "{method} {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{{port}};branch=z9hG4bK-raw-{method}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:probe@example.com>;tag=p1\r\nTo: <{to}>\r\n\
         Call-ID: raw-{method}@test\r\nCSeq: 1 {method}\r\n{extra}Content-Length: 0\r\n\r\n"
    )
}

/// Receives one datagram (bounded), as text.
pub async fn recv_text(sock: &tokio::net::UdpSocket, within: Duration) -> (String, SocketAddr) {
    let mut buf = vec![0u8; 65536];
    let (n, from) = tokio::time::timeout(within, sock.recv_from(&mut buf))
        .await
        .expect("a datagram in time")
        .expect("recv");
    (String::from_utf8_lossy(&buf[..n]).into_owned(), from)
}

/// Every value of header `name` in a raw message, in order.
pub fn header_values<'a>(msg: &'a str, name: &str) -> Vec<&'a str> {
    msg.split("\r\n")
        .skip(1)
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
        .collect()
}

pub fn branch_of(via: &str) -> &str {
    via.split(';')
        .find_map(|p| p.trim().strip_prefix("branch="))
        .unwrap_or("")
}

/// A REGISTER from `sock` with the given Call-ID and CSeq.
pub fn register_msg(sock: SocketAddr, user: &str, call_id: &str, cseq: u32) -> String {
    // A branch is a token: no `@` from the Call-ID.
    let branch = call_id.replace('@', ".");
    format!(
        "REGISTER sip:example.com SIP/2.0\r\n\
         Via: SIP/2.0/UDP {sock};branch=z9hG4bK-reg-{branch}-{cseq}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:{user}@example.com>;tag=r1\r\n\
         To: <sip:{user}@example.com>\r\nCall-ID: {call_id}\r\nCSeq: {cseq} REGISTER\r\n\
         Contact: <sip:{user}@{sock}>\r\nExpires: 600\r\nContent-Length: 0\r\n\r\n"
    )
}
