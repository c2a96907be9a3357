//! Two locsvc instances on one cluster serialize one AoR's REGISTERs
//! between them (docs/layout-changes.md): 200 AoRs each get two REGISTERs
//! at once, one through each instance, and the registrar's CSeq order and
//! max-contacts must hold as if one instance had seen both. Run with a
//! MariaDB master (GET_LOCK) and a PostgreSQL master (advisory locks).

use locsvc_proto::v1 as pb;
use tonic::Code;

use crate::harness::*;

const PAIRS: usize = 200;

async fn two_instances(master: Backend) -> (Layout, TestApp, TestApp) {
    let layout = Layout::create(master, &[Backend::MariaDb1, Backend::MariaDb2], 2).await;
    let mut settings = layout.settings();
    settings.registrar.max_contacts = 2;
    // 400 calls at once through two in-process instances of a debug build
    // on two cores take seconds to drain; this test is about their order,
    // not their latency (BENCHMARKS.md measures that on release builds).
    settings.grpc.request_timeout = std::time::Duration::from_secs(8);
    // For the same reason a member's pool may be busy for over a second;
    // a member missing writes is not what this test is about.
    settings.cluster.pool.acquire_timeout = std::time::Duration::from_secs(15);
    let a = TestApp::spawn(settings.clone()).await;
    let b = TestApp::spawn(settings).await;
    for app in [&a, &b] {
        assert_eq!(
            app.metrics.peers_live.get(),
            1,
            "each instance sees the other"
        );
    }
    (layout, a, b)
}

fn locks(app: &TestApp, result: &str) -> u64 {
    app.metrics.aor_locks.with_label_values(&[result]).get()
}

/// Locks taken, busy and fallen back, for a failure's message.
fn lock_counts(app: &TestApp) -> [u64; 3] {
    ["taken", "busy", "fallback"].map(|r| locks(app, r))
}

/// Both answers of one pair: Ok, or the registrar's refusal code.
fn outcome(r: &Result<tonic::Response<pb::SaveResponse>, tonic::Status>) -> Result<(), Code> {
    match r {
        Ok(_) => Ok(()),
        Err(s) if matches!(s.code(), Code::FailedPrecondition | Code::ResourceExhausted) => {
            Err(s.code())
        }
        Err(s) => {
            eprintln!("unexpected answer: {s:?}");
            Err(s.code())
        }
    }
}

async fn cseq_order_holds(a: &TestApp, b: &TestApp) {
    let (mut ca, mut cb) = (a.client().await, b.client().await);
    let aor = |i: usize| format!("sip:cseq{i}@example.com");
    let contact = |i: usize| format!("sip:cseq{i}@192.0.2.1:5060");
    for i in 0..PAIRS {
        ca.save(register(&aor(i), &contact(i), Some(3600), "cid", 1))
            .await
            .unwrap();
    }
    // CSeq 2 through a, CSeq 3 through b, at once, for every AoR.
    let pairs = (0..PAIRS).map(|i| {
        let (mut ca, mut cb) = (ca.clone(), cb.clone());
        let (aor, contact) = (aor(i), contact(i));
        async move {
            let two = ca.save(register(&aor, &contact, Some(3600), "cid", 2));
            let three = cb.save(register(&aor, &contact, Some(3600), "cid", 3));
            let (two, three) = tokio::join!(two, three);
            (outcome(&two), outcome(&three))
        }
    });
    let outcomes = futures::future::join_all(pairs).await;
    let (mut both, mut refused) = (0, 0);
    for (i, (two, three)) in outcomes.into_iter().enumerate() {
        let stored = lookup_bindings(&mut cb, &aor(i)).await;
        assert_eq!(stored.len(), 1, "one binding of {}", aor(i));
        match (two, three) {
            // Serialized 2 then 3: the later CSeq is the one stored.
            (Ok(()), Ok(())) => {
                both += 1;
                assert_eq!(
                    stored[0].cseq,
                    3,
                    "{}: CSeq 2 accepted after 3; a locks {:?}, b locks {:?}",
                    aor(i),
                    lock_counts(a),
                    lock_counts(b)
                );
            }
            // Serialized 3 then 2: 2 is out of order and refused.
            (Err(Code::FailedPrecondition), Ok(())) => {
                refused += 1;
                assert_eq!(stored[0].cseq, 3, "{}", aor(i));
            }
            other => panic!(
                "{}: {other:?}; a locks {:?}, b locks {:?}",
                aor(i),
                lock_counts(a),
                lock_counts(b)
            ),
        }
    }
    eprintln!("TWO-INSTANCES cseq: {both} pairs in order, {refused} refused out of order");
}

