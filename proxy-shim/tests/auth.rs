//! Digest authentication at the SIP edge, end to end: subscribers in
//! locsvc's `subscriber` table, the shim challenging, a UA answering (here
//! computed in the test, or sipp's own `[authentication]`).

mod support;

use std::net::SocketAddr;

use proxy_shim::digest::Algorithm;
use proxy_shim::settings::{AuthMode, Mode};
use support::*;

async fn env_auth(mode: Mode) -> Env {
    env_with(mode, |s| {
        s.auth = AuthMode::Digest;
        // sipp stands for a thousand phones on one address.
        s.rate_limit = 0;
    })
    .await
}

/// `name="value"` of a challenge header.
fn param<'a>(header: &'a str, name: &str) -> &'a str {
    let start = header
        .find(&format!("{name}=\""))
        .map(|i| i + name.len() + 2)
        .unwrap_or(header.len());
    let rest = &header[start..];
    &rest[..rest.find('"').unwrap_or(rest.len())]
}

/// The answer a UA computes to a challenge.
#[allow(clippy::too_many_arguments)]
fn answer(
    alg: Algorithm,
    method: &str,
    uri: &str,
    user: &str,
    realm: &str,
    password: &str,
    nonce: &str,
    nc: u32,
) -> String {
    let ha1 = alg.hex(&format!("{user}:{realm}:{password}"));
    let ha2 = alg.hex(&format!("{method}:{uri}"));
    let nc = format!("{nc:08x}");
    let response = alg.hex(&format!("{ha1}:{nonce}:{nc}:abc123:auth:{ha2}"));
    format!(
        "Digest username=\"{user}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", \
         response=\"{response}\", algorithm={}, cnonce=\"abc123\", qop=auth, nc={nc}",
        alg.token()
    )
}

