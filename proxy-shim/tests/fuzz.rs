//! A deterministic, seeded, mutation-based fuzzer for the SIP facade and the
//! shim's request handling: the stable-toolchain equivalent of a cargo-fuzz
//! target (no nightly, no libFuzzer), run by `scripts/test` for a bounded time.
//!
//! Every input is a seed of `fuzz/corpus/` with a few stacked mutations,
//! derived only from `FUZZ_SEED` and the iteration number, so a failure
//! reproduces from the two numbers it prints (and the input is written to
//! `<target>/fuzz-failures/`). Each input goes through:
//!
//! - `sip::parse_datagram`, and `StreamFramer::push` in random chunk sizes;
//! - for every parsed request: `sanity::check`, every `Request` accessor,
//!   `digest::parse_authorization` on each (Proxy-)Authorization row,
//!   `route::decide` (trusted and not), `register::to_save` (trusted, so
//!   Path and NAT are read), the stateless proxy's edits on a copy, and
//!   `sip::response`; for every parsed response: its accessors;
//! - the whole pipeline in this process (`Core::handle_request` /
//!   `handle_response` with auth on and off, locsvc unreachable), so a panic
//!   or a stall fails the test with the input that caused it; a response
//!   whose return hop parses as an address is also re-sealed with the core's
//!   key so it is relayed, not dropped at the MAC check;
//! - two real shims (`App`, auth `Digest` and `Off`) over real UDP; they
//!   must still answer an OPTIONS to themselves with 200 within 2 s at every
//!   checkpoint and at the end, and a panic hook proves no task panicked.
//!
//! Environment: `FUZZ_SECS` (wall time, default 10), `FUZZ_SEED` (default
//! below; decimal or 0x-hex), `FUZZ_ITERS` (optional cap on iterations).
//! Files in `fuzz/crashes/` (if any) are replayed first, unmutated.

use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use bytes::Bytes;
use proxy_shim::app::App;
use proxy_shim::envelope::{Inbound, Transport};
use proxy_shim::hop_mac::{Hop, HopKey, return_hop};
use proxy_shim::identity::BRANCH_PREFIX;
use proxy_shim::locsvc_client::LocsvcClient;
use proxy_shim::metrics::Metrics;
use proxy_shim::route::{self, Facts};
use proxy_shim::settings::{AuthMode, Mode, Settings};
use proxy_shim::sip::{self, Contacts, Parsed, Request, Response, StreamFramer};
use proxy_shim::state::Core;
use proxy_shim::{digest, register, sanity};
use testkit::Serving;
use tokio::net::UdpSocket;

const DEFAULT_SEED: u64 = 0x5eed_51b0_f022_2026;
const DEFAULT_SECS: u64 = 10;
/// A closed port: every locsvc call fails fast (503).
const NO_LOCSVC: &str = "http://127.0.0.1:9";
/// One pipeline call longer than this is a stall (locsvc's budget is 400 ms).
const STALL: Duration = Duration::from_secs(2);
/// No progress at all for this long: the watchdog fails the run.
const WATCHDOG: Duration = Duration::from_secs(20);
/// Iterations between liveness checks of the real shims.
const CHECK_EVERY: u64 = 2000;
/// Largest input a mutation may grow to (above the 64 KiB message limit).
const MAX_INPUT: usize = 72 * 1024;
/// Pipeline calls in flight at once.
const IN_FLIGHT: usize = 64;

// ---------------------------------------------------------------- PRNG

/// xorshift64*, seeded through splitmix64 so nearby seeds diverge.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Self((z ^ (z >> 31)) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in 0..n (n > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }

    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }

    /// A length biased toward small values, at most `max`.
    fn small(&mut self, max: usize) -> usize {
        let cap = [4, 16, 64, 512, max][self.below(5)].min(max);
        1 + self.below(cap.max(1))
    }
}

// ------------------------------------------------------------ mutators

const EXTREMES: &[&str] = &[
    "0",
    "4294967295",
    "4294967296",
    "-1",
    "99999999999",
    "18446744073709551616",
    "65535",
    "65536",
    "255",
    "256",
    "00000000000000000000001",
    "1e9",
    "0x10",
    "1.5",
    "-0",
    "",
];

