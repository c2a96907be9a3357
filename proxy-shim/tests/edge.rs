//! The SIP edge as an attacker meets it: each test reproduces a finding of
//! the security review with plain UDP datagrams against an in-process shim
//! (and real locsvc), and checks it is closed. A listener on 127.0.0.2 plays
//! the third party a relay would reach; a test that expects nothing there
//! first receives the shim's own answer (forwarding and answering exclude
//! each other), then checks the listener stayed silent.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use proxy_shim::settings::Mode;
use support::*;
use testkit::eventually;
use tokio::net::UdpSocket;

/// A socket on 127.0.0.2 (another loopback address: "elsewhere").
async fn elsewhere() -> (UdpSocket, SocketAddr) {
    let s = UdpSocket::bind("127.0.0.2:0")
        .await
        .expect("bind 127.0.0.2");
    let a = s.local_addr().expect("addr");
    (s, a)
}

/// Nothing arrives on `sock` for a moment (used only after the shim's own
/// answer proved the request was handled).
async fn stays_silent(sock: &UdpSocket) -> bool {
    let mut buf = [0u8; 2048];
    tokio::time::timeout(Duration::from_millis(300), sock.recv_from(&mut buf))
        .await
        .is_err()
}

fn status_line(msg: &str) -> &str {
    msg.lines().next().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_2_a_foreign_route_or_request_uri_is_refused_not_relayed() {
    let e = env(Mode::Proxy).await;
    let (far, far_addr) = elsewhere().await;
    let via_route = request(
        "INVITE",
        "sip:x@evil.test",
        "sip:x@evil.test",
        &format!("Route: <sip:{far_addr};lr>\r\n"),
    );
    let answer = udp_exchange(e.shim.addr, &via_route).await;
    assert_eq!(status_line(&answer), "SIP/2.0 403 Not relaying", "{answer}");
    let foreign = request("INVITE", "sip:x@evil.test", "sip:x@evil.test", "");
    let answer = udp_exchange(e.shim.addr, &foreign).await;
    assert_eq!(status_line(&answer), "SIP/2.0 403 Not relaying", "{answer}");
    // An in-dialog BYE (To tag) to an IP Request-URI from an untrusted source.
    let bye = request("BYE", &format!("sip:{far_addr}"), "sip:x@example.com", "")
        .replace("To: <sip:x@example.com>", "To: <sip:x@example.com>;tag=t1");
    let answer = udp_exchange(e.shim.addr, &bye).await;
    assert_eq!(status_line(&answer), "SIP/2.0 403 Not relaying", "{answer}");
    assert!(
        stays_silent(&far).await,
        "nothing was relayed to {far_addr}"
    );
    assert_eq!(e.shim.metrics.forwarded_count("INVITE"), 0);
    assert_eq!(e.shim.metrics.forwarded_count("BYE"), 0);
    e.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_3_a_forged_response_through_our_via_is_dropped() {
    let e = env(Mode::Proxy).await;
    let (far, far_addr) = elsewhere().await;
    let (sock, _) = udp_socket().await;
    // Our branch prefix and our address on top, a victim in the second Via.
    let forged = format!(
        "SIP/2.0 200 OK\r\n\
         Via: SIP/2.0/UDP {shim};branch=z9hG4bK-ps-0123456789abcdef-0011223344556677\r\n\
         Via: SIP/2.0/UDP {far_addr};branch=z9hG4bK-victim\r\n\
         From: <sip:a@example.com>;tag=1\r\nTo: <sip:b@example.com>;tag=2\r\n\
         Call-ID: forged@test\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n",
        shim = e.shim.addr
    );
    sock.send_to(forged.as_bytes(), e.shim.addr)
        .await
        .expect("send");
    let m = &e.shim.metrics;
    eventually(
        "the forged response is counted as dropped",
        Duration::from_secs(10),
        async || m.dropped_count("response_forged") == 1,
    )
    .await;
    assert!(stays_silent(&far).await, "nothing reached {far_addr}");
    e.finish().await;
}

/// Sends an INVITE for `aor` to the shim from a fresh socket (kept open so
/// the shim's answers have somewhere to go).
async fn call(shim: SocketAddr, aor: &str) -> UdpSocket {
    let (caller, me) = udp_socket().await;
    let port = me.port().to_string();
    let invite = request("INVITE", aor, aor, "").replace("{port}", &port);
    caller.send_to(invite.as_bytes(), shim).await.expect("send");
    caller
}

/// A REGISTER whose Via names `sent_by` and whose contact is `contact`,
/// with any `extra` headers.
fn third_party_register(sent_by: &str, contact: &str, extra: &str) -> String {
    format!(
        "REGISTER sip:example.com SIP/2.0\r\n\
         Via: SIP/2.0/UDP {sent_by};branch=z9hG4bK-tp-1\r\n\
         Max-Forwards: 70\r\nFrom: <sip:carol@example.com>;tag=c1\r\n\
         To: <sip:carol@example.com>\r\nCall-ID: tp@test\r\nCSeq: 1 REGISTER\r\n\
         Contact: <{contact}>\r\nExpires: 600\r\n{extra}Content-Length: 0\r\n\r\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_4_calls_go_to_the_contact_of_a_third_party_registration() {
    let e = env(Mode::Proxy).await;
    // The registering party (an edge) and the phone it registers.
    let (edge, edge_addr) = udp_socket().await;
    let (phone, phone_addr) = elsewhere().await;
    let reg = third_party_register(
        &edge_addr.to_string(),
        &format!("sip:carol@{phone_addr}"),
        // A Path from an untrusted source must not steer calls.
        "Supported: path\r\nPath: <sip:127.0.0.3:5999;lr>\r\n",
    );
    edge.send_to(reg.as_bytes(), e.shim.addr)
        .await
        .expect("send");
    let (ok, _) = recv_text(&edge, Duration::from_secs(5)).await;
    assert!(ok.starts_with("SIP/2.0 200 OK"), "{ok}");
    assert!(
        header_values(&ok, "Path").is_empty(),
        "no Path echoed: {ok}"
    );
    let b = e.locsvc.lookup("sip:carol@example.com").await;
    assert_eq!(b.len(), 1);
    assert_eq!(b[0].received, "", "no NAT: the Via named the source");
    assert!(b[0].path.is_empty(), "untrusted Path not stored");
    // A call reaches the phone, not the edge that registered it.
    let _caller = call(e.shim.addr, "sip:carol@example.com").await;
    let (at_phone, _) = recv_text(&phone, Duration::from_secs(5)).await;
    assert!(
        at_phone.starts_with(&format!("INVITE sip:carol@{phone_addr} ")),
        "{at_phone}"
    );
    assert!(stays_silent(&edge).await, "the edge got no INVITE");
    e.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_4_a_phone_behind_nat_is_reached_at_its_source() {
    let e = env(Mode::Proxy).await;
    let (phone, phone_addr) = udp_socket().await;
    // The phone writes its private address in Via and Contact; the packet
    // comes from elsewhere (here: loopback), so it is behind NAT.
    let reg = third_party_register("192.168.1.5:5060", "sip:carol@192.168.1.5:5060", "");
    phone
        .send_to(reg.as_bytes(), e.shim.addr)
        .await
        .expect("send");
    // Answered at the source: the Via's 192.168.1.5:5060 is unreachable.
    let (ok, _) = recv_text(&phone, Duration::from_secs(5)).await;
    assert!(ok.starts_with("SIP/2.0 200 OK"), "{ok}");
    let b = e.locsvc.lookup("sip:carol@example.com").await;
    assert_eq!(b[0].received, format!("sip:{phone_addr}"));
    let _caller = call(e.shim.addr, "sip:carol@example.com").await;
    let (at_phone, _) = recv_text(&phone, Duration::from_secs(5)).await;
    assert!(
        at_phone.starts_with("INVITE sip:carol@192.168.1.5:5060 "),
        "{at_phone}"
    );
    e.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_5_a_302_over_udp_fits_one_datagram_whatever_was_registered() {
    let e = env(Mode::Redirect).await;
    let long = |i: usize| format!("sip:{}{i}@192.0.2.{i}:5060", "u".repeat(400));
    let contacts: Vec<String> = (1..=16).map(long).collect();
    let with_q: Vec<(&str, f32)> = contacts.iter().map(|c| (c.as_str(), 0.5)).collect();
    e.locsvc.save("sip:big@example.com", &with_q).await;
    let invite = request("INVITE", "sip:big@example.com", "sip:big@example.com", "");
    let answer = udp_exchange(e.shim.addr, &invite).await;
    assert!(answer.starts_with("SIP/2.0 302 "), "{answer}");
    assert!(answer.len() <= 1300, "302 of {} bytes", answer.len());
    assert!(!header_values(&answer, "Contact").is_empty());
    e.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_5_answers_go_to_the_source_port_not_a_port_named_in_via() {
    let e = env(Mode::Proxy).await;
    let (sock, me) = udp_socket().await;
    let (victim, victim_addr) = elsewhere().await;
    // No rport, and a Via naming someone else's port.
    let ruri = format!("sip:{}", e.shim.addr);
    let msg = request("OPTIONS", &ruri, &ruri, "").replace(
        "Via: SIP/2.0/UDP 127.0.0.1:{port}",
        &format!("Via: SIP/2.0/UDP 127.0.0.1:{}", victim_addr.port()),
    );
    sock.send_to(msg.as_bytes(), e.shim.addr)
        .await
        .expect("send");
    let (answer, _) = recv_text(&sock, Duration::from_secs(5)).await;
    assert!(answer.starts_with("SIP/2.0 200 OK"), "to {me}: {answer}");
    assert!(stays_silent(&victim).await);
    e.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_5_routes_naming_us_in_any_form_never_loop() {
    let e = env_with(Mode::Proxy, |s| {
        s.trusted = vec!["127.0.0.1/32".parse().expect("cidr")];
    })
    .await;
    let port = e.shim.addr.port();
    // 0.0.0.0 names this host: the Route is ours and is removed.
    let zero = request(
        "INVITE",
        "sip:nobody@example.com",
        "sip:nobody@example.com",
        &format!("Route: <sip:0.0.0.0:{port};lr>\r\n"),
    );
    let answer = udp_exchange(e.shim.addr, &zero).await;
    assert_eq!(status_line(&answer), "SIP/2.0 404 Not Found", "{answer}");
    // Even a trusted source cannot make us forward to ourselves.
    let again = request(
        "INVITE",
        "sip:x@elsewhere.test",
        "sip:x@elsewhere.test",
        &format!("Route: <sip:127.0.0.1:{port};lr>, <sip:0.0.0.0:{port};lr>\r\n"),
    );
    let answer = udp_exchange(e.shim.addr, &again).await;
    assert_eq!(
        status_line(&answer),
        "SIP/2.0 482 Loop Detected",
        "{answer}"
    );
    assert_eq!(e.shim.metrics.forwarded_count("INVITE"), 0);
    e.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_5_max_forwards_255_is_capped() {
    let e = env(Mode::Proxy).await;
    let (phone, phone_addr) = elsewhere().await;
    e.locsvc
        .save(
            "sip:dan@example.com",
            &[(&format!("sip:dan@{phone_addr}"), 1.0)],
        )
        .await;
    let (caller, me) = udp_socket().await;
    let invite = request("INVITE", "sip:dan@example.com", "sip:dan@example.com", "")
        .replace("Max-Forwards: 70", "Max-Forwards: 255")
        .replace("{port}", &me.port().to_string());
    caller
        .send_to(invite.as_bytes(), e.shim.addr)
        .await
        .expect("send");
    let (fwd, _) = recv_text(&phone, Duration::from_secs(5)).await;
    assert_eq!(header_values(&fwd, "Max-Forwards"), ["69"], "{fwd}");
    e.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sanity_a_register_for_another_domain_than_its_request_uri_gets_400() {
    let e = env(Mode::Proxy).await;
    let msg = request("REGISTER", "sip:other.test", "sip:eve@example.com", "");
    let answer = udp_exchange(e.shim.addr, &msg).await;
    assert!(answer.starts_with("SIP/2.0 400 "), "{answer}");
    let msg = request("INVITE", "sip:eve@example.com", "sip:eve@example.com", "")
        .replace("CSeq: 1 INVITE", "CSeq: 1 BYE");
    let answer = udp_exchange(e.shim.addr, &msg).await;
    assert!(answer.starts_with("SIP/2.0 400 "), "{answer}");
    assert!(e.locsvc.lookup("sip:eve@example.com").await.is_empty());
    e.finish().await;
}
