//! Layout epochs in `locsvc_layout` (docs/layout-changes.md): the first
//! instance records the groups that own AoRs; a change of groups in `locdb`
//! starts one new epoch (however many instances see it), which advances a
//! phase only once every live instance serves the current one.

use std::time::Duration;

use locsvc::store::{LayoutRow, LocationStore, SqlStore};

use crate::harness::*;

async fn layout_is(master: &SqlStore, what: &str, f: impl Fn(&LayoutRow) -> bool) {
    eventually(
        what,
        Duration::from_secs(30),
        async || matches!(master.current_layout().await, Ok(Some(r)) if f(&r)),
    )
    .await;
}

/// An instance on `layout`, once the first epoch is recorded done; and
/// the master.
async fn first_epoch_done(
    layout: &Layout,
    settings: locsvc::settings::Settings,
) -> (TestApp, SqlStore) {
    let a = TestApp::spawn(settings).await;
    let master = layout.master();
    layout_is(&master, "epoch 1 done", |r| (r.epoch, r.phase) == (1, 2)).await;
    (a, master)
}

/// `layout`'s settings, with a layout phase counted as served 300 ms after
/// it was seen (one request deadline).
fn quick_settings(layout: &Layout) -> locsvc::settings::Settings {
    let mut s = layout.settings();
    s.grpc.request_timeout = Duration::from_millis(300);
    s
}

/// The contact `sip:{prefix}{i}@example.com` is registered with.
fn contact_of(prefix: &str, i: usize) -> String {
    format!("sip:{prefix}{i}@192.0.2.1")
}

/// Registers `sip:{prefix}{i}@example.com` for every `i < n`.
async fn register_all(
    c: &mut locsvc_proto::v1::location_client::LocationClient<tonic::transport::Channel>,
    prefix: &str,
    n: usize,
) {
    for i in 0..n {
        let aor = format!("sip:{prefix}{i}@example.com");
        c.save(register(&aor, &contact_of(prefix, i), Some(3600), "cid", 1))
            .await
            .unwrap();
    }
}

