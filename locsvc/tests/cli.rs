//! The `locsvc ul` commands, run as a real process against an in-process
//! server on the embedded SQLite layout: what a newcomer does first.

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
