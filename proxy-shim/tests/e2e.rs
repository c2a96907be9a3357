//! End to end: a real locsvc (embedded SQLite in a tempdir) and a real shim,
//! both in-process on port 0, driven by `sipp` as a child process. Each test
//! asserts sipp's exit code (its scenarios check the SIP answers with
//! regexes) and the state in locsvc through a gRPC Lookup.

mod support;

use std::time::Duration;

use proxy_shim::settings::Mode;
use support::*;
use testkit::{TestApp, eventually, free_udp_port, init_tracing};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_refresh_add_a_contact_unregister_one_and_query() {
    let e = env(Mode::Proxy).await;
    let (ok, log) = e.sipp("register_lifecycle.xml", &["-m", "1"]).await;
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
    let (ok, log) = e.sipp("contact_star.xml", &["-m", "1"]).await;
    assert!(ok, "{log}");
    assert!(e.locsvc.lookup("sip:carol@example.com").await.is_empty());
    e.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_too_brief_expires_gets_423_with_min_expires_and_stores_nothing() {
    let e = env(Mode::Proxy).await;
    let (ok, log) = e.sipp("register_423.xml", &["-m", "1"]).await;
    assert!(ok, "{log}");
    assert!(e.locsvc.lookup("sip:dave@example.com").await.is_empty());
    e.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invite_to_an_unknown_user_gets_404() {
    let e = env(Mode::Proxy).await;
    let (ok, log) = e.sipp("invite_404.xml", &["-m", "1"]).await;
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
    let (ok, log) = e.sipp("invite_302.xml", &["-m", "1"]).await;
    assert!(ok, "{log}");
    // The ACK of the 302 ends at the shim: counted, not forwarded.
    let m = &e.shim.metrics;
    eventually(
        "the shim to drop the ACK of its 302",
        Duration::from_secs(10),
        async || m.dropped_count("ack_of_our_answer") == 1,
    )
    .await;
    assert!(
        e.shim
            .scrape()
            .await
            .contains(r#"proxy_shim_requests_total{method="ACK"} 1"#),
        "the ACK is counted as a request"
    );
    e.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invite_is_proxied_to_a_registered_uas_answered_acked_and_byed() {
    proxied_calls(1, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_180_and_the_200_right_behind_it_reach_the_caller_in_that_order() {
    // 300 calls whose UAS sends 180 and 200 back to back: with a task per
    // datagram the 200 overtook the 180 in some of them.
    proxied_calls(300, 100).await;
}

/// `calls` calls at `rate`/s from the UAC through the shim to a registered
/// UAS (uac.xml, uas.xml), each INVITE, 180, 200, ACK, BYE, 200 in order.
async fn proxied_calls(calls: u32, rate: u32) {
    // The UAC plays a trusted edge: the shim does not Record-Route, so the
    // ACK and BYE sipp sends through it are in-dialog requests, which only
    // a trusted source may relay (edge.rs checks that others get 403).
    let e = env_with(Mode::Proxy, |s| {
        s.trusted = vec!["127.0.0.1/32".parse().expect("cidr")];
    })
    .await;
    // The UAS's contact is registered from the UAS's own port, so the shim
    // sees no NAT and routes to the contact itself.
    let uas_port = free_udp_port().to_string();
    let (ok, log) = e
        .sipp(
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
    let (calls, rate) = (calls.to_string(), rate.to_string());
    let uas_calls = calls.clone();
    // Started before the UAC; if it binds late, the INVITE retransmission reaches it.
    let uas = tokio::spawn(async move {
        sipp(&uas_dir, shim, "uas.xml", &["-m", &uas_calls, "-p", &port]).await
    });
    let (ok, log) = e.sipp("uac.xml", &["-m", &calls, "-r", &rate]).await;
    assert!(ok, "UAC: {log}");
    let (ok, log) = uas.await.expect("uas task");
    assert!(ok, "UAS: {log}");
    e.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_register_over_tcp_is_saved_with_a_tcp_socket() {
    let e = env(Mode::Proxy).await;
    let (ok, log) = e
        .sipp(
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
    // The Via names the address the connection came from (a TCP source
    // port is always ephemeral, so only the address counts) and the contact
    // is not private behind a public source: no NAT, the contact is the
    // next hop, even though it names another port.
    assert_eq!(b[0].received, "", "no NAT detected");
    e.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_malformed_datagrams_is_dropped_and_a_valid_register_still_works() {
    let e = env(Mode::Proxy).await;
    let (sock, _) = udp_socket().await;
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
    let m = &e.shim.metrics;
    eventually(
        "the shim to count the dropped datagrams",
        Duration::from_secs(10),
        async || m.dropped_count("unparsable") + m.dropped_count("too_large") >= 4 * bursts,
    )
    .await;
    let (ok, log) = e
        .sipp(
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
    let first = TestApp::embedded(&data).await;
    // The second instance shares the same databases (as two locsvc nodes would).
    let second = TestApp::embedded(&data).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locsvc_restarted_on_its_address_is_reached_again_on_a_new_connection() {
    // The shim's plain-HTTP connection to locsvc breaks with the restart;
    // the next call must make a new one, not fail on the dead one.
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let first = TestApp::embedded(&data).await;
    let mut shim = RunningShim::start(&[&first], Mode::Proxy).await;
    let register = |user: &str| {
        request(
            "REGISTER",
            "sip:example.com",
            &format!("sip:{user}@example.com"),
            &format!("Contact: <sip:{user}@127.0.0.1:5999>\r\nExpires: 600\r\n"),
        )
    };
    let ok = udp_exchange(shim.addr, &register("hanna")).await;
    assert!(ok.starts_with("SIP/2.0 200 "), "before the restart: {ok}");
    let addr = first.addr;
    first.stop().await;
    let mut settings = testkit::embedded_settings(&data);
    settings.grpc.listen = addr;
    let again = TestApp::spawn(settings).await;
    again.warm_up().await;
    let ok = udp_exchange(shim.addr, &register("ivan")).await;
    assert!(ok.starts_with("SIP/2.0 200 "), "after the restart: {ok}");
    assert_eq!(again.lookup("sip:hanna@example.com").await.len(), 1);
    assert_eq!(again.lookup("sip:ivan@example.com").await.len(), 1);
    shim.stop().await;
    again.stop().await;
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
    let locsvc = TestApp::embedded(&dir.path().join("data")).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_endpoint_counts_a_register_its_200_and_the_locsvc_call() {
    let e = env(Mode::Proxy).await;
    let (sock, me) = udp_socket().await;
    let answer = ask(&sock, e.shim.addr, &register_msg(me, "mia", "m1@test", 1)).await;
    assert!(answer.starts_with("SIP/2.0 200 OK\r\n"), "{answer}");
    let text = e.shim.scrape().await;
    for line in [
        r#"proxy_shim_requests_total{method="REGISTER"} 1"#,
        r#"proxy_shim_responses_total{method="REGISTER",status="200"} 1"#,
        r#"proxy_shim_locsvc_seconds_count{op="save",result="ok"} 1"#,
        "proxy_shim_in_flight 0",
        "proxy_shim_overloaded_total 0",
        // The stages recorded before the answer left.
        r#"proxy_shim_stage_seconds_count{stage="parse"} 1"#,
        r#"proxy_shim_stage_seconds_count{stage="wait"} 1"#,
        r#"proxy_shim_stage_seconds_count{stage="handle"} 1"#,
    ] {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
    // And locsvc's side of the same REGISTER, stage by stage.
    let text = e.locsvc.metrics.render();
    let sum = |prefix: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let count = |prefix: &str| sum(prefix) as u64;
    // One lock wait per write RPC (the harness's own probes included).
    assert_eq!(
        count(r#"locsvc_aor_lock_wait_seconds_count{lock="local"}"#),
        count(r#"locsvc_rpc_requests_total{code="Ok",method="Save"}"#)
            + count(r#"locsvc_rpc_requests_total{code="Ok",method="Remove"}"#),
        "{text}"
    );
    assert!(
        count(r#"locsvc_store_queue_seconds_count{op="read"}"#) >= 1,
        "{text}"
    );
    assert!(
        count(r#"locsvc_store_statement_seconds_count{op="read"}"#) >= 1,
        "{text}"
    );
    // Every queued request rides in exactly one batch, one statement each.
    assert_eq!(
        sum(r#"locsvc_store_batch_requests_sum{op="read"}"#) as u64,
        count(r#"locsvc_store_queue_seconds_count{op="read"}"#),
        "{text}"
    );
    assert_eq!(
        count(r#"locsvc_store_batch_requests_count{op="read"}"#),
        count(r#"locsvc_store_statement_seconds_count{op="read"}"#),
        "{text}"
    );
    assert!(count("locsvc_member_query_seconds_count{") >= 1, "{text}");
    e.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_register_with_a_lower_cseq_on_the_same_call_id_gets_400_and_changes_nothing() {
    let e = env(Mode::Proxy).await;
    let (sock, me) = udp_socket().await;
    let first = ask(&sock, e.shim.addr, &register_msg(me, "olga", "o1@test", 5)).await;
    assert!(first.starts_with("SIP/2.0 200 OK\r\n"), "{first}");
    let second = ask(&sock, e.shim.addr, &register_msg(me, "olga", "o1@test", 4)).await;
    assert!(second.starts_with("SIP/2.0 400 "), "{second}");
    assert_eq!(header_values(&second, "CSeq"), ["4 REGISTER"], "{second}");
    let b = e.locsvc.lookup("sip:olga@example.com").await;
    assert_eq!(b.len(), 1, "{b:?}");
    assert_eq!(b[0].cseq, 5);
    e.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_max_in_flight_is_reached_a_request_gets_503_with_retry_after_at_once() {
    init_tracing();
    // A "locsvc" that accepts TCP connections in the kernel but never
    // serves them: the first REGISTER holds the only permit until its
    // budget runs out or this listener is closed.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", silent.local_addr().expect("addr"));
    let mut shim = RunningShim::start_with(vec![url], Mode::Proxy, |s| {
        s.max_in_flight = 1;
        s.locsvc_timeout = Duration::from_secs(5);
    })
    .await;
    let (held, held_addr) = udp_socket().await;
    held.send_to(
        register_msg(held_addr, "hank", "h1@test", 1).as_bytes(),
        shim.addr,
    )
    .await
    .expect("send");
    let m = shim.metrics.clone();
    eventually(
        "the first REGISTER to hold the only permit",
        Duration::from_secs(10),
        async || m.in_flight() == 1,
    )
    .await;
    let (other, other_addr) = udp_socket().await;
    let started = std::time::Instant::now();
    let answer = ask(
        &other,
        shim.addr,
        &register_msg(other_addr, "ivy", "i1@test", 1),
    )
    .await;
    assert!(answer.starts_with("SIP/2.0 503 "), "{answer}");
    assert_eq!(header_values(&answer, "Retry-After"), ["1"], "{answer}");
    // At once: long before the held request's 5 s budget could free the permit.
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(m.in_flight(), 1, "the held request is still in flight");
    let text = shim.scrape().await;
    assert!(text.contains("proxy_shim_overloaded_total 1"), "{text}");
    // Closing the listener resets the pending connection: the held request
    // fails (503) and the permit comes back.
    drop(silent);
    let (late, _) = recv_text(&held, Duration::from_secs(10)).await;
    assert!(late.starts_with("SIP/2.0 503 "), "{late}");
    eventually(
        "the permit to be released",
        Duration::from_secs(10),
        async || m.in_flight() == 0,
    )
    .await;
    shim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_follows_its_proxied_invite_to_the_same_contact_with_the_same_branch() {
    let e = env(Mode::Proxy).await;
    let (callee, callee_addr) = udp_socket().await;
    let contact = format!("sip:callee@{callee_addr}");
    e.locsvc
        .save("sip:callee@example.com", &[(&contact, 1.0)])
        .await;
    let (caller, caller_addr) = udp_socket().await;
    let msg = |method: &str| {
        format!(
            "{method} sip:callee@example.com SIP/2.0\r\n\
             Via: SIP/2.0/UDP {caller_addr};branch=z9hG4bK-call-1\r\n\
             Max-Forwards: 70\r\nFrom: <sip:caller@example.com>;tag=c1\r\n\
             To: <sip:callee@example.com>\r\nCall-ID: cancel-1@test\r\nCSeq: 1 {method}\r\n\
             Contact: <sip:caller@{caller_addr}>\r\nContent-Length: 0\r\n\r\n"
        )
    };
    caller
        .send_to(msg("INVITE").as_bytes(), e.shim.addr)
        .await
        .expect("send INVITE");
    let (invite, from) = recv_text(&callee, Duration::from_secs(5)).await;
    assert!(
        invite.starts_with(&format!("INVITE {contact} SIP/2.0\r\n")),
        "{invite}"
    );
    assert_eq!(from, e.shim.addr, "forwarded from the shim's socket");
    let invite_vias = header_values(&invite, "Via");
    assert_eq!(invite_vias.len(), 2, "{invite}");
    assert!(
        invite_vias[0].starts_with(&format!("SIP/2.0/UDP {};", e.shim.addr)),
        "{invite}"
    );
    let branch = branch_of(invite_vias[0]).to_string();
    assert!(branch.starts_with("z9hG4bK-ps-"), "{branch}");

    caller
        .send_to(msg("CANCEL").as_bytes(), e.shim.addr)
        .await
        .expect("send CANCEL");
    let (cancel, from) = recv_text(&callee, Duration::from_secs(5)).await;
    assert!(
        cancel.starts_with(&format!("CANCEL {contact} SIP/2.0\r\n")),
        "{cancel}"
    );
    assert_eq!(from, e.shim.addr);
    let cancel_vias = header_values(&cancel, "Via");
    assert_eq!(cancel_vias.len(), 2, "{cancel}");
    assert_eq!(
        branch_of(cancel_vias[0]),
        branch,
        "RFC 3261 §16.11: same branch as the INVITE"
    );
    assert_eq!(cancel_vias[0], invite_vias[0]);

    // The callee's 200 to the CANCEL is relayed back with our Via popped.
    let ok = format!(
        "SIP/2.0 200 OK\r\n{}From: <sip:caller@example.com>;tag=c1\r\n\
         To: <sip:callee@example.com>;tag=e1\r\nCall-ID: cancel-1@test\r\nCSeq: 1 CANCEL\r\n\
         Content-Length: 0\r\n\r\n",
        cancel_vias
            .iter()
            .map(|v| format!("Via: {v}\r\n"))
            .collect::<String>()
    );
    callee
        .send_to(ok.as_bytes(), e.shim.addr)
        .await
        .expect("send 200");
    let (relayed, _) = recv_text(&caller, Duration::from_secs(5)).await;
    assert!(relayed.starts_with("SIP/2.0 200 OK\r\n"), "{relayed}");
    let vias = header_values(&relayed, "Via");
    assert_eq!(vias.len(), 1, "{relayed}");
    assert_eq!(branch_of(vias[0]), "z9hG4bK-call-1");
    e.finish().await;
}

#[tokio::test]
async fn config_defaults_prints_every_setting_as_a_file_the_shim_reads() {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_proxy-shim"))
        .args(["config", "defaults"])
        .output()
        .await
        .expect("proxy-shim runs");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text, proxy_shim::defaults::toml());
    assert!(text.contains("\nlocsvc_timeout_ms = 400  # "), "{text}");
}

#[tokio::test]
async fn a_sighup_is_logged_and_ignored_not_the_end_of_the_process() {
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("PROXY_SHIM_LISTEN", "127.0.0.1:0".to_string()),
        ("PROXY_SHIM_DOMAINS", "example.com".to_string()),
        ("PROXY_SHIM_METRICS_LISTEN", "off".to_string()),
    ];
    let shim = testkit::process::Service::start(
        "proxy-shim",
        &[],
        &env,
        dir.path(),
        Duration::from_secs(30),
    )
    .await;
    shim.signal("HUP");
    eventually("the SIGHUP logged", Duration::from_secs(10), async || {
        shim.log().contains("SIGHUP ignored")
    })
    .await;
    // Still running: it drains and exits cleanly on SIGTERM.
    let log = shim.log();
    assert!(shim.stop(Duration::from_secs(10)).await.success(), "{log}");
}