/// Adds group `id` (two fresh members on `backend`) to `layout`'s `locdb`;
/// returns their URLs.
async fn add_group(layout: &Layout, id: i64, backend: Backend) -> Vec<String> {
    let master = layout.master();
    let mut urls = Vec::new();
    for no in 1..=2 {
        let url = fresh_db(backend, layout.dir.path()).await;
        let s = open_store(&url, true);
        s.migrate(locsvc::store::migrate::Scope::Table("location"))
            .await
            .unwrap();
        s.close().await;
        master.insert_locdb(&locdb_row(id, no, &url)).await.unwrap();
        urls.push(url);
    }
    urls
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_group_starts_one_epoch_that_advances_once_every_instance_serves_it() {
    let layout = Layout::create(
        Backend::Postgres,
        &[Backend::MariaDb1, Backend::MariaDb2],
        2,
    )
    .await;
    let mut settings = layout.settings();
    // A phase counts as served one request deadline after it was seen.
    settings.grpc.request_timeout = Duration::from_millis(300);
    let a = TestApp::spawn(settings.clone()).await;
    let master = layout.master();
    layout_is(&master, "epoch 1: groups 1 and 2, done", |r| {
        (r.epoch, r.owners.as_str(), r.phase) == (1, "1,2", 2)
    })
    .await;
    let b = TestApp::spawn(settings).await;

    add_group(&layout, 3, Backend::MariaDb2).await;
    layout_is(
        &master,
        "epoch 2: groups 1 to 3, every instance served moving (or done already)",
        |r| {
            (r.epoch, r.owners.as_str()) == (2, "1,2,3")
                && (r.phase == 2 || (r.phase == 1 && r.moving_acked))
        },
    )
    .await;
    // Both instances saw the change; one started the epoch.
    assert_eq!(
        master.layout_owners(3).await.unwrap(),
        None,
        "one new epoch"
    );
    let rows = master.instances().await.unwrap();
    assert_eq!(rows.len(), 2);
    assert!(
        rows.iter().all(|i| i.epoch == 2 && i.phase >= 1),
        "each reports what it serves: {rows:?}"
    );
    for app in [&a, &b] {
        assert_eq!(app.metrics.layout_epoch.get(), 2);
    }
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_instance_holds_the_phase_back() {
    let layout = Layout::create(
        Backend::MariaDb1,
        &[Backend::MariaDb1, Backend::MariaDb2],
        2,
    )
    .await;
    let settings = quick_settings(&layout);
    let (a, master) = first_epoch_done(&layout, settings.clone()).await;
    // A peer that registered and fell silent (within its lease): it never
    // reports serving the new epoch, so the change waits for it.
    let now = locsvc::cluster::registry::now_ms();
    master
        .put_instance(&locsvc::store::InstanceRow {
            id: "silent".into(),
            host: "elsewhere".into(),
            started_ms: now,
            seen_ms: now + 60_000,
            newest_peer_ms: now + 60_000,
            epoch: 1,
            phase: 2,
        })
        .await
        .unwrap();
    add_group(&layout, 3, Backend::MariaDb2).await;
    layout_is(&master, "epoch 2 announced", |r| {
        (r.epoch, r.phase) == (2, 0)
    })
    .await;
    eventually(
        "this instance serves epoch 2",
        Duration::from_secs(10),
        async || {
            master
                .instances()
                .await
                .unwrap()
                .iter()
                .any(|i| i.id != "silent" && (i.epoch, i.phase) == (2, 0))
        },
    )
    .await;
    // Several polls later, still announced: the silent peer holds it.
    let polls = || {
        a.metrics
            .config_reloads
            .with_label_values(&["unchanged"])
            .get()
    };
    let from = polls();
    eventually("five more polls", Duration::from_secs(10), async || {
        polls() >= from + 5
    })
    .await;
    let r = master.current_layout().await.unwrap().unwrap();
    assert_eq!((r.epoch, r.phase), (2, 0), "held back by the silent peer");
    // Once it reports the epoch, the phase moves on.
    master
        .put_instance(&locsvc::store::InstanceRow {
            id: "silent".into(),
            host: "elsewhere".into(),
            started_ms: now,
            seen_ms: now + 60_000,
            newest_peer_ms: now + 60_000,
            epoch: 2,
            phase: 0,
        })
        .await
        .unwrap();
    layout_is(&master, "epoch 2 moving", |r| (r.epoch, r.phase) == (2, 1)).await;
    a.stop().await;
}

/// Lookups of every AoR while group 3 joins: `who` is asked at every step.
async fn all_found(
    c: &mut locsvc_proto::v1::location_client::LocationClient<tonic::transport::Channel>,
    n: usize,
    what: &str,
) {
    for i in 0..n {
        let aor = format!("sip:mv{i}@example.com");
        let found = lookup_contacts(c, &aor).await;
        assert!(
            found.contains(&contact_of("mv", i)),
            "{what}: {aor} not found: {found:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_a_group_joins_moved_subscribers_are_found_and_a_register_carries_them() {
    const N: usize = 60;
    let layout = Layout::create(
        Backend::Postgres,
        &[Backend::MariaDb1, Backend::MariaDb2],
        2,
    )
    .await;
    let (a, master) = first_epoch_done(&layout, quick_settings(&layout)).await;
    let mut c = a.client().await;
    register_all(&mut c, "mv", N).await;
    let group3 = add_group(&layout, 3, Backend::MariaDb2).await;
    // Every step of the change: everybody is found, moved or not.
    let mut seen = Vec::new();
    eventually("epoch 2 moving", Duration::from_secs(30), async || {
        all_found(&mut c, N, "during the change").await;
        let r = master.current_layout().await.unwrap().unwrap();
        if !seen.contains(&(r.epoch, r.phase)) {
            seen.push((r.epoch, r.phase));
        }
        (r.epoch, r.phase) == (2, 1) && a.metrics.layout_phase.get() == 1
    })
    .await;
    assert!(seen.contains(&(2, 0)), "announced was served: {seen:?}");
    let router = a.service.router();
    let aor = |i: usize| {
        locsvc::domain::Aor::parse(&format!("sip:mv{i}@example.com"), Default::default()).unwrap()
    };
    let moved: Vec<usize> = (0..N)
        .filter(|&i| router.route("location", &aor(i)).unwrap().moving.is_some())
        .collect();
    assert!(
        !moved.is_empty() && moved.len() < N,
        "some move to group 3: {moved:?}"
    );

    // A re-REGISTER carries the AoR whole to group 3 and empties group 1/2.
    let first = moved[0];
    c.save(register(
        &format!("sip:mv{first}@example.com"),
        &contact_of("mv", first),
        Some(3600),
        "cid",
        2,
    ))
    .await
    .unwrap();
    let in_group = |g: usize| match g {
        3 => open_store(&group3[0], true),
        g => open_store(&layout.members[g - 1][0], true),
    };
    let old_group = (1..=2)
        .find(|&g| {
            locsvc::partition::Partitioner::new(locsvc::partition::HashMode::Xxh3, [1, 2])
                .group_for(aor(first).key())
                == Some(g as u32)
        })
        .unwrap();
    assert_eq!(
        in_group(3)
            .load_aor("location", &aor(first))
            .await
            .unwrap()
            .len(),
        1,
        "carried to group 3"
    );
    assert!(
        in_group(old_group)
            .load_aor("location", &aor(first))
            .await
            .unwrap()
            .is_empty(),
        "gone from group {old_group}"
    );
    all_found(&mut c, N, "after a carry").await;

    // A Remove of an AoR not carried yet removes it where it is.
    let second = moved[1.min(moved.len() - 1)];
    if second != first {
        c.remove(locsvc_proto::v1::RemoveRequest {
            aor: format!("sip:mv{second}@example.com"),
            ..Default::default()
        })
        .await
        .unwrap();
        assert!(
            lookup_contacts(&mut c, &format!("sip:mv{second}@example.com"))
                .await
                .is_empty()
        );
    }

    // The mover carries the rest; once nothing is left the change is done.
    layout_is(&master, "epoch 2 done", |r| (r.epoch, r.phase) == (2, 2)).await;
    eventually(
        "routing by epoch 2 alone",
        Duration::from_secs(10),
        async || a.service.router().topology().placement.previous.is_none(),
    )
    .await;
    for &i in &moved {
        let old = (1..=2)
            .find(|&g| {
                locsvc::partition::Partitioner::new(locsvc::partition::HashMode::Xxh3, [1, 2])
                    .group_for(aor(i).key())
                    == Some(g as u32)
            })
            .unwrap();
        for (m, (old_url, new_url)) in layout.members[old - 1].iter().zip(&group3).enumerate() {
            let old_member = open_store(old_url, true);
            assert!(
                old_member
                    .load_aor("location", &aor(i))
                    .await
                    .unwrap()
                    .is_empty(),
                "mv{i} left on group {old}"
            );
            let new_member = open_store(new_url, true);
            let expected = usize::from(i != second || second == first);
            assert_eq!(
                new_member
                    .load_aor("location", &aor(i))
                    .await
                    .unwrap()
                    .len(),
                expected,
                "mv{i} on group 3 member {}",
                m + 1
            );
        }
    }
    for i in (0..N).filter(|&i| i != second || second == first) {
        let aor = format!("sip:mv{i}@example.com");
        assert!(
            lookup_contacts(&mut c, &aor)
                .await
                .contains(&contact_of("mv", i)),
            "after the change: {aor} not found"
        );
    }
    assert!(a.metrics.mover_aors.get() > 0, "the mover carried some");
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_group_is_emptied_online_and_can_then_be_deleted() {
    const N: usize = 40;
    // All on PostgreSQL: master and every member.
    let layout = Layout::create(
        Backend::Postgres,
        &[Backend::Postgres, Backend::Postgres],
        3,
    )
    .await;
    let (a, master) = first_epoch_done(&layout, quick_settings(&layout)).await;
    let mut c = a.client().await;
    let contact = |i: usize| contact_of("dr", i);
    register_all(&mut c, "dr", N).await;
    let on_group1 = open_store(&layout.members[0][0], true);
    assert!(contacts(&on_group1).await > 0, "group 1 holds subscribers");

    // Drain group 1: every one of its member rows says leaving.
    sqlx_exec(
        &layout.master_url,
        "UPDATE locdb SET leaving = 1 WHERE id = 1",
    )
    .await;
    eventually("epoch 2 done, group 1 drained", Duration::from_secs(30), async || {
        for i in 0..N {
            let found = lookup_contacts(&mut c, &format!("sip:dr{i}@example.com")).await;
            assert!(found.contains(&contact(i)), "dr{i} lost during the drain");
        }
        matches!(master.current_layout().await, Ok(Some(r)) if (r.epoch, r.owners.as_str(), r.phase) == (2, "2,3", 2))
    })
    .await;
    for m in 0..2 {
        let member = open_store(&layout.members[0][m], true);
        assert_eq!(
            contacts(&member).await,
            0,
            "group 1 member {} is empty",
            m + 1
        );
    }
    // Now its rows can go: nobody is routed there any more.
    sqlx_exec(&layout.master_url, "DELETE FROM locdb WHERE id = 1").await;
    eventually(
        "group 1 gone from the topology",
        Duration::from_secs(10),
        async || !a.service.router().topology().groups.contains_key(&1),
    )
    .await;
    for i in 0..N {
        assert!(
            lookup_contacts(&mut c, &format!("sip:dr{i}@example.com"))
                .await
                .contains(&contact(i))
        );
    }
    a.stop().await;
}

/// Runs one statement on the database at `url` (PostgreSQL here).
async fn sqlx_exec(url: &str, sql: &str) {
    let mut conn: sqlx::PgConnection = sqlx::Connection::connect(url).await.unwrap();
    sqlx::Executor::execute(&mut conn, sql).await.unwrap();
}

/// Rows of the `location` table of `s`.
async fn contacts(s: &SqlStore) -> u64 {
    s.stats("location", 0).await.unwrap().contacts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_out_of_touch_with_the_master_for_its_lease_stops_routing() {
    let layout = Layout::create(
        Backend::Postgres,
        &[Backend::MariaDb1, Backend::MariaDb2],
        1,
    )
    .await;
    let mut settings = layout.settings();
    settings.cluster.instance_lease = Duration::from_millis(1500);
    let a = TestApp::spawn(settings).await;
    a.save("sip:lease@example.com", &[("sip:lease@192.0.2.1", 1.0)])
        .await;
    // Its heartbeats stop landing (the table is gone): after most of the
    // lease, peers may count it out and change the layout without it.
    sqlx_exec(
        &layout.master_url,
        "ALTER TABLE locsvc_instances RENAME TO instances_away",
    )
    .await;
    let mut c = a.client().await;
    eventually(
        "lookups refused with LAYOUT_UNKNOWN",
        Duration::from_secs(10),
        async || match c
            .lookup(locsvc_proto::v1::LookupRequest {
                aor: "sip:lease@example.com".into(),
                ..Default::default()
            })
            .await
        {
            Err(s) => {
                use tonic_types::StatusExt;
                assert_eq!(s.code(), tonic::Code::Unavailable, "{s:?}");
                s.get_details_error_info()
                    .is_some_and(|i| i.reason == locsvc_proto::reason::LAYOUT_UNKNOWN)
            }
            Ok(_) => false,
        },
    )
    .await;
    // Back in touch: served again.
    sqlx_exec(
        &layout.master_url,
        "ALTER TABLE instances_away RENAME TO locsvc_instances",
    )
    .await;
    eventually("served again", Duration::from_secs(10), async || {
        c.lookup(locsvc_proto::v1::LookupRequest {
            aor: "sip:lease@example.com".into(),
            ..Default::default()
        })
        .await
        .is_ok_and(|r| {
            r.into_inner()
                .bindings
                .iter()
                .any(|b| b.contact == "sip:lease@192.0.2.1")
        })
    })
    .await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_an_all_sqlite_layout_groups_add_and_drain_move_subscribers_online() {
    use locsvc_proto::v1 as pb;
    use locsvc_proto::v1::cluster_client::ClusterClient;
    const N: usize = 30;
    let layout = Layout::create(Backend::Sqlite, &[Backend::Sqlite, Backend::Sqlite], 2).await;
    let settings = quick_settings(&layout);
    let a = TestApp::spawn(settings).await;
    let mut admin = ClusterClient::connect(a.url()).await.unwrap();
    let mut c = a.client().await;
    let contact = |i: usize| contact_of("sq", i);
    register_all(&mut c, "sq", N).await;
    let layout_now = |admin: &mut ClusterClient<tonic::transport::Channel>| {
        let mut admin = admin.clone();
        async move {
            admin
                .list_groups(pb::ListGroupsRequest {})
                .await
                .unwrap()
                .into_inner()
                .layout
                .unwrap()
        }
    };
    // `groups add 3 <url> <url>`: the tables are made, the rows inserted.
    let urls = vec![
        fresh_db(Backend::Sqlite, layout.dir.path()).await,
        fresh_db(Backend::Sqlite, layout.dir.path()).await,
    ];
    admin
        .add_group(pb::AddGroupRequest {
            group: 3,
            urls: urls.clone(),
        })
        .await
        .unwrap();
    let refused = admin
        .add_group(pb::AddGroupRequest { group: 3, urls })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    let lister = admin.clone();
    let mut check = async |what: &str, want: &[u32]| {
        eventually(what, Duration::from_secs(30), async || {
            for i in 0..N {
                let found = lookup_contacts(&mut c, &format!("sip:sq{i}@example.com")).await;
                assert!(found.contains(&contact(i)), "{what}: sq{i} not found");
            }
            let l = layout_now(&mut lister.clone()).await;
            l.phase == "done" && l.owners == want
        })
        .await;
    };
    check("groups 1 to 3, done", &[1, 2, 3]).await;
    // `groups drain 3`: back to two groups, nobody missed.
    admin
        .drain(pb::DrainRequest {
            group: 3,
            undo: false,
        })
        .await
        .unwrap();
    check("groups 1 and 2 again, done", &[1, 2]).await;
    let unknown = admin
        .drain(pb::DrainRequest {
            group: 9,
            undo: false,
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_rows_of_a_group_that_still_owns_subscribers_keeps_serving_them() {
    const N: usize = 20;
    let layout = Layout::create(
        Backend::Postgres,
        &[Backend::MariaDb1, Backend::MariaDb2],
        2,
    )
    .await;
    let (a, master) = first_epoch_done(&layout, layout.settings()).await;
    let mut c = a.client().await;
    let contact = |i: usize| contact_of("kp", i);
    register_all(&mut c, "kp", N).await;
    // An operator deletes group 2 without draining it first.
    let changed = || {
        a.metrics
            .config_reloads
            .with_label_values(&["changed"])
            .get()
    };
    let before = changed();
    sqlx_exec(&layout.master_url, "DELETE FROM locdb WHERE id = 2").await;
    eventually("the edit was read", Duration::from_secs(10), async || {
        changed() > before
    })
    .await;
    // Its subscribers are still served from it (its pools stay open); the
    // layout treats the deletion as a drain: they move to group 1, then
    // group 2 is let go.
    let all_found = async |c: &mut locsvc_proto::v1::location_client::LocationClient<
        tonic::transport::Channel,
    >| {
        for i in 0..N {
            let found = lookup_contacts(c, &format!("sip:kp{i}@example.com")).await;
            assert!(
                found.contains(&contact(i)),
                "kp{i} lost with its group's rows"
            );
        }
    };
    all_found(&mut c).await;
    eventually("moved to group 1, group 2 let go", Duration::from_secs(30), async || {
        all_found(&mut c.clone()).await;
        matches!(master.current_layout().await, Ok(Some(r)) if (r.epoch, r.owners.as_str(), r.phase) == (2, "1", 2))
            && !a.service.router().topology().groups.contains_key(&2)
    })
    .await;
    all_found(&mut c).await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_cut_short_by_a_restart_is_finished_by_the_next_instance() {
    const N: usize = 60;
    let layout = Layout::create(Backend::Sqlite, &[Backend::Sqlite, Backend::Sqlite], 2).await;
    let master = layout.master();
    // A slow mover: pages of 4 rows, 300 ms apart (a pass is seconds long).
    let mut slow = quick_settings(&layout);
    slow.cluster.mover.page = 4;
    slow.cluster.mover.pause = Duration::from_millis(300);
    let a = TestApp::spawn(slow).await;
    let mut c = a.client().await;
    register_all(&mut c, "rs", N).await;
    let group3 = add_group(&layout, 3, Backend::Sqlite).await;
    eventually(
        "the mover carried someone",
        Duration::from_secs(30),
        async || a.metrics.mover_aors.get() > 0,
    )
    .await;
    a.stop().await;
    let cut = master.current_layout().await.unwrap().unwrap();
    assert_eq!(
        (cut.epoch, cut.phase),
        (2, 1),
        "stopped while epoch 2 was moving"
    );

    // A new instance with the default pacing picks the move up.
    let b = TestApp::spawn(quick_settings(&layout)).await;
    layout_is(&master, "epoch 2 done", |r| (r.epoch, r.phase) == (2, 2)).await;
    let mut c = b.client().await;
    for i in 0..N {
        let found = lookup_contacts(&mut c, &format!("sip:rs{i}@example.com")).await;
        assert_eq!(found, vec![contact_of("rs", i)], "rs{i} after the restart");
    }
    // Each subscriber in exactly one group (one row each), group 3 holding
    // its share: counted on member 1 of each group, which converges (a
    // member that missed a write under load is resynced before it is read).
    let (old1, old2, new1) = (
        open_store(&layout.members[0][0], true),
        open_store(&layout.members[1][0], true),
        open_store(&group3[0], true),
    );
    eventually(
        "one row per subscriber, some on group 3",
        Duration::from_secs(30),
        async || {
            let on3 = contacts(&new1).await;
            contacts(&old1).await + contacts(&old2).await + on3 == N as u64 && on3 > 0
        },
    )
    .await;
    b.stop().await;
}