const TOKENS: &[&str] = &[
    "z9hG4bK-ps-",
    ";branch=z9hG4bK-ps-0123456789abcdef-",
    ";lr",
    ";tag=",
    ";tag=ps-",
    ";rport",
    ";received=",
    ";expires=",
    ";q=",
    ";transport=tcp",
    ";+sip.instance=\"<urn:uuid:1>\"",
    ";reg-id=",
    "*",
    "sip:",
    "sips:",
    "tel:",
    "<",
    ">",
    "\"",
    "\\",
    ",",
    ";",
    ":",
    "@",
    "=",
    " ",
    "\t",
    "\r\n ",
    "\r\n\t",
    "\r\n",
    "\n",
    "\r",
    "\r\n\r\n",
    "[",
    "]",
    "[::1]",
    "[2001:db8::1]:5060",
    "[::ffff:127.0.0.1]",
    "127.0.0.1:5060",
    "0.0.0.0",
    "%00",
    "%",
    "Digest ",
    "username=",
    "realm=\"example.com\"",
    "SIP/2.0",
    "SIP/2.0/UDP ",
    "SIP/2.0/TCP ",
    "Via: ",
    "Contact: ",
    "Route: ",
    "Path: ",
    "To: ",
    "From: ",
    "CSeq: ",
    "Content-Length: ",
    "Expires: ",
    "Max-Forwards: ",
    "Authorization: ",
    "Supported: path",
    "example.com",
];

const METHODS: &[&str] = &[
    "REGISTER", "INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "MESSAGE", "register", "", "X",
    "PRACK",
];

const ENDINGS: &[&[u8]] = &[b"\n", b"\r", b"\r\r\n", b"\n\r", b"\r\n\r\n", b""];

const NON_UTF8: &[&[u8]] = &[
    b"\xff",
    b"\xfe\xff",
    b"\xc3\x28",
    b"\xe2\x82",
    b"\xed\xa0\x80",
    b"\xf4\x90\x80\x80",
    b"\x80",
    b"\xc0\xaf",
    b"\x00",
    b"\x7f",
    b"\x1b[0m",
];

/// Lines of `b`, each with its terminator (`\n`), as byte ranges.
fn lines(b: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, c) in b.iter().enumerate() {
        if *c == b'\n' {
            out.push((start, i + 1));
            start = i + 1;
        }
    }
    if start < b.len() {
        out.push((start, b.len()));
    }
    out
}

/// Indices (into `lines`) of the header lines: after the start line, before
/// the first empty line.
fn header_lines(b: &[u8], ls: &[(usize, usize)]) -> Vec<usize> {
    let mut out = Vec::new();
    for (i, (s, e)) in ls.iter().enumerate().skip(1) {
        let l = &b[*s..*e];
        if l == b"\r\n" || l == b"\n" {
            break;
        }
        out.push(i);
    }
    out
}

fn digit_runs(b: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_digit() {
            let s = i;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            out.push((s, i));
        } else {
            i += 1;
        }
    }
    out
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Position of the value of the first header named like one of `names`
/// (case-insensitive): (start of value, end of line without CR LF).
fn header_value(b: &[u8], names: &[&str]) -> Option<(usize, usize)> {
    let ls = lines(b);
    for i in header_lines(b, &ls) {
        let (s, e) = ls[i];
        let l = &b[s..e];
        let Some(colon) = l.iter().position(|c| *c == b':') else {
            continue;
        };
        let name = String::from_utf8_lossy(&l[..colon])
            .trim()
            .to_ascii_lowercase();
        if names.iter().any(|n| *n == name) {
            let mut end = e;
            while end > s + colon + 1 && matches!(b[end - 1], b'\r' | b'\n') {
                end -= 1;
            }
            return Some((s + colon + 1, end));
        }
    }
    None
}

