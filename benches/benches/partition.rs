//! Placement of AoR keys on location groups: xxh3 rendezvous hashing and
//! p_usrloc's crc32-mod over 2, 8 and 64 groups, plus the AoR
//! canonicalization every request goes through before it is placed.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use locsvc::domain::{Aor, KeyPolicy};
use locsvc::partition::{HashMode, Partitioner, crc32_mod};

/// Keys shaped like real canonical AoRs, cycled through so the branch
/// predictor and caches see varied input.
fn keys() -> Vec<String> {
    (0..1024)
        .map(|i| format!("user{}@voip{}.example.com", 100_000 + i * 7919, i % 5))
        .collect()
}

fn placement(c: &mut Criterion) {
    let keys = keys();
    for (mode, name) in [(HashMode::Xxh3, "xxh3"), (HashMode::Crc32Mod, "crc32_mod")] {
        let mut g = c.benchmark_group(format!("group_for/{name}"));
        for groups in [2u32, 8, 64] {
            let p = Partitioner::new(mode, 1..=groups);
            g.bench_with_input(BenchmarkId::from_parameter(groups), &p, |b, p| {
                let mut i = 0usize;
                b.iter(|| {
                    let key = &keys[i & 1023];
                    i = i.wrapping_add(1);
                    black_box(p.group_for(black_box(key)))
                });
            });
        }
        g.finish();
    }
    c.bench_function("crc32_mod/raw/8", |b| {
        let mut i = 0usize;
        b.iter(|| {
            let key = &keys[i & 1023];
            i = i.wrapping_add(1);
            black_box(crc32_mod(black_box(key), black_box(8)))
        });
    });
}

fn canonicalization(c: &mut Criterion) {
    let policy = KeyPolicy::default();
    let mut g = c.benchmark_group("aor_parse");
    for (name, input) in [
        ("plain", "sip:alice@example.com"),
        (
            "mixed_case_port_params",
            "sip:Alice@Example.COM:5060;transport=tcp",
        ),
        ("brackets_sips_password", "<sips:bob:secret@example.com>"),
        ("escaped_user", "sip:%2B4930123456@voip.example.net"),
        ("ipv6_host", "sip:carol@[2001:DB8::1]:5060"),
    ] {
        // Make sure the case measures the success path.
        assert!(Aor::parse(input, policy).is_ok(), "{input}");
        g.bench_with_input(BenchmarkId::from_parameter(name), input, |b, input| {
            b.iter(|| black_box(Aor::parse(black_box(input), policy)))
        });
    }
    g.finish();

    // What locating one request costs end to end: parse, then place.
    let p = Partitioner::new(HashMode::Xxh3, 1..=8);
    let inputs: Vec<String> = (0..1024)
        .map(|i| format!("sip:User{i}@Example.com;transport=udp"))
        .collect();
    c.bench_function("aor_parse_and_place/xxh3/8", |b| {
        let mut i = 0usize;
        b.iter(|| {
            let input = &inputs[i & 1023];
            i = i.wrapping_add(1);
            let aor = Aor::parse(black_box(input), policy).expect("valid AoR");
            black_box(p.group_for(aor.key()))
        });
    });
}

criterion_group!(benches, placement, canonicalization);
criterion_main!(benches);
