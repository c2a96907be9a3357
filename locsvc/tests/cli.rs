//! The `locsvc ul`, `groups` and `subscriber` commands, run as a real
//! process against an in-process server on the embedded SQLite layout: what
//! a newcomer does first.

use std::path::Path;
use std::time::Duration;

use locsvc::settings::Settings;
use testkit::{Pki, TestApp, embedded_settings, eventually_every};

/// The `locsvc` binary with `args`, no token from the environment.
fn locsvc_command(args: &[&str]) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_locsvc"));
    c.args(args)
        .env_remove("LOCSVC_TOKEN")
        .env_remove("LOCSVC_ADMIN_TOKEN");
    c
}

/// Runs `locsvc ARGS…`: (success, stdout, stderr).
async fn locsvc(args: &[&str]) -> (bool, String, String) {
    let out = locsvc_command(args).output().await.expect("locsvc runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `locsvc <command> ARGS… TAIL…`.
async fn command(command: &str, args: &[&str], tail: &[&str]) -> (bool, String, String) {
    locsvc(&[&[command], args, tail].concat()).await
}

/// `locsvc ul ARGS… --server SERVER`.
async fn ul(server: &str, args: &[&str]) -> (bool, String, String) {
    command("ul", args, &["--server", server]).await
}

/// Serves the embedded layout in `dir` with `edit` applied.
async fn serve(dir: &Path, edit: impl FnOnce(&mut Settings)) -> TestApp {
    let mut settings = embedded_settings(&dir.join("data"));
    edit(&mut settings);
    TestApp::spawn(settings).await
}

#[tokio::test]
async fn ul_save_and_show_round_trip_a_contact() {
    let dir = tempfile::tempdir().unwrap();
    let app = serve(dir.path(), |_| {}).await;
    let server = app.url();

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

    // By record id (Kamailio's ruid): another id shows nothing, the
    // binding's own removes it.
    let ruid = v["bindings"][0]["ruid"].as_str().unwrap().to_string();
    let none = ul(
        &server,
        &["show", "sip:ivan@example.com", "--ruid", "nosuch", "--json"],
    )
    .await;
    assert!(none.0, "{none:?}");
    assert!(none.1.contains("\"bindings\":[]"), "{none:?}");
    let removed = ul(
        &server,
        &["rm", "sip:ivan@example.com", "--ruid", &ruid, "--json"],
    )
    .await;
    assert!(removed.0, "{removed:?}");
    assert!(removed.1.contains("\"removed\":1"), "{removed:?}");

    let bad = ul(&server, &["save", "", "sip:x@y"]).await;
    assert!(!bad.0);
    assert!(
        bad.2.contains("InvalidArgument") && bad.2.contains("aor"),
        "{bad:?}"
    );

    app.stop().await;
}

/// `locsvc ul show AOR | grep -q X`: grep may exit on its match before the
/// command's last line is written; the command must then end quietly with
/// status 0, not panic (under `pipefail` a script's check failed).
#[tokio::test]
async fn ul_show_into_a_closed_pipe_ends_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let app = serve(dir.path(), |_| {}).await;
    let server = app.url();
    let saved = ul(
        &server,
        &["save", "sip:gone@example.com", "sip:gone@192.0.2.9"],
    )
    .await;
    assert!(saved.0, "{saved:?}");

    // The reader is closed before the command writes anything.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = locsvc_command(&["ul", "show", "sip:gone@example.com", "--server", &server])
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        // `output()` would replace the closed pipe with one of its own.
        .spawn()
        .expect("locsvc runs")
        .wait_with_output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    assert!(stderr.is_empty(), "{stderr}");

    app.stop().await;
}

#[tokio::test]
async fn subscriber_commands_manage_credentials_with_the_admin_token() {
    let dir = tempfile::tempdir().unwrap();
    let app = serve(dir.path(), |s| {
        s.grpc.token = Some("d4ta".into());
        s.grpc.admin_token = Some("adm1n".into());
    })
    .await;
    let server = app.url();
    let admin = ["--server", server.as_str(), "--admin-token", "adm1n"];
    let run_admin = async |args: &[&str]| command("subscriber", args, &admin).await;

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

    app.stop().await;
}

#[tokio::test]
async fn groups_set_status_needs_force_for_the_last_readable_member() {
    let dir = tempfile::tempdir().unwrap();
    let app = serve(dir.path(), |_| {}).await;
    let server = app.url();
    let groups = async |args: &[&str]| command("groups", args, &["--server", &server]).await;
    let first = groups(&["set-status", "1", "2", "maintenance"]).await;
    assert!(first.0, "{first:?}");
    // The change is applied by a reload this instance starts at once.
    // Every poll spawns a locsvc process: ask ten times a second, not 100.
    eventually_every(
        "member 1/2 listed in maintenance, not readable",
        Duration::from_secs(20),
        Duration::from_millis(100),
        async || {
            let listed = groups(&["list", "--json"]).await;
            let v: serde_json::Value = serde_json::from_str(listed.1.trim()).unwrap();
            let m = v["members"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["group"] == 1 && m["no"] == 2)
                .cloned()
                .unwrap();
            m["status"] == "maintenance" && m["readable"] == false
        },
    )
    .await;
    let refused = groups(&["set-status", "1", "1", "off"]).await;
    assert!(
        !refused.0
            && refused.2.contains("FailedPrecondition")
            && refused.2.contains("last readable member"),
        "{refused:?}"
    );
    let forced = groups(&["set-status", "1", "1", "off", "--force"]).await;
    assert!(forced.0, "{forced:?}");
    app.stop().await;
}

/// The layout of `groups list --json`.
async fn layout(server: &str) -> serde_json::Value {
    let listed = command("groups", &["list", "--json"], &["--server", server]).await;
    assert!(listed.0, "{listed:?}");
    let v: serde_json::Value = serde_json::from_str(listed.1.trim()).unwrap();
    v["layout"].clone()
}

/// Subscribers per group from `ul stats --json`.
async fn aors_per_group(server: &str) -> std::collections::BTreeMap<u64, u64> {
    let stats = ul(server, &["stats", "--json"]).await;
    assert!(stats.0, "{stats:?}");
    let v: serde_json::Value = serde_json::from_str(stats.1.trim()).unwrap();
    v["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| (g["group"].as_u64().unwrap(), g["aors"].as_u64().unwrap()))
        .collect()
}

/// Waits until `groups list` shows epoch `epoch` done.
async fn layout_done(server: &str, epoch: u64) {
    eventually_every(
        "the layout change done",
        Duration::from_secs(60),
        Duration::from_millis(200),
        async || {
            let l = layout(server).await;
            l["epoch"] == epoch && l["phase"] == "done"
        },
    )
    .await;
}

#[tokio::test]
async fn groups_add_and_drain_move_subscribers_and_the_last_group_cannot_drain() {
    let dir = tempfile::tempdir().unwrap();
    let app = serve(dir.path(), |s| {
        s.cluster.poll_interval = Duration::from_millis(100);
    })
    .await;
    let server = app.url();
    let groups = async |args: &[&str]| command("groups", args, &["--server", &server]).await;
    let aors: Vec<String> = (0..30)
        .map(|i| format!("sip:mover{i}@example.com"))
        .collect();
    for (i, aor) in aors.iter().enumerate() {
        let contact = format!("sip:mover{i}@192.0.2.{}:5060", i + 1);
        let saved = ul(&server, &["save", aor, &contact, "--expires", "900"]).await;
        assert!(saved.0, "{saved:?}");
    }
    assert_eq!(layout(&server).await["owners"], serde_json::json!([1, 2]));

    let url = |m: u32| {
        format!(
            "sqlite://{}/group3-member{m}.db",
            dir.path().join("data").display()
        )
    };
    let added = groups(&["add", "3", &url(1), &url(2)]).await;
    assert!(added.0 && added.1.contains("group 3 added"), "{added:?}");
    layout_done(&server, 2).await;
    let l = layout(&server).await;
    assert_eq!(l["owners"], serde_json::json!([1, 2, 3]), "{l}");
    let per_group = aors_per_group(&server).await;
    assert_eq!(per_group.values().sum::<u64>(), 30, "{per_group:?}");
    assert!(per_group[&3] > 0, "group 3 took its share: {per_group:?}");

    let drained = groups(&["drain", "1"]).await;
    assert!(
        drained.0 && drained.1.contains("marked leaving"),
        "{drained:?}"
    );
    layout_done(&server, 3).await;
    let per_group = aors_per_group(&server).await;
    assert_eq!(per_group.get(&1).copied().unwrap_or(0), 0, "{per_group:?}");
    assert_eq!(per_group.values().sum::<u64>(), 30, "{per_group:?}");
    for (i, aor) in aors.iter().enumerate() {
        let shown = ul(&server, &["show", aor, "--json"]).await;
        assert!(shown.0, "{shown:?}");
        let v: serde_json::Value = serde_json::from_str(shown.1.trim()).unwrap();
        assert_eq!(
            v["bindings"][0]["contact"],
            format!("sip:mover{i}@192.0.2.{}:5060", i + 1),
            "{aor} after the moves: {v}"
        );
    }

    // Group 1 is leaving: of 2 and 3, one may drain, the other is the
    // last that could own anybody.
    let second = groups(&["drain", "2"]).await;
    assert!(second.0, "{second:?}");
    let last = groups(&["drain", "3"]).await;
    assert!(
        !last.0 && last.2.contains("FailedPrecondition") && last.2.contains("last group"),
        "{last:?}"
    );
    let undone = groups(&["drain", "2", "--undo"]).await;
    assert!(
        undone.0 && undone.1.contains("no longer leaving"),
        "{undone:?}"
    );
    let unknown = groups(&["drain", "9"]).await;
    assert!(!unknown.0 && unknown.2.contains("NotFound"), "{unknown:?}");
    app.stop().await;
}

#[tokio::test]
async fn client_tls_options_reach_a_server_that_requires_client_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(dir.path());
    let app = serve(dir.path(), |s| {
        s.grpc.tls_cert = Some(pki.server_cert.clone());
        s.grpc.tls_key = Some(pki.server_key.clone());
        s.grpc.tls_client_ca = Some(pki.ca.clone());
    })
    .await;
    // --ca turns the default http:// into https://.
    let server = app.url();
    let path = |p: &Path| p.to_str().unwrap().to_string();
    let (ca, cert, key) = (path(&pki.ca), path(&pki.client_cert), path(&pki.client_key));
    let show =
        async |tls: &[&str]| ul(&server, &[&["show", "sip:tls@example.com"], tls].concat()).await;
    let with_cert = show(&["--ca", &ca, "--cert", &cert, "--key", &key]).await;
    assert!(with_cert.0, "{with_cert:?}");
    assert!(with_cert.1.contains("no valid bindings"), "{with_cert:?}");
    let without = show(&["--ca", &ca]).await;
    assert!(!without.0, "{without:?}");
    let plain = show(&[]).await;
    assert!(!plain.0, "{plain:?}");
    app.stop().await;
}

#[tokio::test]
async fn config_defaults_prints_every_setting_as_a_file_locsvc_reads() {
    let (ok, out, err) = locsvc(&["config", "defaults"]).await;
    assert!(ok, "{err}");
    assert_eq!(out, locsvc::defaults::toml());
    assert!(
        out.contains("[cluster]\npoll_interval_ms = 2000  # "),
        "{out}"
    );
}
