//! The `locsvc ul`, `groups` and `subscriber` commands, run as a real
//! process against an in-process server on the embedded SQLite layout: what
//! a newcomer does first.

use locsvc::app::App;
use locsvc::settings::Settings;

async fn ul(server: &str, args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_locsvc"))
        .arg("ul")
        .args(args)
        .args(["--server", server])
        .output()
        .await
        .expect("locsvc runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn ul_save_and_show_round_trip_a_contact() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = Settings {
        data_dir: dir.path().join("data"),
        metrics_listen: None,
        ..Settings::default()
    };
    settings.grpc.listen = "127.0.0.1:0".parse().unwrap();
    let app = App::build(settings).await.unwrap();
    let server = format!("http://{}", app.grpc_addr());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(app.run(async move {
        let _ = stopped.await;
    }));

    let saved = ul(
        &server,
        &[
            "save",
            "sip:ivan@example.com",
            "sip:ivan@192.0.2.9:5060",
            "--expires",
            "900",
            "--q",
            "0.7",
        ],
    )
    .await;
    assert!(saved.0, "{saved:?}");
    assert!(
        saved
            .1
            .contains("<sip:ivan@192.0.2.9:5060>;expires=900;q=0.70"),
        "{saved:?}"
    );

    let shown = ul(&server, &["show", "sip:ivan@example.com", "--json"]).await;
    assert!(shown.0, "{shown:?}");
    let v: serde_json::Value = serde_json::from_str(shown.1.trim()).unwrap();
    assert_eq!(v["bindings"][0]["contact"], "sip:ivan@192.0.2.9:5060");
    assert!(v["bindings"][0]["expires_in"].as_i64().unwrap() > 890);

    let removed = ul(&server, &["rm", "sip:ivan@example.com", "--json"]).await;
    assert!(removed.0, "{removed:?}");
    assert!(removed.1.contains("\"removed\":1"), "{removed:?}");

    let bad = ul(&server, &["save", "", "sip:x@y"]).await;
    assert!(!bad.0);
    assert!(
        bad.2.contains("InvalidArgument") && bad.2.contains("aor"),
        "{bad:?}"
    );

    let _ = stop.send(());
    run.await.unwrap().unwrap();
}

async fn locsvc(args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_locsvc"))
        .args(args)
        .env_remove("LOCSVC_TOKEN")
        .env_remove("LOCSVC_ADMIN_TOKEN")
        .output()
        .await
        .expect("locsvc runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Serves the embedded layout in `dir` with `edit` applied; returns the
/// address and a stop handle.
async fn serve(
    dir: &std::path::Path,
    edit: impl FnOnce(&mut Settings),
) -> (
    std::net::SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), locsvc::app::AppError>>,
) {
    let mut settings = Settings {
        data_dir: dir.join("data"),
        metrics_listen: None,
        ..Settings::default()
    };
    settings.grpc.listen = "127.0.0.1:0".parse().unwrap();
    edit(&mut settings);
    let app = App::build(settings).await.unwrap();
    let addr = app.grpc_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(app.run(async move {
        let _ = stopped.await;
    }));
    (addr, stop, run)
}

#[tokio::test]
async fn subscriber_commands_manage_credentials_with_the_admin_token() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, stop, run) = serve(dir.path(), |s| {
        s.grpc.token = Some("d4ta".into());
        s.grpc.admin_token = Some("adm1n".into());
    })
    .await;
    let server = format!("http://{addr}");
    let admin = ["--server", server.as_str(), "--admin-token", "adm1n"];
    let run_admin = |args: &[&str]| {
        let all: Vec<String> = ["subscriber"]
            .iter()
            .chain(args)
            .chain(&admin)
            .map(|a| a.to_string())
            .collect();
        async move { locsvc(&all.iter().map(String::as_str).collect::<Vec<_>>()).await }
    };

    let added = run_admin(&["add", "sip:alice@example.com", "secret"]).await;
    assert!(added.0, "{added:?}");
    assert!(added.1.contains("alice@example.com added"), "{added:?}");
    let again = run_admin(&["add", "alice@example.com", "other"]).await;
    assert!(!again.0 && again.2.contains("AlreadyExists"), "{again:?}");
    assert!(run_admin(&["add", "bob@example.org", "pw"]).await.0);

    // The data-plane token administers nothing.
    let denied = locsvc(&[
        "subscriber",
        "add",
        "eve@example.com",
        "pw",
        "--server",
        &server,
        "--token",
        "d4ta",
    ])
    .await;
    assert!(
        !denied.0 && denied.2.contains("PermissionDenied"),
        "{denied:?}"
    );

    let listed = run_admin(&["list", "--json"]).await;
    assert!(listed.0, "{listed:?}");
    let v: serde_json::Value = serde_json::from_str(listed.1.trim()).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2, "{v}");
    assert_eq!(v[0]["username"], "alice");
    assert_eq!(v[0]["has_password"], true);
    let one = run_admin(&["list", "--domain", "example.org"]).await;
    assert!(one.0 && one.1.contains("bob@example.org") && !one.1.contains("alice"));

    let passwd = run_admin(&["passwd", "sip:alice@example.com", "n3w"]).await;
    assert!(passwd.0, "{passwd:?}");
    let missing = run_admin(&["passwd", "sip:nobody@example.com", "n3w"]).await;
    assert!(!missing.0 && missing.2.contains("NotFound"), "{missing:?}");
    let bad = run_admin(&["add", "no-domain", "pw"]).await;
    assert!(!bad.0 && bad.2.contains("aor"), "{bad:?}");

    let removed = run_admin(&["rm", "sip:alice@example.com", "--json"]).await;
    assert!(
        removed.0 && removed.1.contains("\"removed\":true"),
        "{removed:?}"
    );
    let listed = run_admin(&["list", "--json"]).await;
    assert!(!listed.1.contains("alice"), "{listed:?}");

    let _ = stop.send(());
    run.await.unwrap().unwrap();
}