fn register(me: SocketAddr, user: &str, cseq: u32, auth: Option<&str>) -> String {
    let auth = auth.map_or(String::new(), |a| format!("Authorization: {a}\r\n"));
    format!(
        "REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK-a{cseq}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:{user}@example.com>;tag=f1\r\nTo: <sip:{user}@example.com>\r\n\
         Call-ID: auth-{user}@test\r\nCSeq: {cseq} REGISTER\r\nContact: <sip:{user}@{me}>\r\n\
         Expires: 600\r\n{auth}Content-Length: 0\r\n\r\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_is_challenged_then_accepted_refused_or_forbidden() {
    let e = env_auth(Mode::Proxy).await;
    e.locsvc
        .add_subscriber("alice", "example.com", "s3cret")
        .await;
    e.locsvc.add_subscriber("bob", "example.com", "b0b").await;
    let (sock, me) = udp_socket().await;

    let unauthenticated = register(me, "alice", 1, None);
    let first = ask(&sock, e.shim.addr, &unauthenticated).await;
    assert!(first.starts_with("SIP/2.0 401 Unauthorized"), "{first}");
    // A stranger's REGISTER buys a small answer, whatever the AoR holds.
    assert!(
        first.len() < 3 * unauthenticated.len(),
        "{} bytes",
        first.len()
    );
    let challenges = header_values(&first, "WWW-Authenticate");
    assert_eq!(challenges.len(), 2, "{first}");
    assert!(challenges[0].contains("algorithm=MD5") && challenges[1].contains("algorithm=SHA-256"));
    assert!(
        e.locsvc.lookup("sip:alice@example.com").await.is_empty(),
        "nothing stored"
    );
    let nonce = param(challenges[0], "nonce").to_string();

    // A wrong password: challenged again, nothing stored.
    let wrong = answer(
        Algorithm::Md5,
        "REGISTER",
        "sip:example.com",
        "alice",
        "example.com",
        "guess",
        &nonce,
        1,
    );
    let again = ask(&sock, e.shim.addr, &register(me, "alice", 2, Some(&wrong))).await;
    assert!(again.starts_with("SIP/2.0 401 "), "{again}");
    assert!(e.locsvc.lookup("sip:alice@example.com").await.is_empty());

    // Bob's correct answer for Alice's AoR: 403.
    let as_bob = answer(
        Algorithm::Md5,
        "REGISTER",
        "sip:example.com",
        "bob",
        "example.com",
        "b0b",
        &nonce,
        1,
    );
    let forbidden = ask(&sock, e.shim.addr, &register(me, "alice", 3, Some(&as_bob))).await;
    assert!(forbidden.starts_with("SIP/2.0 403 "), "{forbidden}");
    assert!(e.locsvc.lookup("sip:alice@example.com").await.is_empty());

    // The right answer, with SHA-256 (the password is stored, so locsvc
    // derives that HA1 too).
    let ok = answer(
        Algorithm::Sha256,
        "REGISTER",
        "sip:example.com",
        "alice",
        "example.com",
        "s3cret",
        &nonce,
        2,
    );
    let done = ask(&sock, e.shim.addr, &register(me, "alice", 4, Some(&ok))).await;
    assert!(done.starts_with("SIP/2.0 200 OK"), "{done}");
    assert_eq!(e.locsvc.lookup("sip:alice@example.com").await.len(), 1);

    // The same answer again (same nonce count): a replay, challenged.
    let replay = ask(&sock, e.shim.addr, &register(me, "alice", 5, Some(&ok))).await;
    assert!(replay.starts_with("SIP/2.0 401 "), "{replay}");
    e.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_change_applies_without_a_restart() {
    let e = env_auth(Mode::Proxy).await;
    e.locsvc
        .add_subscriber("carol", "example.com", "old-pw")
        .await;
    let (sock, me) = udp_socket().await;
    let challenge = ask(&sock, e.shim.addr, &register(me, "carol", 1, None)).await;
    let nonce = param(header_values(&challenge, "WWW-Authenticate")[0], "nonce").to_string();
    let with = |pw: &str, nc: u32| {
        answer(
            Algorithm::Md5,
            "REGISTER",
            "sip:example.com",
            "carol",
            "example.com",
            pw,
            &nonce,
            nc,
        )
    };
    let ok = ask(
        &sock,
        e.shim.addr,
        &register(me, "carol", 2, Some(&with("old-pw", 1))),
    )
    .await;
    assert!(ok.starts_with("SIP/2.0 200 "), "{ok}");
    e.locsvc
        .set_password("carol", "example.com", "new-pw")
        .await;
    // The shim's cache still holds the old HA1; the new password must work
    // at once, and the old one must not.
    let new = ask(
        &sock,
        e.shim.addr,
        &register(me, "carol", 3, Some(&with("new-pw", 2))),
    )
    .await;
    assert!(new.starts_with("SIP/2.0 200 "), "{new}");
    let old = ask(
        &sock,
        e.shim.addr,
        &register(me, "carol", 4, Some(&with("old-pw", 3))),
    )
    .await;
    assert!(old.starts_with("SIP/2.0 401 "), "{old}");
    e.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_from_our_domain_needs_proxy_authorization_as_its_from_user() {
    let e = env_auth(Mode::Redirect).await;
    e.locsvc
        .add_subscriber("alice", "example.com", "s3cret")
        .await;
    e.locsvc
        .save("sip:bob@example.com", &[("sip:bob@192.0.2.2:5060", 1.0)])
        .await;
    let (sock, me) = udp_socket().await;
    let invite = |cseq: u32, auth: Option<&str>| {
        let auth = auth.map_or(String::new(), |a| format!("Proxy-Authorization: {a}\r\n"));
        format!(
            "INVITE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK-i{cseq}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:alice@example.com>;tag=a1\r\nTo: <sip:bob@example.com>\r\n\
             Call-ID: call-a@test\r\nCSeq: {cseq} INVITE\r\n{auth}Content-Length: 0\r\n\r\n"
        )
    };
    let first = ask(&sock, e.shim.addr, &invite(1, None)).await;
    assert!(first.starts_with("SIP/2.0 407 "), "{first}");
    let nonce = param(header_values(&first, "Proxy-Authenticate")[0], "nonce").to_string();
    let ok = answer(
        Algorithm::Md5,
        "INVITE",
        "sip:bob@example.com",
        "alice",
        "example.com",
        "s3cret",
        &nonce,
        1,
    );
    let redirected = ask(&sock, e.shim.addr, &invite(2, Some(&ok))).await;
    assert!(redirected.starts_with("SIP/2.0 302 "), "{redirected}");
    // A call from a foreign domain into ours is not challenged.
    let foreign = invite(3, None).replace("sip:alice@example.com", "sip:eve@elsewhere.test");
    let answered = ask(&sock, e.shim.addr, &foreign).await;
    assert!(answered.starts_with("SIP/2.0 302 "), "{answered}");
    e.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sipp_registers_a_thousand_subscribers_with_digest() {
    let e = env_auth(Mode::Proxy).await;
    let users: Vec<(String, String)> = (0..1000)
        .map(|i| (format!("d{i:04}"), format!("pw-{i}")))
        .collect();
    for (u, p) in &users {
        e.locsvc.add_subscriber(u, "example.com", p).await;
    }
    let csv = e.dir.path().join("users.csv");
    let rows: Vec<String> = users
        .iter()
        .map(|(u, p)| format!("{u};[authentication username={u} password={p}]"))
        .collect();
    std::fs::write(&csv, format!("SEQUENTIAL\n{}\n", rows.join("\n"))).expect("csv");
    let (ok, log) = e
        .sipp(
            "register_auth.xml",
            &[
                "-inf",
                &csv.display().to_string(),
                "-m",
                "1000",
                "-r",
                "200",
            ],
        )
        .await;
    assert!(ok, "{log}");
    for (u, _) in users.iter().step_by(97) {
        assert_eq!(
            e.locsvc.lookup(&format!("sip:{u}@example.com")).await.len(),
            1,
            "{u}"
        );
    }
    // Wrong passwords: sipp sees another 401 instead of the 200, and
    // nothing is stored.
    let bad = e.dir.path().join("bad.csv");
    std::fs::write(
        &bad,
        "SEQUENTIAL\nwrong1;[authentication username=wrong1 password=nope]\n",
    )
    .expect("csv");
    e.locsvc
        .add_subscriber("wrong1", "example.com", "right")
        .await;
    let (ok, _) = e
        .sipp(
            "register_auth.xml",
            &["-inf", &bad.display().to_string(), "-m", "1"],
        )
        .await;
    assert!(!ok, "a wrong password must not register");
    assert!(e.locsvc.lookup("sip:wrong1@example.com").await.is_empty());
    e.finish().await;
}
