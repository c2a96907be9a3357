//! Flood limits with real sockets: an in-process shim on port 0 (and, where
//! an answer needs one, a real locsvc on embedded SQLite in a tempdir).
//! Sources are told apart by binding clients to 127.0.0.1 and 127.0.0.2,
//! both loopback on Linux. Every wait is on an observable event (a counter,
//! an answer, a closed socket), bounded in time.

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proxy_shim::settings::{Mode, Settings as ShimSettings};
use support::RunningShim;
use testkit::{TestApp, eventually, init_tracing};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream, UdpSocket};

const FLOODER: [u8; 4] = [127, 0, 0, 1];
const OTHER: [u8; 4] = [127, 0, 0, 2];

/// A proxy-mode shim for `locsvc`, with `tweak` applied.
async fn start_shim(locsvc: String, tweak: impl FnOnce(&mut ShimSettings)) -> RunningShim {
    RunningShim::start_with(vec![locsvc], Mode::Proxy, tweak).await
}

/// How long a wait on a counter may take.
const WAIT: Duration = Duration::from_secs(10);

/// A REGISTER from `me` over `transport` (`UDP` or `TCP`).
fn register(me: SocketAddr, transport: &str, user: &str, call_id: &str) -> String {
    let param = if transport == "TCP" {
        ";transport=tcp"
    } else {
        ""
    };
    let branch: String = call_id
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    format!(
        "REGISTER sip:example.com SIP/2.0\r\n\
         Via: SIP/2.0/{transport} {me};branch=z9hG4bK-lim-{branch}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:{user}@example.com>;tag=l1\r\n\
         To: <sip:{user}@example.com>\r\nCall-ID: {call_id}\r\nCSeq: 1 REGISTER\r\n\
         Contact: <sip:{user}@{me}{param}>\r\nExpires: 600\r\nContent-Length: 0\r\n\r\n"
    )
}

async fn udp_from(ip: [u8; 4]) -> UdpSocket {
    UdpSocket::bind(SocketAddr::from((ip, 0)))
        .await
        .expect("bind a UDP client")
}

async fn tcp_from(ip: [u8; 4], to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    s.bind(SocketAddr::from((ip, 0)))?;
    s.connect(to).await
}