/// One random mutation of `b` (`others` is the corpus, for splicing).
fn mutate_once(b: &mut Vec<u8>, others: &[Vec<u8>], rng: &mut Rng) -> &'static str {
    let len = b.len();
    let pos = |rng: &mut Rng| rng.below(len + 1);
    match rng.below(20) {
        0 if len > 0 => {
            let i = rng.below(len);
            b[i] ^= 1 << rng.below(8);
            "bit_flip"
        }
        1 if len > 0 => {
            let i = rng.below(len);
            b[i] = rng.next() as u8;
            "byte_set"
        }
        2 => {
            let at = pos(rng);
            let n = rng.small(16);
            let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
            b.splice(at..at, bytes);
            "insert_random"
        }
        3 if len > 0 => {
            let at = rng.below(len);
            let n = rng.small(len - at);
            b.drain(at..at + n);
            "delete_range"
        }
        4 if len > 0 => {
            let at = rng.below(len);
            let n = rng.small(len - at);
            let copy = b[at..at + n].to_vec();
            let to = pos(rng);
            b.splice(to..to, copy);
            "duplicate_range"
        }
        5 => {
            // Splice: the head of this input, the tail of another.
            let other = rng.pick(others);
            let cut_a = pos(rng);
            let cut_b = rng.below(other.len() + 1);
            b.truncate(cut_a);
            b.extend_from_slice(&other[cut_b..]);
            "splice"
        }
        6 => {
            let ls = lines(b);
            let hs = header_lines(b, &ls);
            if hs.is_empty() {
                return "noop";
            }
            let (s, e) = ls[*rng.pick(&hs)];
            let line = b[s..e].to_vec();
            let (ts, _) = ls[*rng.pick(&hs)];
            let n = if rng.chance(8) { rng.small(200) } else { 1 };
            for _ in 0..n {
                b.splice(ts..ts, line.iter().copied());
            }
            "duplicate_header"
        }
        7 => {
            let ls = lines(b);
            let hs = header_lines(b, &ls);
            if hs.is_empty() {
                return "noop";
            }
            let (s, e) = ls[*rng.pick(&hs)];
            b.drain(s..e);
            "remove_header"
        }
        8 => {
            let ls = lines(b);
            let hs = header_lines(b, &ls);
            if hs.len() < 2 {
                return "noop";
            }
            // Reorder: shuffle the header block (Fisher-Yates).
            let mut order = hs.clone();
            for i in (1..order.len()).rev() {
                order.swap(i, rng.below(i + 1));
            }
            let start = ls[hs[0]].0;
            let end = ls[*hs.last().expect("non-empty")].1;
            let block: Vec<u8> = order
                .iter()
                .flat_map(|i| b[ls[*i].0..ls[*i].1].to_vec())
                .collect();
            b.splice(start..end, block);
            "reorder_headers"
        }
        9 => {
            let runs = digit_runs(b);
            if runs.is_empty() {
                return "noop";
            }
            let (s, e) = *rng.pick(&runs);
            b.splice(s..e, rng.pick(EXTREMES).bytes());
            "extreme_number"
        }
        10 => {
            // A huge header value: a new row or an existing one grown.
            let n = *rng.pick(&[1000, 8 * 1024, 40 * 1024, 65 * 1024, 70 * 1024]);
            let unit = *rng.pick(&[&b"a"[..], b",", b";x=y", b"<sip:a@b>,", b" ", b"\r\n "]);
            let fill: Vec<u8> = unit.iter().copied().cycle().take(n).collect();
            match header_value(b, &["via", "contact", "to", "from", "call-id", "route"]) {
                Some((_, e)) if rng.chance(2) => {
                    b.splice(e..e, fill);
                }
                _ => {
                    let ls = lines(b);
                    let at = ls.get(1).map_or(b.len(), |l| l.0);
                    let mut row = b"X-Huge: ".to_vec();
                    row.extend(fill);
                    row.extend_from_slice(b"\r\n");
                    b.splice(at..at, row);
                }
            }
            "huge_value"
        }
        11 => {
            // Line endings: one CRLF (or all) becomes LF, CR, CRCRLF or LFCR.
            let to = *rng.pick(ENDINGS);
            if rng.chance(4) {
                let mut out = Vec::with_capacity(b.len());
                let mut i = 0;
                while i < b.len() {
                    if b[i..].starts_with(b"\r\n") {
                        out.extend_from_slice(to);
                        i += 2;
                    } else {
                        out.push(b[i]);
                        i += 1;
                    }
                }
                *b = out;
            } else {
                let crlfs: Vec<usize> = (0..len.saturating_sub(1))
                    .filter(|i| b[*i] == b'\r' && b[*i + 1] == b'\n')
                    .collect();
                if crlfs.is_empty() {
                    return "noop";
                }
                let at = *rng.pick(&crlfs);
                b.splice(at..at + 2, to.iter().copied());
            }
            "line_endings"
        }
        12 => {
            // Content-Length lies (or a second one).
            let body_len = find(b, b"\r\n\r\n").map_or(0, |h| len - h - 4);
            let v = match rng.below(8) {
                0 => "0".to_string(),
                1 => body_len.saturating_sub(1).to_string(),
                2 => (body_len + 1).to_string(),
                3 => (body_len + rng.small(70_000)).to_string(),
                4 => rng.pick(EXTREMES).to_string(),
                5 => " 5 ".to_string(),
                6 => "abc".to_string(),
                _ => format!("{body_len}, {}", body_len + 3),
            };
            match header_value(b, &["content-length", "l"]) {
                Some((s, e)) if !rng.chance(4) => {
                    b.splice(s..e, format!(" {v}").into_bytes());
                }
                _ => {
                    let ls = lines(b);
                    let at = ls.get(1).map_or(b.len(), |l| l.0);
                    b.splice(at..at, format!("Content-Length: {v}\r\n").into_bytes());
                }
            }
            "content_length_lie"
        }
        13 => {
            let at = match header_value(b, &["via", "contact", "to", "from", "call-id", "cseq"]) {
                Some((s, e)) => s + rng.below(e - s + 1),
                None => pos(rng),
            };
            b.splice(at..at, rng.pick(NON_UTF8).iter().copied());
            "non_utf8"
        }
        14 | 15 => {
            let at = pos(rng);
            b.splice(at..at, rng.pick(TOKENS).bytes());
            "insert_token"
        }
        16 if len > 0 => {
            b.truncate(rng.below(len));
            "truncate"
        }
        17 => {
            // Another method in the start line or the CSeq.
            let m = rng.pick(METHODS).as_bytes();
            if rng.chance(2) {
                let end = b.iter().position(|c| *c == b' ').unwrap_or(0);
                b.splice(0..end, m.iter().copied());
            } else if let Some((s, e)) = header_value(b, &["cseq"]) {
                b.splice(s..e, [b" 1 ".as_slice(), m].concat());
            }
            "method"
        }
        18 => {
            // A value copied from one header into another.
            let names = [
                "via",
                "contact",
                "to",
                "from",
                "route",
                "path",
                "authorization",
            ];
            let (Some((fs, fe)), Some((ts, te))) = (
                header_value(b, &[*rng.pick(&names)]),
                header_value(b, &[*rng.pick(&names)]),
            ) else {
                return "noop";
            };
            let v = b[fs..fe].to_vec();
            if ts < fs {
                let mut out = b[..ts].to_vec();
                out.extend_from_slice(&v);
                out.extend_from_slice(&b[te..]);
                *b = out;
            }
            "cross_header"
        }
        _ if len > 0 => {
            // Case flips: header names and methods are case-insensitive.
            let at = rng.below(len);
            let n = rng.small(len - at);
            for c in &mut b[at..at + n] {
                if c.is_ascii_alphabetic() {
                    *c ^= 0x20;
                }
            }
            "case_flip"
        }
        _ => "noop",
    }
}

