//! The `locsvc.v1.Cluster` admin API: maintenance drains a member, `on`
//! re-admits it, and a resync makes it readable again without stale data.

use std::time::Duration;

use locsvc::domain::{Aor, KeyPolicy};
use locsvc::store::{LocationStore, LocdbUpdates};
use locsvc_proto::v1 as pb;
use locsvc_proto::v1::cluster_client::ClusterClient;

use crate::harness::*;

async fn wait_for(app: &TestApp, what: &str, f: impl Fn(&TestApp) -> bool) {
    eventually(what, Duration::from_secs(20), async || f(app)).await;
}

fn readable(app: &TestApp) -> usize {
    let g = app.service.router().topology().groups[&1].clone();
    app.service.router().readable_members(&g).len()
}

fn status_of(app: &TestApp, no: usize) -> locsvc::cluster::MemberStatus {
    app.service.router().topology().groups[&1].members[no - 1]
        .config
        .status
}

#[tokio::test]
async fn maintenance_drains_a_member_and_on_brings_it_back_after_a_resync() {
    let layout = Layout::create(Backend::Sqlite, &[Backend::Sqlite, Backend::Sqlite], 1).await;
    let mut settings = layout.settings();
    settings.failover.probe_interval = Duration::from_millis(100);
    let app = TestApp::spawn(settings).await;
    let mut c = app.client().await;
    let mut admin = ClusterClient::connect(format!("http://{}", app.addr))
        .await
        .unwrap();
    let key = |a: &str| Aor::parse(a, KeyPolicy::default()).unwrap();
    let m2 = open_store(&layout.members[0][1], true);

    c.save(register(
        "sip:a@example.com",
        "sip:a@192.0.2.1",
        Some(600),
        "a",
        1,
    ))
    .await
    .unwrap();
    admin
        .set_status(pb::SetStatusRequest {
            group: 1,
            no: 2,
            status: pb::MemberStatus::Maintenance as i32,
            force: false,
        })
        .await
        .unwrap();
    wait_for(&app, "member 2 in maintenance", |a| {
        status_of(a, 2) == locsvc::cluster::MemberStatus::Maintenance
    })
    .await;
    let list = admin
        .list_groups(pb::ListGroupsRequest {})
        .await
        .unwrap()
        .into_inner();
    let info = list.members.iter().find(|m| m.no == 2).unwrap();
    assert_eq!(info.status(), pb::MemberStatus::Maintenance);
    assert!(!info.readable);

    // Drained: no writes reach it.
    c.save(register(
        "sip:b@example.com",
        "sip:b@192.0.2.2",
        Some(600),
        "b",
        1,
    ))
    .await
    .unwrap();
    c.remove(pb::RemoveRequest {
        table: String::new(),
        aor: "sip:a@example.com".into(),
        contact: String::new(),
        ..Default::default()
    })
    .await
    .unwrap();
    assert!(
        m2.load_aor("location", &key("sip:b@example.com"))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        m2.load_aor("location", &key("sip:a@example.com"))
            .await
            .unwrap()
            .len(),
        1
    );

    admin
        .set_status(pb::SetStatusRequest {
            group: 1,
            no: 2,
            status: pb::MemberStatus::On as i32,
            force: false,
        })
        .await
        .unwrap();
    wait_for(&app, "member 2 resynced and read again", |a| {
        status_of(a, 2) == locsvc::cluster::MemberStatus::On && readable(a) == 2
    })
    .await;
    assert_eq!(
        m2.load_aor("location", &key("sip:b@example.com"))
            .await
            .unwrap()
            .len(),
        1,
        "copied"
    );
    assert!(
        m2.load_aor("location", &key("sip:a@example.com"))
            .await
            .unwrap()
            .is_empty(),
        "pruned"
    );
    let rows = layout.master().load_locdb().await.unwrap();
    assert_eq!(rows.iter().find(|r| r.no == 2).unwrap().status, 1);
    let list = admin
        .list_groups(pb::ListGroupsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(list.members.iter().all(|m| m.readable && m.last_probe_ok));

    let e = admin
        .set_status(pb::SetStatusRequest {
            group: 9,
            no: 9,
            status: pb::MemberStatus::On as i32,
            force: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    let e = admin
        .set_status(pb::SetStatusRequest {
            group: 1,
            no: 2,
            status: 0,
            force: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    app.stop().await;
}

#[tokio::test]
async fn a_group_with_no_complete_member_is_merged_and_read_again() {
    let layout = Layout::create(Backend::Sqlite, &[Backend::Sqlite, Backend::Sqlite], 1).await;
    let mut settings = layout.settings();
    settings.failover.probe_interval = Duration::from_millis(100);
    let app = TestApp::spawn(settings).await;
    let mut c = app.client().await;
    c.save(register(
        "sip:x@example.com",
        "sip:x@192.0.2.1",
        Some(600),
        "x",
        1,
    ))
    .await
    .unwrap();
    // A double fault: each member holds a binding the other lacks, and both
    // have a recorded miss.
    let now = chrono::Utc::now().timestamp();
    for (no, user) in [(0usize, "only1"), (1, "only2")] {
        let s = open_store(&layout.members[0][no], true);
        let aor = Aor::parse(&format!("sip:{user}@example.com"), KeyPolicy::default()).unwrap();
        let b = vec![locsvc::domain::Binding {
            call_id: user.into(),
            ..binding(
                &format!("r-{user}"),
                &format!("sip:{user}@192.0.2.9"),
                now + 600,
                now - 10,
            )
        }];
        s.apply("location", &aor, &b, &[]).await.unwrap();
    }
    let master = layout.master();
    for no in 1..=2u32 {
        master.mark_failover(1, no, now).await.unwrap();
    }
    wait_for(&app, "the merge made both members readable", |a| {
        readable(a) == 2
            && a.metrics
                .failover_actions
                .with_label_values(&["merge", "done"])
                .get()
                == 1
    })
    .await;
    for user in ["x", "only1", "only2"] {
        let aor = format!("sip:{user}@example.com");
        assert_eq!(lookup_contacts(&mut c, &aor).await.len(), 1, "{aor}");
    }
    // What an operator sees: each member took the other's rows, no resync
    // runs any more, and both are reported readable at the next probe.
    let r = &app.metrics.resync;
    for no in ["1", "2"] {
        assert!(
            r.rows.with_label_values(&["1", no]).get() >= 2,
            "member {no}"
        );
        assert_eq!(r.active.with_label_values(&["1", no]).get(), 0);
        assert!(r.last_progress.with_label_values(&["1", no]).get() >= now);
    }
    wait_for(&app, "both members reported readable", |a| {
        ["1", "2"].iter().all(|no| {
            a.metrics
                .member_readable
                .with_label_values(&["1", no])
                .get()
                == 1
        })
    })
    .await;
    app.stop().await;
}

#[tokio::test]
async fn set_status_keeps_the_last_readable_member_unless_forced() {
    let layout = Layout::create(Backend::Sqlite, &[Backend::Sqlite, Backend::Sqlite], 1).await;
    let app = TestApp::spawn(layout.settings()).await;
    let mut admin = ClusterClient::connect(format!("http://{}", app.addr))
        .await
        .unwrap();
    let set = |no: u32, status: pb::MemberStatus, force: bool| pb::SetStatusRequest {
        group: 1,
        no,
        status: status as i32,
        force,
    };
    admin
        .set_status(set(2, pb::MemberStatus::Maintenance, false))
        .await
        .expect("member 1 stays readable");
    wait_for(&app, "member 2 in maintenance", |a| {
        status_of(a, 2) == locsvc::cluster::MemberStatus::Maintenance && readable(a) == 1
    })
    .await;
    for status in [pb::MemberStatus::Off, pb::MemberStatus::Maintenance] {
        let e = admin.set_status(set(1, status, false)).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);
        let info = tonic_types::StatusExt::get_details_error_info(&e).unwrap();
        assert_eq!(info.reason, "LAST_READABLE_MEMBER");
        assert_eq!(info.metadata["group"], "1");
    }
    let rows = layout.master().load_locdb().await.unwrap();
    assert_eq!(
        rows.iter().find(|r| r.no == 1).unwrap().status,
        1,
        "unchanged"
    );
    // Setting it on again is always allowed; force takes it out anyway.
    admin
        .set_status(set(1, pb::MemberStatus::On, false))
        .await
        .unwrap();
    admin
        .set_status(set(1, pb::MemberStatus::Maintenance, true))
        .await
        .expect("forced");
    let rows = layout.master().load_locdb().await.unwrap();
    assert_eq!(rows.iter().find(|r| r.no == 1).unwrap().status, 2);
    app.stop().await;
}