/// Reads one SIP response (header section; REGISTER answers carry no body
/// we need) from a stream, bounded in time.
async fn read_response(conn: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(Duration::from_secs(5), async {
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = conn.read(&mut buf).await.expect("read");
            assert!(
                n > 0,
                "closed before an answer: {:?}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("an answer within 5 s");
    String::from_utf8_lossy(&got).into_owned()
}

/// A TCP REGISTER from `ip`, answered on its connection.
async fn tcp_register(ip: [u8; 4], shim: SocketAddr, user: &str) -> String {
    let mut conn = tcp_from(ip, shim).await.expect("connect");
    let me = conn.local_addr().expect("addr");
    conn.write_all(register(me, "TCP", user, &format!("{user}@tcp")).as_bytes())
        .await
        .expect("send");
    read_response(&mut conn).await
}

/// Whether the peer closed `conn` (EOF or reset) within 5 s.
async fn closed_by_peer(conn: &mut TcpStream) -> bool {
    let mut b = [0u8; 64];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), conn.read(&mut b)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_udp_flood_from_one_source_is_limited_then_banned_while_another_source_is_still_served() {
    init_tracing();
    let dir = tempfile::tempdir().expect("tempdir");
    let locsvc = TestApp::embedded(&dir.path().join("data")).await;
    let mut shim = start_shim(locsvc.url(), |s| {
        s.rate_limit = 5;
        s.rate_burst = 10;
        s.ban = Duration::from_secs(60);
    })
    .await;
    let flooder = udp_from(FLOODER).await;
    let me = flooder.local_addr().expect("addr");
    for i in 0..200 {
        let msg = register(me, "UDP", "flood", &format!("flood-{i}@test"));
        flooder
            .send_to(msg.as_bytes(), shim.addr)
            .await
            .expect("send");
    }
    eventually(
        "the flooder to be limited once and then banned",
        WAIT,
        async || {
            shim.metric(r#"proxy_shim_dropped_total{reason="rate_limited"}"#) == 1
                && shim.metric(r#"proxy_shim_dropped_total{reason="banned"}"#) >= 1
        },
    )
    .await;
    assert_eq!(shim.metric("proxy_shim_bans_total"), 1);
    assert_eq!(shim.metric("proxy_shim_rate_limit_sources"), 1);
    eventually("the allowed REGISTERs to be answered", WAIT, async || {
        shim.metrics.in_flight() == 0
    })
    .await;
    // Every answer the shim sent has been delivered (loopback send is
    // synchronous and the in-flight guard drops after the send).
    let mut answers = 0;
    let mut buf = vec![0u8; 65536];
    while let Ok((n, _)) = flooder.try_recv_from(&mut buf) {
        assert!(
            buf[..n].starts_with(b"SIP/2.0 200 "),
            "{}",
            String::from_utf8_lossy(&buf[..n])
        );
        answers += 1;
    }
    // The burst, plus what 5/s refilled while the flood was read.
    assert!((10..=13).contains(&answers), "{answers} answers");

    // The other source is served at once.
    let other = udp_from(OTHER).await;
    let other_addr = other.local_addr().expect("addr");
    other
        .send_to(
            register(other_addr, "UDP", "calm", "calm-1@test").as_bytes(),
            shim.addr,
        )
        .await
        .expect("send");
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), other.recv_from(&mut buf))
        .await
        .expect("the other source answered within 5 s")
        .expect("recv");
    assert!(
        buf[..n].starts_with(b"SIP/2.0 200 "),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );

    // The banned source is still ignored: its REGISTER is counted as banned
    // and gets no answer.
    let banned = shim.metric(r#"proxy_shim_dropped_total{reason="banned"}"#);
    flooder
        .send_to(
            register(me, "UDP", "flood", "flood-late@test").as_bytes(),
            shim.addr,
        )
        .await
        .expect("send");
    eventually(
        "the late REGISTER to be dropped as banned",
        WAIT,
        async || shim.metric(r#"proxy_shim_dropped_total{reason="banned"}"#) == banned + 1,
    )
    .await;
    assert!(
        flooder.try_recv_from(&mut buf).is_err(),
        "no answer while banned"
    );
    assert_eq!(
        shim.metric("proxy_shim_bans_total"),
        1,
        "a ban is not restarted"
    );
    shim.stop().await;
    locsvc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_a_thousand_idle_tcp_connections_from_one_source_do_not_stop_another_sources_register()
{
    init_tracing();
    let dir = tempfile::tempdir().expect("tempdir");
    let locsvc = TestApp::embedded(&dir.path().join("data")).await;
    let mut shim = start_shim(locsvc.url(), |s| {
        s.tcp_max_per_source = 4;
    })
    .await;
    let attempts = 1030;
    let mut idle = Vec::new();
    for _ in 0..attempts {
        // The kernel completes the handshake before the shim accepts, so
        // every connect succeeds; the shim closes all but 4 at accept.
        idle.push(tcp_from(FLOODER, shim.addr).await.expect("connect"));
    }
    eventually(
        "the connections over the per-source cap to be refused",
        WAIT,
        async || {
            shim.metric(r#"proxy_shim_tcp_rejected_total{reason="per_source"}"#) == attempts - 4
        },
    )
    .await;
    assert_eq!(shim.metric("proxy_shim_tcp_connections"), 4);
    let answer = tcp_register(OTHER, shim.addr, "tessa").await;
    assert!(answer.starts_with("SIP/2.0 200 "), "{answer}");
    // The flooder's first four are still open (idle, not yet timed out).
    assert_eq!(
        shim.metric(r#"proxy_shim_tcp_timeouts_total{kind="idle"}"#),
        0
    );
    drop(idle);
    eventually("the flooder's slots to be given back", WAIT, async || {
        shim.metric("proxy_shim_tcp_connections") <= 1
    })
    .await;
    shim.stop().await;
    locsvc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_connection_table_closes_a_new_connection_at_once_and_serves_again_when_a_slot_frees()
 {
    init_tracing();
    let dir = tempfile::tempdir().expect("tempdir");
    let locsvc = TestApp::embedded(&dir.path().join("data")).await;
    let mut shim = start_shim(locsvc.url(), |s| {
        s.tcp_max_connections = 3;
        s.tcp_max_per_source = 100;
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(tcp_from(FLOODER, shim.addr).await.expect("connect"));
    }
    eventually("the table to fill", WAIT, async || {
        shim.metric("proxy_shim_tcp_connections") == 3
    })
    .await;
    let mut refused = tcp_from(OTHER, shim.addr).await.expect("connect");
    assert!(
        closed_by_peer(&mut refused).await,
        "a connection beyond the table is closed at once, not left waiting"
    );
    assert_eq!(
        shim.metric(r#"proxy_shim_tcp_rejected_total{reason="table_full"}"#),
        1
    );
    drop(held.pop());
    eventually("a slot to be given back", WAIT, async || {
        shim.metric("proxy_shim_tcp_connections") == 2
    })
    .await;
    // The accept loop was never blocked: the next connection is served.
    let answer = tcp_register(OTHER, shim.addr, "tilda").await;
    assert!(answer.starts_with("SIP/2.0 200 "), "{answer}");
    shim.stop().await;
    locsvc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_sender_trickling_a_message_byte_by_byte_is_disconnected_at_the_message_deadline() {
    init_tracing();
    // No locsvc: the message is never completed, so it is never asked.
    let mut shim = start_shim("http://127.0.0.1:9".into(), |s| {
        s.tcp_message_timeout = Duration::from_millis(300);
    })
    .await;
    let conn = tcp_from(FLOODER, shim.addr).await.expect("connect");
    let me = conn.local_addr().expect("addr");
    let msg = register(me, "TCP", "sloth", "sloth@tcp");
    let (mut rd, mut wr) = conn.into_split();
    let started = std::time::Instant::now();
    let closed = async move {
        let mut b = [0u8; 64];
        // EOF or reset: the shim closed the connection.
        matches!(rd.read(&mut b).await, Ok(0) | Err(_))
    };
    let trickle = async move {
        for byte in msg.as_bytes() {
            // The sender's pace (a slowloris), not a wait for the shim.
            tokio::time::sleep(Duration::from_millis(20)).await;
            if wr.write_all(std::slice::from_ref(byte)).await.is_err() {
                break;
            }
        }
        // Never reached in time: the whole message takes several seconds.
        std::future::pending::<()>().await;
    };
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        tokio::select! {
            c = closed => c,
            () = trickle => false,
        }
    })
    .await
    .expect("disconnected within 5 s");
    assert!(closed, "the shim closed the connection");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(300),
        "not before the deadline: {elapsed:?}"
    );
    eventually("the timeout to be counted", WAIT, async || {
        shim.metric(r#"proxy_shim_tcp_timeouts_total{kind="message"}"#) == 1
    })
    .await;
    assert_eq!(
        shim.metric(r#"proxy_shim_tcp_timeouts_total{kind="idle"}"#),
        0
    );
    eventually("the slot to be given back", WAIT, async || {
        shim.metric("proxy_shim_tcp_connections") == 0
    })
    .await;
    shim.stop().await;
}

/// Collects formatted log lines.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

// A current-thread runtime, so the shim's tasks run on this thread and the
// thread-local log subscriber set below sees their events.
#[tokio::test]
async fn junk_datagrams_are_counted_and_summarized_not_logged_one_by_one_at_info() {
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let mut shim = start_shim("http://127.0.0.1:9".into(), |s| {
        // Counted one by one here; limits are tested above.
        s.rate_limit = 0;
    })
    .await;
    let sock = udp_from(FLOODER).await;
    let mut sent = 0;
    for round in 1..=10u64 {
        for i in 0..50 {
            sock.send_to(format!("\x00junk {round} {i}").as_bytes(), shim.addr)
                .await
                .expect("send");
            sent += 1;
        }
        // Paced by what the shim has read, so no datagram is lost to a full buffer.
        eventually("the junk to be counted", WAIT, async || {
            shim.metric(r#"proxy_shim_dropped_total{reason="unparsable"}"#) == sent
        })
        .await;
    }
    shim.stop().await;
    let text =
        String::from_utf8_lossy(&capture.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned();
    let mentions = text.lines().filter(|l| l.contains("unparsable")).count();
    // One summary at the first datagram and at most one more (at stop or
    // after 10 s), never one per datagram.
    assert!((1..=2).contains(&mentions), "{mentions} lines:\n{text}");
    assert!(!text.contains("unparsable datagram dropped"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_source_is_never_limited() {
    init_tracing();
    let mut shim = start_shim("http://127.0.0.1:9".into(), |s| {
        s.rate_limit = 1;
        s.rate_burst = 1;
        s.trusted = vec!["127.0.0.0/8".parse().expect("cidr")];
    })
    .await;
    let sock = udp_from(FLOODER).await;
    let mut sent = 0;
    for _ in 0..5 {
        for _ in 0..20 {
            sock.send_to(b"\x00junk", shim.addr).await.expect("send");
            sent += 1;
        }
        eventually("the junk to be parsed (not limited)", WAIT, async || {
            shim.metric(r#"proxy_shim_dropped_total{reason="unparsable"}"#) == sent
        })
        .await;
    }
    assert_eq!(shim.metric("proxy_shim_bans_total"), 0);
    assert_eq!(
        shim.metric(r#"proxy_shim_dropped_total{reason="rate_limited"}"#),
        0
    );
    shim.stop().await;
}
