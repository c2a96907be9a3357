//! TLS between the shim and locsvc, with real sockets: a throwaway CA made
//! by `openssl` (a child process), an in-process locsvc serving TLS and
//! requiring a client certificate (embedded SQLite in a tempdir), an
//! in-process shim, and one REGISTER over UDP.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use locsvc_proto::v1::location_client::LocationClient;
use proxy_shim::app::{App as Shim, AppError};
use proxy_shim::settings::{AuthMode, Mode, Settings as ShimSettings};
use support::*;
use testkit::{Pki, TestApp, embedded_settings, init_tracing, lookup_contacts};
use tonic::transport::{ClientTlsConfig, Endpoint};

/// A throwaway CA in a tempdir, and a locsvc (embedded layout there)
/// serving TLS on 127.0.0.1 and admitting only clients with a certificate
/// from that CA.
async fn tls_locsvc() -> (tempfile::TempDir, Pki, TestApp) {
    init_tracing();
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::create(dir.path());
    let mut settings = embedded_settings(&dir.path().join("data"));
    settings.grpc.tls_cert = Some(pki.server_cert.clone());
    settings.grpc.tls_key = Some(pki.server_key.clone());
    settings.grpc.tls_client_ca = Some(pki.ca.clone());
    (dir, pki, TestApp::spawn(settings).await)
}

/// The valid contacts of `aor`, asked of `locsvc` over mTLS (not through
/// the shim).
async fn lookup(locsvc: &TestApp, pki: &Pki, aor: &str) -> Vec<String> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(pki.ca_certificate())
        .identity(pki.client_identity());
    let channel = Endpoint::from_shared(format!("https://{}", locsvc.addr))
        .expect("uri")
        .tls_config(tls)
        .expect("tls config")
        .connect()
        .await
        .expect("connect to locsvc over mTLS");
    lookup_contacts(&mut LocationClient::new(channel), aor).await
}

/// A shim without digest authentication pointed at `url`, with `tweak`
/// applied (the TLS settings). The budget is generous: the first REGISTER
/// pays for the handshake, on a loaded test machine too.
async fn shim(url: String, tweak: impl FnOnce(&mut ShimSettings)) -> RunningShim {
    RunningShim::start_with(vec![url], Mode::Proxy, |s| {
        s.auth = AuthMode::Off;
        s.locsvc_timeout = Duration::from_secs(3);
        tweak(s);
    })
    .await
}

/// Sends one REGISTER for `user` and returns the answer.
async fn register(shim: SocketAddr, user: &str) -> String {
    let (sock, me) = udp_socket().await;
    ask(
        &sock,
        shim,
        &register_msg(me, user, &format!("tls-{user}@test"), 1),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_reaches_locsvc_over_mutual_tls() {
    let (_dir, pki, locsvc) = tls_locsvc().await;
    let mut shim = shim(format!("https://{}", locsvc.addr), |s| {
        s.locsvc_ca = Some(pki.ca.clone());
        s.locsvc_cert = Some(pki.client_cert.clone());
        s.locsvc_key = Some(pki.client_key.clone());
    })
    .await;
    let answer = register(shim.addr, "alice").await;
    assert!(answer.starts_with("SIP/2.0 200 OK\r\n"), "{answer}");
    let contacts = lookup(&locsvc, &pki, "sip:alice@example.com").await;
    assert_eq!(contacts.len(), 1, "{contacts:?}");
    assert!(
        contacts[0].starts_with("sip:alice@127.0.0.1:"),
        "{contacts:?}"
    );
    shim.stop().await;
    locsvc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_client_certificate_a_locsvc_that_requires_one_is_a_503() {
    let (_dir, pki, locsvc) = tls_locsvc().await;
    let mut shim = shim(format!("https://{}", locsvc.addr), |s| {
        s.locsvc_ca = Some(pki.ca.clone());
    })
    .await;
    let answer = register(shim.addr, "bob").await;
    assert!(
        answer.starts_with("SIP/2.0 503 Service Unavailable\r\n"),
        "{answer}"
    );
    assert!(
        !header_values(&answer, "Retry-After").is_empty(),
        "{answer}"
    );
    assert!(
        lookup(&locsvc, &pki, "sip:bob@example.com")
            .await
            .is_empty(),
        "nothing was saved"
    );
    shim.stop().await;
    locsvc.stop().await;
}

/// `locsvc_ca` upgrades an http:// address to TLS, and the certificate is
/// verified against `locsvc_tls_domain` instead of the URL's host: the
/// name in the certificate passes, another name fails like an unreachable
/// locsvc.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ca_upgrades_http_and_the_tls_domain_is_what_is_verified() {
    let (_dir, pki, locsvc) = tls_locsvc().await;
    let with_domain = |domain: &str| {
        let (pki, domain) = (&pki, domain.to_string());
        move |s: &mut ShimSettings| {
            s.locsvc_ca = Some(pki.ca.clone());
            s.locsvc_cert = Some(pki.client_cert.clone());
            s.locsvc_key = Some(pki.client_key.clone());
            s.locsvc_tls_domain = Some(domain);
        }
    };
    let url = format!("http://{}", locsvc.addr);
    let mut good = shim(url.clone(), with_domain("localhost")).await;
    let answer = register(good.addr, "carol").await;
    assert!(answer.starts_with("SIP/2.0 200 OK\r\n"), "{answer}");
    let mut wrong = shim(url, with_domain("locsvc.example.org")).await;
    let answer = register(wrong.addr, "dave").await;
    assert!(
        answer.starts_with("SIP/2.0 503 Service Unavailable\r\n"),
        "{answer}"
    );
    assert_eq!(
        lookup(&locsvc, &pki, "sip:carol@example.com").await.len(),
        1
    );
    assert!(
        lookup(&locsvc, &pki, "sip:dave@example.com")
            .await
            .is_empty()
    );
    good.stop().await;
    wrong.stop().await;
    locsvc.stop().await;
}

/// Bad TLS settings stop the shim at start-up, naming the setting.
#[tokio::test]
async fn a_missing_tls_file_or_an_https_url_without_a_ca_stops_the_build() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("no-such-ca.pem");
    let settings = |tweak: &dyn Fn(&mut ShimSettings)| {
        let mut s = ShimSettings {
            listen: "127.0.0.1:0".parse().expect("addr"),
            domains: vec!["example.com".into()],
            metrics_listen: None,
            auth: AuthMode::Off,
            ..ShimSettings::default()
        };
        tweak(&mut s);
        s
    };
    let err = Shim::build(settings(&|s| s.locsvc_ca = Some(missing.clone())))
        .await
        .err()
        .expect("a missing CA file is refused");
    assert!(matches!(err, AppError::TlsFile(_)), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("locsvc_ca") && text.contains(&*missing.to_string_lossy()),
        "{text}"
    );
    let err = Shim::build(settings(&|s| s.locsvc = vec!["https://127.0.0.1:1".into()]))
        .await
        .err()
        .expect("https without a CA is refused");
    assert!(matches!(err, AppError::Settings(_)), "{err:?}");
    assert!(err.to_string().contains("locsvc_ca"), "{err}");
}
