//! The lookup cache (`cluster.lookup_cache_ms`, README "Lookup cache") with
//! two instances on one cluster, only one of them caching: a repeated
//! Lookup is answered without a read, the caching instance's own writes are
//! found at once, and what the other instance replaces or removes is found
//! once the stated bound (the ttl) has passed since it was acknowledged.

use std::time::Duration;

use tokio::time::{Instant, sleep_until};

use crate::harness::*;

const TTL: Duration = Duration::from_millis(400);

fn cache_count(app: &TestApp, result: &str) -> u64 {
    app.metrics.lookup_cache.with_label_values(&[result]).get()
}

#[tokio::test]
async fn a_caching_instance_finds_its_own_writes_at_once_and_another_instances_within_the_ttl() {
    let layout = Layout::create(
        Backend::MariaDb1,
        &[Backend::MariaDb1, Backend::MariaDb2],
        1,
    )
    .await;
    let mut caching = layout.settings();
    caching.cluster.lookup_cache = TTL;
    let a = TestApp::spawn(caching).await;
    let b = TestApp::spawn(layout.settings()).await;
    let (mut ca, mut cb) = (a.client().await, b.client().await);
    let aor = "sip:carol@example.com";
    let contacts = |bindings: Vec<locsvc_proto::v1::Binding>| -> Vec<String> {
        let mut c: Vec<String> = bindings.into_iter().map(|b| b.contact).collect();
        c.sort();
        c
    };
    let (one, two) = ("sip:carol@192.0.2.1", "sip:carol@192.0.2.2");

    // Nothing registered: an empty answer is never kept, so b's first
    // registration is found through a at once.
    assert!(a.lookup(aor).await.is_empty());
    cb.save(register(aor, one, Some(600), "b", 1))
        .await
        .unwrap();
    assert_eq!(contacts(a.lookup(aor).await), [one]);

    // Asked again: answered from the cache.
    let hits = cache_count(&a, "hit");
    assert_eq!(contacts(a.lookup(aor).await), [one]);
    assert_eq!(
        cache_count(&a, "hit"),
        hits + 1,
        "the second lookup is a hit"
    );

    // a's own REGISTER of a second contact is found at once.
    ca.save(register(aor, two, Some(600), "a", 1))
        .await
        .unwrap();
    assert_eq!(contacts(a.lookup(aor).await), [one, two]);

    // b unregisters the first contact: once the ttl has passed since b's
    // answer, every lookup through a finds only the second.
    assert_eq!(contacts(a.lookup(aor).await), [one, two]);
    cb.save(register(aor, one, Some(0), "b", 2)).await.unwrap();
    sleep_until(Instant::now() + TTL).await;
    assert_eq!(contacts(a.lookup(aor).await), [two]);

    // b removes the AoR: after the ttl, a finds nothing.
    assert_eq!(contacts(a.lookup(aor).await), [two]);
    cb.remove(locsvc_proto::v1::RemoveRequest {
        aor: aor.into(),
        ..Default::default()
    })
    .await
    .unwrap();
    sleep_until(Instant::now() + TTL).await;
    assert!(a.lookup(aor).await.is_empty(), "removed through b");

    // b never caches: every lookup of it was a read.
    assert_eq!(cache_count(&b, "hit") + cache_count(&b, "miss"), 0);
    a.stop().await;
    b.stop().await;
}
