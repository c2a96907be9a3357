//! The registrar decision (RFC 3261 §10.3) locsvc makes for every Save:
//! `plan_save` for a new AoR, a refresh, an AoR holding 10 bindings and a
//! wildcard unregister, and `valid_ordered` (what every Lookup returns).

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use locsvc::domain::{Binding, ContactInput, SaveInput};
use locsvc::registrar::{RegistrarPolicy, plan_save, valid_ordered};

const NOW: i64 = 1_800_000_000;

fn contact(uri: &str) -> ContactInput {
    ContactInput {
        uri: uri.to_string(),
        ..ContactInput::default()
    }
}

fn register(contacts: Vec<ContactInput>, call_id: &str, cseq: u32) -> SaveInput {
    SaveInput {
        contacts,
        expires_header: Some(3600),
        call_id: call_id.to_string(),
        cseq,
        user_agent: "Linphone-Desktop/5.2.6".to_string(),
        socket: Some("udp:192.0.2.1:5060".to_string()),
        received: Some("sip:198.51.100.7:40123".to_string()),
        ..SaveInput::default()
    }
}

/// A stored binding of device `n`, refreshed `age` seconds ago.
fn stored(n: usize, age: i64) -> Binding {
    Binding {
        ruid: format!("uloc-{n:032x}"),
        contact: format!("sip:alice@192.0.2.{}:5060;transport=udp", 10 + n),
        expires: NOW - age + 3600,
        q: (!n.is_multiple_of(3)).then(|| 0.1 * f32::from(u8::try_from(n % 10).unwrap_or(0))),
        call_id: format!("call-{n}@192.0.2.{}", 10 + n),
        cseq: 20,
        path: Vec::new(),
        received: None,
        user_agent: "Linphone-Desktop/5.2.6".to_string(),
        socket: Some("udp:192.0.2.1:5060".to_string()),
        instance: None,
        reg_id: 0,
        methods: None,
        flags: 0,
        cflags: 0,
        last_modified: NOW - age,
    }
}

/// The ruid source the service uses (a fresh id per inserted binding).
fn ruids() -> impl FnMut() -> String {
    let mut n = 0u64;
    move || {
        n += 1;
        format!("uloc-{n:032x}")
    }
}

fn plans(c: &mut Criterion) {
    let policy = RegistrarPolicy::default();
    let mut g = c.benchmark_group("plan_save");

    let new_aor = register(vec![contact("sip:alice@192.0.2.10:5060")], "c1@h", 1);
    let plan = plan_save(&new_aor, &[], NOW, &policy, &mut ruids()).expect("accepted");
    assert_eq!((plan.upserts.len(), plan.bindings.len()), (1, 1));
    g.bench_function("new_aor_one_contact", |b| {
        let mut ruid = ruids();
        b.iter(|| {
            black_box(plan_save(
                black_box(&new_aor),
                black_box(&[]),
                NOW,
                &policy,
                &mut ruid,
            ))
        })
    });

    let existing = vec![stored(0, 600)];
    let refresh = register(
        vec![contact(&existing[0].contact)],
        &existing[0].call_id,
        existing[0].cseq + 1,
    );
    let plan = plan_save(&refresh, &existing, NOW, &policy, &mut ruids()).expect("accepted");
    assert_eq!(
        plan.upserts[0].ruid, existing[0].ruid,
        "a refresh keeps the ruid"
    );
    g.bench_function("refresh_one_binding", |b| {
        let mut ruid = ruids();
        b.iter(|| {
            black_box(plan_save(
                black_box(&refresh),
                black_box(&existing),
                NOW,
                &policy,
                &mut ruid,
            ))
        })
    });

    let ten: Vec<Binding> = (0..10).map(|n| stored(n, 60 * (n as i64 + 1))).collect();
    let refresh_one_of_ten = register(vec![contact(&ten[7].contact)], &ten[7].call_id, 21);
    let plan = plan_save(&refresh_one_of_ten, &ten, NOW, &policy, &mut ruids()).expect("accepted");
    assert_eq!((plan.upserts.len(), plan.bindings.len()), (1, 10));
    g.bench_function("ten_bindings_refresh_one", |b| {
        let mut ruid = ruids();
        b.iter(|| {
            black_box(plan_save(
                black_box(&refresh_one_of_ten),
                black_box(&ten),
                NOW,
                &policy,
                &mut ruid,
            ))
        })
    });
    let add_eleventh = register(vec![contact("sip:alice@198.51.100.99:5060")], "c11@h", 1);
    let plan = plan_save(&add_eleventh, &ten, NOW, &policy, &mut ruids()).expect("accepted");
    assert_eq!(plan.bindings.len(), 11);
    g.bench_function("ten_bindings_add_one", |b| {
        let mut ruid = ruids();
        b.iter(|| {
            black_box(plan_save(
                black_box(&add_eleventh),
                black_box(&ten),
                NOW,
                &policy,
                &mut ruid,
            ))
        })
    });

    let three: Vec<Binding> = (0..3).map(|n| stored(n, 120)).collect();
    let wildcard = SaveInput {
        wildcard: true,
        expires_header: Some(0),
        call_id: "unreg@h".to_string(),
        cseq: 1,
        ..SaveInput::default()
    };
    let plan = plan_save(&wildcard, &three, NOW, &policy, &mut ruids()).expect("accepted");
    assert_eq!((plan.deletes.len(), plan.bindings.len()), (3, 0));
    g.bench_function("wildcard_unregister_three", |b| {
        let mut ruid = ruids();
        b.iter(|| {
            black_box(plan_save(
                black_box(&wildcard),
                black_box(&three),
                NOW,
                &policy,
                &mut ruid,
            ))
        })
    });
    g.finish();
}

fn ordering(c: &mut Criterion) {
    let mut g = c.benchmark_group("valid_ordered");
    let one = vec![stored(1, 60)];
    g.bench_function("one_binding", |b| {
        b.iter(|| black_box(valid_ordered(black_box(&one), NOW)))
    });
    // Ten rows, two of them expired, mixed q: what a busy AoR's Lookup sorts.
    let mut ten: Vec<Binding> = (0..10).map(|n| stored(n, 60 * (n as i64 + 1))).collect();
    ten[3].expires = NOW - 5;
    ten[8].expires = NOW - 500;
    assert_eq!(valid_ordered(&ten, NOW).len(), 8);
    g.bench_function("ten_bindings_two_expired", |b| {
        b.iter(|| black_box(valid_ordered(black_box(&ten), NOW)))
    });
    g.finish();
}

criterion_group!(benches, plans, ordering);
criterion_main!(benches);
