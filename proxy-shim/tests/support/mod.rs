//! The harness the shim's end-to-end tests share: a real shim in-process on
//! port 0 in front of a real locsvc (`testkit::TestApp`, embedded SQLite in
//! a tempdir), sipp as a child process, and raw-datagram helpers. Each test
//! binary uses part of it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use proxy_shim::app::App as Shim;
use proxy_shim::settings::{Mode, Settings as ShimSettings};
use testkit::{Serving, TestApp, init_tracing};
use tokio::net::UdpSocket;

/// The sipp binary: `$SIPP` when set, else `sipp` found on `PATH`; None
/// when neither names a file.
pub fn sipp_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("SIPP").filter(|p| !p.is_empty()) {
        // Absolute: sipp runs in the test's directory, not ours.
        let path = std::path::absolute(path).ok()?;
        return path.is_file().then_some(path);
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join("sipp"))
        .find(|p| p.is_file())
}

/// One running in-process shim.
pub struct RunningShim {
    pub addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub metrics: std::sync::Arc<proxy_shim::metrics::Metrics>,
    serving: Serving<()>,
}

impl RunningShim {
    pub async fn start(locsvc: &[&TestApp], mode: Mode) -> Self {
        let urls = locsvc.iter().map(|l| l.url()).collect();
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
        Self {
            addr: app.local_addr(),
            metrics_addr: app.metrics_addr().expect("metrics are served"),
            metrics: app.metrics(),
            serving: Serving::spawn(|signal| app.run(signal)),
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

    /// `GET /metrics` from the shim's metrics listener.
    pub async fn scrape(&self) -> String {
        testkit::scrape(self.metrics_addr).await
    }

    pub async fn stop(&mut self) {
        self.serving.stop().await;
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
    let Some(binary) = sipp_binary() else {
        panic!(
            "sipp is required for the proxy-shim end-to-end tests: install the Debian package \
             `sip-tester` (apt-get install sip-tester), which provides `sipp` on PATH, or set \
             SIPP to its path"
        );
    };
    let mut cmd = tokio::process::Command::new(binary);
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

pub struct Env {
    pub dir: tempfile::TempDir,
    pub locsvc: TestApp,
    pub shim: RunningShim,
}

pub async fn env(mode: Mode) -> Env {
    env_with(mode, |_| {}).await
}

/// `env` with `tweak` applied to the shim's settings.
pub async fn env_with(mode: Mode, tweak: impl FnOnce(&mut ShimSettings)) -> Env {
    init_tracing();
    let dir = tempfile::tempdir().expect("tempdir");
    let locsvc = TestApp::embedded(&dir.path().join("data")).await;
    let shim = RunningShim::start_with(vec![locsvc.url()], mode, tweak).await;
    Env { dir, locsvc, shim }
}

impl Env {
    /// Runs sipp's scenario `name` against the shim, in the tempdir.
    pub async fn sipp(&self, name: &str, extra: &[&str]) -> (bool, String) {
        sipp(self.dir.path(), self.shim.addr, name, extra).await
    }

    pub async fn finish(mut self) {
        self.shim.stop().await;
        self.locsvc.stop().await;
    }
}

/// A UDP socket on 127.0.0.1 at an ephemeral port, and its address.
pub async fn udp_socket() -> (UdpSocket, SocketAddr) {
    let sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let addr = sock.local_addr().expect("addr");
    (sock, addr)
}

/// Sends `msg` from `sock` to `to` and returns the next datagram `sock`
/// receives (bounded: 10 s, enough for a first request that pays for a
/// TLS handshake to locsvc on a loaded machine).
pub async fn ask(sock: &UdpSocket, to: SocketAddr, msg: &str) -> String {
    sock.send_to(msg.as_bytes(), to).await.expect("send");
    recv_text(sock, Duration::from_secs(10)).await.0
}

/// Sends one datagram to the shim from a fresh socket (`{port}` in `msg`
/// becomes that socket's port) and waits (bounded) for one answer.
pub async fn udp_exchange(shim: SocketAddr, msg: &str) -> String {
    let (sock, me) = udp_socket().await;
    ask(&sock, shim, &msg.replace("{port}", &me.port().to_string())).await
}

pub fn request(method: &str, ruri: &str, to: &str, extra: &str) -> String {
    format!(
        "{method} {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{{port}};branch=z9hG4bK-raw-{method}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:probe@example.com>;tag=p1\r\nTo: <{to}>\r\n\
         Call-ID: raw-{method}@test\r\nCSeq: 1 {method}\r\n{extra}Content-Length: 0\r\n\r\n"
    )
}

/// Receives one datagram (bounded), as text.
pub async fn recv_text(sock: &UdpSocket, within: Duration) -> (String, SocketAddr) {
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
