//! TLS between the shim and locsvc, with real sockets: a throwaway CA made
//! by `openssl` (a child process), an in-process locsvc serving TLS and
//! requiring a client certificate (embedded SQLite in a tempdir), an
//! in-process shim, and one REGISTER over UDP.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use locsvc_proto::v1::LookupRequest;
use locsvc_proto::v1::location_client::LocationClient;
use proxy_shim::app::{App as Shim, AppError};
use proxy_shim::settings::{AuthMode, Mode, Settings as ShimSettings};
use support::*;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

fn openssl(args: &[&str]) {
    let st = std::process::Command::new("openssl")
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl runs (the TLS tests need the openssl command)");
    assert!(st.success(), "openssl {args:?}");
}

/// A throwaway CA, a server certificate for 127.0.0.1 and localhost, and a
/// client certificate, all PEM files in one directory.
struct Pki {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

fn make_pki(dir: &Path) -> Pki {
    let p = |f: &str| dir.join(f).to_str().expect("utf-8 path").to_string();
    let (ca, ca_key) = (p("ca.pem"), p("ca.key"));
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=proxy-shim test CA",
        "-keyout",
        &ca_key,
        "-out",
        &ca,
    ]);
    for (name, ext) in [
        (
            "server",
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        ),
        (
            "client",
            "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
        ),
    ] {
        std::fs::write(p(&format!("{name}.ext")), ext).expect("write ext");
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
            &p(&format!("{name}.key")),
            "-out",
            &p(&format!("{name}.csr")),
        ]);
        openssl(&[
            "x509",
            "-req",
            "-in",
            &p(&format!("{name}.csr")),
            "-CA",
            &ca,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            &p(&format!("{name}.ext")),
            "-out",
            &p(&format!("{name}.pem")),
        ]);
    }
    Pki {
        ca: ca.into(),
        server_cert: p("server.pem").into(),
        server_key: p("server.key").into(),
        client_cert: p("client.pem").into(),
        client_key: p("client.key").into(),
    }
}

/// An in-process locsvc serving TLS on 127.0.0.1 and admitting only
/// clients with a certificate from the test CA.
struct TlsLocsvc {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TlsLocsvc {
    async fn start(data_dir: &Path, pki: &Pki) -> Self {
        let mut settings = locsvc::settings::Settings {
            data_dir: data_dir.to_path_buf(),
            metrics_listen: None,
            ..locsvc::settings::Settings::default()
        };
        settings.grpc.listen = "127.0.0.1:0".parse().expect("addr");
        settings.grpc.tls_cert = Some(pki.server_cert.clone());
        settings.grpc.tls_key = Some(pki.server_key.clone());
        settings.grpc.tls_client_ca = Some(pki.ca.clone());
        let app = locsvc::app::App::build(settings)
            .await
            .expect("locsvc builds");
        let addr = app.grpc_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            app.run(async move {
                let _ = stopped.await;
            })
            .await
            .expect("locsvc runs");
        });
        Self {
            addr,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// The valid contacts of `aor`, asked over mTLS (not through the shim).
    async fn lookup(&self, pki: &Pki, aor: &str) -> Vec<String> {
        let read = |p: &Path| std::fs::read(p).expect("read PEM");
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read(&pki.ca)))
            .identity(Identity::from_pem(
                read(&pki.client_cert),
                read(&pki.client_key),
            ));
        let channel = Endpoint::from_shared(format!("https://{}", self.addr))
            .expect("uri")
            .tls_config(tls)
            .expect("tls config")
            .connect()
            .await
            .expect("connect to locsvc over mTLS");
        LocationClient::new(channel)
            .lookup(LookupRequest {
                table: String::new(),
                aor: aor.into(),
            })
            .await
            .expect("lookup")
            .into_inner()
            .bindings
            .into_iter()
            .map(|b| b.contact)
            .collect()
    }

    async fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.expect("locsvc stops cleanly");
        }
    }
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
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
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let me = sock.local_addr().expect("addr");
    let msg = register_msg(me, user, &format!("tls-{user}@test"), 1);
    sock.send_to(msg.as_bytes(), shim).await.expect("send");
    recv_text(&sock, Duration::from_secs(10)).await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_reaches_locsvc_over_mutual_tls() {
    init_tracing();
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = make_pki(dir.path());
    let mut locsvc = TlsLocsvc::start(&dir.path().join("data"), &pki).await;
    let mut shim = shim(format!("https://{}", locsvc.addr), |s| {
        s.locsvc_ca = Some(pki.ca.clone());
        s.locsvc_cert = Some(pki.client_cert.clone());
        s.locsvc_key = Some(pki.client_key.clone());
    })
    .await;
    let answer = register(shim.addr, "alice").await;
    assert!(answer.starts_with("SIP/2.0 200 OK\r\n"), "{answer}");
    let contacts = locsvc.lookup(&pki, "sip:alice@example.com").await;
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
    init_tracing();
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = make_pki(dir.path());
    let mut locsvc = TlsLocsvc::start(&dir.path().join("data"), &pki).await;
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
        locsvc.lookup(&pki, "sip:bob@example.com").await.is_empty(),
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
    init_tracing();
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = make_pki(dir.path());
    let mut locsvc = TlsLocsvc::start(&dir.path().join("data"), &pki).await;
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
    assert_eq!(locsvc.lookup(&pki, "sip:carol@example.com").await.len(), 1);
    assert!(locsvc.lookup(&pki, "sip:dave@example.com").await.is_empty());
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