/// The input of iteration `iter` under `seed`: a corpus seed with 1..=6
/// (sometimes up to 24) stacked mutations.
fn input_for(seed: u64, iter: u64, corpus: &[Vec<u8>]) -> (Vec<u8>, Vec<&'static str>) {
    let mut rng = Rng::new(seed ^ iter.wrapping_mul(0xd6e8_feb8_6659_fd93));
    let mut b = rng.pick(corpus).clone();
    let n = if rng.chance(10) {
        rng.small(24)
    } else {
        1 + rng.below(6)
    };
    let mut applied = Vec::new();
    for _ in 0..n {
        applied.push(mutate_once(&mut b, corpus, &mut rng));
        b.truncate(MAX_INPUT);
    }
    (b, applied)
}

// ------------------------------------------------------------- targets

/// What the run saw, for the summary line.
#[derive(Default, Debug)]
struct Stats {
    inputs: u64,
    parsed_requests: u64,
    parsed_responses: u64,
    framed: u64,
    sane: u64,
    resealed: u64,
    pipeline_answers: u64,
    reparse_failures: u64,
}

/// Where a request "came from" in the direct calls.
fn src(transport: Transport) -> Inbound {
    Inbound {
        transport,
        peer: "127.0.0.1:40000".parse().expect("addr"),
        local: "127.0.0.1:5060".parse().expect("addr"),
    }
}