async fn max_contacts_hold(a: &TestApp, b: &TestApp) {
    let (mut ca, cb) = (a.client().await, b.client().await);
    let aor = |i: usize| format!("sip:max{i}@example.com");
    for i in 0..PAIRS {
        ca.save(register(
            &aor(i),
            &format!("sip:base{i}@192.0.2.1"),
            Some(3600),
            "cid-base",
            1,
        ))
        .await
        .unwrap();
    }
    // One more contact through each instance at once; max_contacts is 2.
    let pairs = (0..PAIRS).map(|i| {
        let (mut ca, mut cb) = (ca.clone(), cb.clone());
        let aor = aor(i);
        async move {
            let x = ca.save(register(
                &aor,
                &format!("sip:x{i}@192.0.2.2"),
                Some(3600),
                "cid-x",
                1,
            ));
            let y = cb.save(register(
                &aor,
                &format!("sip:y{i}@192.0.2.3"),
                Some(3600),
                "cid-y",
                1,
            ));
            let (x, y) = tokio::join!(x, y);
            (outcome(&x), outcome(&y))
        }
    });
    let outcomes = futures::future::join_all(pairs).await;
    for (i, (x, y)) in outcomes.into_iter().enumerate() {
        let stored = lookup_bindings(&mut ca, &aor(i)).await;
        assert!(
            stored.len() <= 2,
            "{}: {} contacts, max is 2",
            aor(i),
            stored.len()
        );
        assert!(
            matches!(
                (x, y),
                (Ok(()), Err(Code::ResourceExhausted)) | (Err(Code::ResourceExhausted), Ok(()))
            ),
            "{}: exactly one of the two extra contacts is refused: {x:?} {y:?}",
            aor(i)
        );
    }
}

async fn serialized_across_instances(master: Backend) {
    init_tracing();
    let (_layout, a, b) = two_instances(master).await;
    cseq_order_holds(&a, &b).await;
    max_contacts_hold(&a, &b).await;
    for app in [&a, &b] {
        assert!(locks(app, "taken") > 0, "the master lock was taken");
        assert_eq!(locks(app, "fallback"), 0, "the master answered every lock");
    }
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_serialize_an_aors_registers_on_a_mariadb_master() {
    serialized_across_instances(Backend::MariaDb1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_serialize_an_aors_registers_on_a_postgres_master() {
    serialized_across_instances(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_instance_takes_no_master_lock_and_a_stopped_one_leaves_the_registry() {
    let layout = Layout::create(
        Backend::MariaDb1,
        &[Backend::MariaDb1, Backend::MariaDb2],
        1,
    )
    .await;
    let a = TestApp::spawn(layout.settings()).await;
    a.save("sip:alone@example.com", &[("sip:alone@192.0.2.1", 1.0)])
        .await;
    assert_eq!(a.metrics.peers_live.get(), 0);
    assert_eq!(locks(&a, "taken"), 0, "nobody to serialize with");
    let b = TestApp::spawn(layout.settings()).await;
    assert_eq!(layout.master().instances().await.unwrap().len(), 2);
    b.stop().await;
    let left = layout.master().instances().await.unwrap();
    assert_eq!(
        left.len(),
        1,
        "the stopped instance removed its row: {left:?}"
    );
    a.stop().await;
}