#[tokio::test]
async fn groups_set_status_needs_force_for_the_last_readable_member() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, stop, run) = serve(dir.path(), |_| {}).await;
    let server = format!("http://{addr}");
    let groups = |args: &[&str]| {
        let all: Vec<String> = ["groups"]
            .iter()
            .chain(args)
            .chain(&["--server", server.as_str()])
            .map(|a| a.to_string())
            .collect();
        async move { locsvc(&all.iter().map(String::as_str).collect::<Vec<_>>()).await }
    };
    let first = groups(&["set-status", "1", "2", "maintenance"]).await;
    assert!(first.0, "{first:?}");
    // The change is applied by a reload this instance starts at once.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let listed = groups(&["list", "--json"]).await;
        let v: serde_json::Value = serde_json::from_str(listed.1.trim()).unwrap();
        let m = v["members"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["group"] == 1 && m["no"] == 2)
            .cloned()
            .unwrap();
        if m["status"] == "maintenance" && m["readable"] == false {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{v}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let refused = groups(&["set-status", "1", "1", "off"]).await;
    assert!(
        !refused.0
            && refused.2.contains("FailedPrecondition")
            && refused.2.contains("last readable member"),
        "{refused:?}"
    );
    let forced = groups(&["set-status", "1", "1", "off", "--force"]).await;
    assert!(forced.0, "{forced:?}");
    let _ = stop.send(());
    run.await.unwrap().unwrap();
}

fn openssl(args: &[&str]) {
    let st = std::process::Command::new("openssl")
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl runs");
    assert!(st.success(), "openssl {args:?}");
}

#[tokio::test]
async fn client_tls_options_reach_a_server_that_requires_client_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let p = |f: &str| dir.path().join(f).to_str().unwrap().to_string();
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
        "/CN=test CA",
        "-keyout",
        &ca_key,
        "-out",
        &ca,
    ]);
    for (name, ext) in [
        (
            "server",
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
        ),
        ("client", "extendedKeyUsage=clientAuth\n"),
    ] {
        std::fs::write(p(&format!("{name}.ext")), ext).unwrap();
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
    let (addr, stop, run) = serve(dir.path(), |s| {
        s.grpc.tls_cert = Some(p("server.pem").into());
        s.grpc.tls_key = Some(p("server.key").into());
        s.grpc.tls_client_ca = Some(ca.clone().into());
    })
    .await;
    // --ca turns the default http:// into https://.
    let server = format!("http://{addr}");
    let (cert, key) = (p("client.pem"), p("client.key"));
    let with_cert = locsvc(&[
        "ul",
        "show",
        "sip:tls@example.com",
        "--server",
        &server,
        "--ca",
        &ca,
        "--cert",
        &cert,
        "--key",
        &key,
    ])
    .await;
    assert!(with_cert.0, "{with_cert:?}");
    assert!(with_cert.1.contains("no valid bindings"), "{with_cert:?}");
    let without = locsvc(&[
        "ul",
        "show",
        "sip:tls@example.com",
        "--server",
        &server,
        "--ca",
        &ca,
    ])
    .await;
    assert!(!without.0, "{without:?}");
    let plain = locsvc(&["ul", "show", "sip:tls@example.com", "--server", &server]).await;
    assert!(!plain.0, "{plain:?}");
    let _ = stop.send(());
    run.await.unwrap().unwrap();
}