/// Every accessor and pure step over one parsed request.
fn exercise_request(req: &Request, cores: &Cores, rng: &mut Rng, stats: &mut Stats) {
    let _ = (req.method(), req.uri_string(), req.uri());
    let _ = (req.to(), req.from_uri(), req.from_tag(), req.call_id());
    let _ = (req.cseq(), req.expires(), req.max_forwards());
    if let Ok(Contacts::List(cs)) = req.contacts() {
        for c in cs {
            if let Some(v) = sip::UriView::parse(&c.uri) {
                let _ = (v.aor(), v.host_for_uri());
            }
            if let Some(v) = &c.view {
                let _ = (v.aor(), v.host_for_uri());
            }
        }
    }
    let _ = (req.path(), req.routes(), req.vias(), req.top_via());
    let _ = (req.lists_token("Supported", "path"), req.header("Expires"));
    for name in [
        "Authorization",
        "Proxy-Authorization",
        "Via",
        "Contact",
        "X-Huge",
    ] {
        for row in req.header_rows(name) {
            let _ = digest::parse_authorization(&row);
        }
    }
    if let Ok(v) = req.top_via() {
        let _ = return_hop(&v);
    }
    let is_us = |h: &str, p: Option<u16>| cores.trusted.is_local(h, p);
    if let Ok(checked) = sanity::check(req, 70, is_us) {
        stats.sane += 1;
        let routes = req.routes().unwrap_or_default();
        for trusted in [false, true] {
            let facts = Facts {
                checked: &checked,
                routes: &routes,
                our_to_tag: rng.chance(8),
                trusted,
            };
            let _ = route::decide(&facts, is_us, |d| cores.trusted.settings.serves(d));
        }
    }
    let transport = *rng.pick(&[Transport::Udp, Transport::Tcp]);
    let _ = register::to_save(&cores.trusted, req, src(transport));
    // The stateless proxy's edits, on a copy.
    let mut edited = req.clone();
    edited.stamp_top_via("198.51.100.7:40123".parse().expect("addr"));
    let _ = edited.push_via("SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-ps-00");
    edited.pop_route();
    let _ = edited.prepend_routes(&["sip:192.0.2.1;lr".into(), "sip:[::1]:5062;lr".into()]);
    edited.set_max_forwards(69);
    if let Some(c) = req.header("Contact") {
        let _ = edited.set_uri(c.trim_matches(['<', '>', ' ']));
    }
    let _ = edited.set_uri("sip:bob@192.0.2.30:5070");
    let _ = (edited.top_via(), edited.vias(), edited.routes());
    let out = edited.to_bytes();
    if sip::parse_datagram(out).is_err() {
        stats.reparse_failures += 1;
    }
    for code in [100, 200, 302, 401, 503] {
        let _ = sip::response(
            req,
            code,
            "Reason",
            "ps-tag",
            &[("Contact", "<sip:a@b>".into())],
        );
    }
}

fn exercise_response(resp: &Response) {
    let _ = (resp.status(), resp.top_via(), resp.cseq_method());
    let _ = resp.header_values("Contact");
    let mut r = resp.clone();
    r.pop_via();
    let _ = (r.top_via(), r.to_bytes());
}

/// The synchronous targets over one input; returns the messages to send
/// through the pipeline.
fn exercise(input: &[u8], cores: &Cores, rng: &mut Rng, stats: &mut Stats) -> Vec<Parsed> {
    let mut msgs = Vec::new();
    if let Ok(m) = sip::parse_datagram(Bytes::copy_from_slice(input)) {
        msgs.push(m);
    }
    // The stream framer in random chunk sizes; the input twice, as a peer
    // would pipeline it.
    let mut framer = StreamFramer::default();
    let stream = [input, input].concat();
    let mut at = 0;
    while at < stream.len() {
        let n = rng.small(stream.len() - at);
        match framer.push(&stream[at..at + n]) {
            Ok((m, _pings)) => {
                stats.framed += m.len() as u64;
                msgs.extend(m.into_iter().take(4));
            }
            Err(_) => break,
        }
        let _ = framer.pending();
        at += n;
    }
    for m in &msgs {
        match m {
            Parsed::Request(r) => {
                stats.parsed_requests += 1;
                exercise_request(r, cores, rng, stats);
            }
            Parsed::Response(r) => {
                stats.parsed_responses += 1;
                exercise_response(r);
            }
        }
    }
    msgs.truncate(3);
    msgs
}

/// A response through our Via, re-sealed with `key` for its real return hop
/// (only when that hop is an address: a name would be looked up in DNS).
fn resealed(input: &[u8], key: &HopKey, rng: &mut Rng) -> Option<Response> {
    let Ok(Parsed::Response(resp)) = sip::parse_datagram(Bytes::copy_from_slice(input)) else {
        return None;
    };
    let old = resp.top_via().ok()?.branch?;
    let mut next = resp.clone();
    next.pop_via();
    let (transport, host, port) = return_hop(&next.top_via().ok()?);
    host.trim_matches(['[', ']'])
        .parse::<std::net::IpAddr>()
        .ok()?;
    let id = format!("{BRANCH_PREFIX}{:016x}-", rng.next());
    let branch = key.seal(
        &id,
        &Hop {
            transport: &transport,
            host: &host,
            port,
        },
    );
    let at = find(input, old.as_bytes())?;
    let mut b = input[..at].to_vec();
    b.extend_from_slice(branch.as_bytes());
    b.extend_from_slice(&input[at + old.len()..]);
    match sip::parse_datagram(Bytes::from(b)) {
        Ok(Parsed::Response(r)) => Some(r),
        _ => None,
    }
}

// ------------------------------------------------------------ harness

/// The in-process cores the direct calls use (not bound to any socket).
struct Cores {
    digest: Arc<Core>,
    off: Arc<Core>,
    /// Trusts 127.0.0.0/8: only for the pure steps (`to_save`, `decide`),
    /// never for the pipeline (a trusted relay would look names up in DNS).
    trusted: Core,
}

fn settings(auth: AuthMode, listen: &str) -> Settings {
    Settings {
        listen: listen.parse().expect("addr"),
        locsvc: vec![NO_LOCSVC.into()],
        domains: vec!["example.com".into()],
        mode: Mode::Proxy,
        metrics_listen: None,
        auth,
        rate_limit: 0,
        auth_secret: Some("fuzz".into()),
        ..Settings::default()
    }
}

fn core(s: Settings) -> Core {
    let client =
        LocsvcClient::new(&s.locsvc, s.locsvc_timeout, None, String::new()).expect("client");
    let local = s.listen;
    let mut c = Core::new(s, client, Arc::new(Metrics::new()), local);
    c.hop_key = HopKey::from_bytes([0x42; 32]);
    c
}

/// A real shim on 127.0.0.1:0.
struct Shim {
    addr: SocketAddr,
    serving: Serving<()>,
}

async fn start_shim(auth: AuthMode) -> Shim {
    let app = App::build(settings(auth, "127.0.0.1:0"))
        .await
        .expect("shim builds");
    Shim {
        addr: app.local_addr(),
        serving: Serving::spawn(|signal| app.run(signal)),
    }
}

/// The shim answers a valid OPTIONS to itself with 200 within 2 s.
async fn answers_options(shim: SocketAddr, n: u64) -> Result<(), String> {
    let sock = UdpSocket::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let me = sock.local_addr().map_err(|e| e.to_string())?;
    let call_id = format!("alive-{n}@fuzz");
    let msg = format!(
        "OPTIONS sip:{shim} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK-alive{n};rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:probe@example.com>;tag=a{n}\r\nTo: <sip:{shim}>\r\n\
         Call-ID: {call_id}\r\nCSeq: {n} OPTIONS\r\nContent-Length: 0\r\n\r\n"
    );
    sock.send_to(msg.as_bytes(), shim)
        .await
        .map_err(|e| e.to_string())?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    let mut buf = vec![0u8; 65536];
    loop {
        let got = tokio::time::timeout_at(deadline, sock.recv_from(&mut buf)).await;
        let Ok(Ok((len, _))) = got else {
            return Err(format!(
                "no 200 to OPTIONS from the shim at {shim} within 2 s"
            ));
        };
        let text = String::from_utf8_lossy(&buf[..len]);
        if text.starts_with("SIP/2.0 200 ") && text.contains(&call_id) {
            return Ok(());
        }
    }
}

/// Panics seen anywhere in this process (tokio catches those of tasks; the
/// hook still runs first).
static PANICS: Mutex<Vec<String>> = Mutex::new(Vec::new());
static HOOK: Once = Once::new();

fn install_panic_hook() {
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let bt = std::backtrace::Backtrace::force_capture();
            let thread = std::thread::current().name().unwrap_or("?").to_string();
            if let Ok(mut p) = PANICS.lock() {
                p.push(format!("thread {thread}: {info}\n{bt}"));
            }
            previous(info);
        }));
    });
}

fn panics() -> Vec<String> {
    PANICS.lock().map(|p| p.clone()).unwrap_or_default()
}

/// `<target>/fuzz-failures`: CARGO_TARGET_DIR when set, else the target
/// directory this test binary was built into, else the workspace's.
fn failure_dir() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(|t| workspace.join(t))
        .or_else(|| {
            // <target>/<profile>/deps/<test binary>
            let exe = std::env::current_exe().ok()?;
            exe.ancestors()
                .find(|a| a.file_name().is_some_and(|n| n == "deps"))
                .and_then(|deps| deps.parent()?.parent())
                .map(Path::to_path_buf)
        })
        .unwrap_or_else(|| workspace.join("target"));
    target.join("fuzz-failures")
}

fn save_failure(name: &str, input: &[u8]) -> PathBuf {
    let dir = failure_dir();
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(name);
    let _ = std::fs::write(&path, input);
    path
}

fn read_dir_sorted(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    Some((name, std::fs::read(e.path()).ok()?))
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    let parsed = match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(&hex.replace('_', ""), 16),
        None => v.replace('_', "").parse(),
    };
    Some(parsed.unwrap_or_else(|_| panic!("{name}={v:?} is not a number")))
}

/// The input being processed, for the watchdog.
struct Progress {
    ticks: AtomicU64,
    done: AtomicBool,
    current: Mutex<(String, Vec<u8>)>,
}

fn start_watchdog(p: Arc<Progress>) {
    std::thread::spawn(move || {
        let mut last = (p.ticks.load(Ordering::SeqCst), Instant::now());
        while !p.done.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(250));
            let now = p.ticks.load(Ordering::SeqCst);
            if now != last.0 {
                last = (now, Instant::now());
            } else if last.1.elapsed() > WATCHDOG {
                let (what, input) = p.current.lock().map(|c| c.clone()).unwrap_or_default();
                let path = save_failure(&format!("{what}.hang.sip"), &input);
                eprintln!(
                    "fuzz: no progress for {WATCHDOG:?} on {what}: a hang; input written to {}",
                    path.display()
                );
                std::process::exit(101);
            }
        }
    });
}

/// Fails the test for `input` (`what` names the seed and iteration).
fn fail(what: &str, why: &str, input: &[u8]) -> ! {
    let path = save_failure(&format!("{what}.sip"), input);
    panic!(
        "fuzz failure at {what}: {why}\ninput ({} bytes) written to {}\n{:?}\npanics recorded:\n{}",
        input.len(),
        path.display(),
        String::from_utf8_lossy(&input[..input.len().min(2000)]),
        panics().join("\n---\n")
    );
}

/// The pipeline for one message on `core`, in its own task so a panic is
/// reported as a JoinError, bounded by `STALL`.
async fn pipeline(core: &Arc<Core>, msg: Parsed, transport: Transport) -> Result<usize, String> {
    let core = core.clone();
    let task = tokio::spawn(async move {
        match msg {
            Parsed::Request(r) => core.handle_request(r, src(transport)).await.len(),
            Parsed::Response(r) => core
                .handle_response(r, src(transport))
                .await
                .into_iter()
                .count(),
        }
    });
    match tokio::time::timeout(STALL, task).await {
        Ok(Ok(n)) => Ok(n),
        Ok(Err(e)) if e.is_panic() => Err(format!("the pipeline panicked: {e}")),
        Ok(Err(e)) => Err(format!("the pipeline task failed: {e}")),
        Err(_) => Err(format!("the pipeline stalled for more than {STALL:?}")),
    }
}

/// What one pipeline call left: answers sent, or the failure with its input.
type Call = Result<usize, (String, String, Arc<Vec<u8>>)>;

/// Counts a finished pipeline call, or fails the test with its input.
fn settle(done: Option<Result<Call, tokio::task::JoinError>>, stats: &mut Stats) {
    match done {
        Some(Ok(Ok(n))) => stats.pipeline_answers += n as u64,
        Some(Ok(Err((what, why, input)))) => fail(&what, &why, &input),
        Some(Err(e)) => panic!("a pipeline wrapper task failed: {e}"),
        None => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mutated_sip_never_panics_or_stalls_the_parser_or_the_shim() {
    install_panic_hook();
    let secs = env_u64("FUZZ_SECS").unwrap_or(DEFAULT_SECS);
    let seed = env_u64("FUZZ_SEED").unwrap_or(DEFAULT_SEED);
    let max_iters = env_u64("FUZZ_ITERS").unwrap_or(u64::MAX);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let corpus: Vec<Vec<u8>> = read_dir_sorted(&root.join("corpus"))
        .into_iter()
        .map(|(_, b)| b)
        .collect();
    assert!(
        corpus.len() >= 20,
        "the seed corpus in {} has {} files",
        root.join("corpus").display(),
        corpus.len()
    );
    let crashes = read_dir_sorted(&root.join("crashes"));
    eprintln!(
        "fuzz: FUZZ_SEED={seed:#x} FUZZ_SECS={secs} corpus={} crashes={} failures go to {}",
        corpus.len(),
        crashes.len(),
        failure_dir().display()
    );

    let cores = Cores {
        digest: Arc::new(core(settings(AuthMode::Digest, "127.0.0.1:5060"))),
        off: Arc::new(core(settings(AuthMode::Off, "127.0.0.1:5060"))),
        trusted: core(Settings {
            trusted: vec!["127.0.0.0/8".parse().expect("cidr")],
            ..settings(AuthMode::Digest, "127.0.0.1:5060")
        }),
    };
    let mut shims = vec![
        start_shim(AuthMode::Digest).await,
        start_shim(AuthMode::Off).await,
    ];
    for s in &shims {
        if let Err(e) = answers_options(s.addr, 0).await {
            panic!("before fuzzing: {e}");
        }
    }
    let sender = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind"));
    // Drains the shims' answers to the fuzzed datagrams.
    let answers = Arc::new(AtomicU64::new(0));
    let drain = {
        let (sender, answers) = (sender.clone(), answers.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            while sender.recv_from(&mut buf).await.is_ok() {
                answers.fetch_add(1, Ordering::Relaxed);
            }
        })
    };

    let progress = Arc::new(Progress {
        ticks: AtomicU64::new(0),
        done: AtomicBool::new(false),
        current: Mutex::new((String::new(), Vec::new())),
    });
    start_watchdog(progress.clone());

    let mut stats = Stats::default();
    let mut mutations: std::collections::BTreeMap<&str, u64> = Default::default();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(secs);
    // Replays first (crashes, then every seed as is), then mutations.
    let fixed: Vec<(String, Vec<u8>)> = crashes
        .into_iter()
        .map(|(n, b)| (format!("crash {n}"), b))
        .chain(
            read_dir_sorted(&root.join("corpus"))
                .into_iter()
                .map(|(n, b)| (format!("seed {n}"), b)),
        )
        .collect();
    let mut inflight = tokio::task::JoinSet::new();
    let mut iter: u64 = 0;
    let mut fixed_left = fixed.into_iter();
    loop {
        let (what, input) = match fixed_left.next() {
            Some(f) => f,
            None => {
                if Instant::now() >= deadline || iter >= max_iters {
                    break;
                }
                let (b, applied) = input_for(seed, iter, &corpus);
                for m in applied {
                    *mutations.entry(m).or_default() += 1;
                }
                iter += 1;
                (format!("seed-{seed:#x}-iter-{}", iter - 1), b)
            }
        };
        if let Ok(mut c) = progress.current.lock() {
            *c = (what.clone(), input.clone());
        }
        progress.ticks.fetch_add(1, Ordering::SeqCst);
        stats.inputs += 1;
        let mut rng = Rng::new(seed ^ 0xa5a5 ^ iter);

        // The synchronous targets; a panic is caught to name the input.
        let msgs = match std::panic::catch_unwind(AssertUnwindSafe(|| {
            exercise(&input, &cores, &mut rng, &mut stats)
        })) {
            Ok(m) => m,
            Err(_) => fail(&what, "a parser or pure-step panic (stack above)", &input),
        };

        // The real shims over UDP (fire and forget: an answer or none).
        if input.len() <= 65507 {
            for s in &shims {
                let _ = sender.send_to(&input, s.addr).await;
            }
        }

        // The pipeline in this process, auth on and off: up to `IN_FLIGHT`
        // calls at once (locsvc's refusals are waited for, not computed).
        let shared = Arc::new(input.clone());
        let mut calls: Vec<(Arc<Core>, Parsed, Transport)> = Vec::new();
        for m in msgs {
            let transport = *rng.pick(&[Transport::Udp, Transport::Tcp]);
            let copy = match &m {
                Parsed::Request(r) => Parsed::Request(r.clone()),
                Parsed::Response(r) => Parsed::Response(r.clone()),
            };
            calls.push((cores.digest.clone(), copy, transport));
            calls.push((cores.off.clone(), m, transport));
        }
        if let Some(r) = resealed(&input, &cores.off.hop_key, &mut rng) {
            stats.resealed += 1;
            calls.push((cores.off.clone(), Parsed::Response(r), Transport::Udp));
        }
        for (core, msg, transport) in calls {
            let (what, input) = (what.clone(), shared.clone());
            inflight.spawn(async move {
                pipeline(&core, msg, transport)
                    .await
                    .map_err(|why| (what, why, input))
            });
            while inflight.len() > IN_FLIGHT {
                settle(inflight.join_next().await, &mut stats);
            }
        }

        if !panics().is_empty() {
            fail(&what, "a task panicked (around this input)", &input);
        }
        if iter > 0 && iter.is_multiple_of(CHECK_EVERY) {
            for s in &shims {
                if let Err(e) = answers_options(s.addr, iter).await {
                    fail(&what, &e, &input);
                }
            }
        }
    }
    while let Some(r) = inflight.join_next().await {
        settle(Some(r), &mut stats);
    }
    progress.done.store(true, Ordering::SeqCst);
    let elapsed = started.elapsed();

    // The shims still work after everything they were sent, and no task
    // of theirs panicked.
    for s in &shims {
        if let Err(e) = answers_options(s.addr, iter + 1).await {
            panic!("after {iter} iterations: {e}");
        }
    }
    let seen = panics();
    assert!(
        seen.is_empty(),
        "panics during fuzzing:\n{}",
        seen.join("\n---\n")
    );
    drain.abort();
    for s in &mut shims {
        tokio::time::timeout(Duration::from_secs(5), s.serving.stop())
            .await
            .expect("the shim stops within 5 s");
    }
    eprintln!(
        "fuzz: {iter} mutated inputs ({} in all) in {:.1} s = {:.0}/s; {stats:?}; \
         shim answers {}; mutations {mutations:?}",
        stats.inputs,
        elapsed.as_secs_f64(),
        iter as f64 / elapsed.as_secs_f64().max(0.001),
        answers.load(Ordering::Relaxed)
    );
}
