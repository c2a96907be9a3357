//! `sip-probe`: an open-loop SIP latency probe with microsecond resolution.
//!
//! sipp's response times move in the steps of its internal clock (4 ms on
//! this project's machines), which hides every difference under a few
//! milliseconds. The probe sends requests on a fixed schedule from one UDP
//! socket and timestamps each send and each final answer with the monotonic
//! clock, on blocking threads that do nothing else:
//!
//! - `register`: a REGISTER of a new user per request, answered 200;
//! - `redirect`: an INVITE to a registered user, answered 302 (ACKed);
//! - `relay`: an INVITE relayed by the target to the user's contact, which
//!   is the probe's own UAS socket (the users registered from that port):
//!   the UAS answers 200 at once, the target relays it back, the probe
//!   ACKs it through the target (in-dialog, by the UAS's Contact).
//!
//! A request succeeds when its expected final answer arrives within the
//! timeout; no retransmissions (on loopback a lost datagram is an overload,
//! and it shows as a failure).

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::stats::{MAX_LATENCY_US, micros};

/// What the probe sends and what answer counts as success.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// REGISTER of a new user, expecting 200.
    Register,
    /// INVITE, expecting 302.
    Redirect,
    /// INVITE relayed to the probe's UAS, expecting its 200.
    Relay,
}

impl Mode {
    /// The final status that counts as success.
    pub fn expected(self) -> u16 {
        match self {
            Mode::Redirect => 302,
            Mode::Register | Mode::Relay => 200,
        }
    }
}

/// One probe run.
#[derive(Debug, Clone)]
pub struct Probe {
    pub target: SocketAddr,
    pub mode: Mode,
    /// Requests per second.
    pub rate: u32,
    pub requests: u64,
    /// Users are `{prefix}{n}@{domain}`; INVITEs cycle over `1..=users`,
    /// REGISTERs take `n` = the request's number (each user new).
    pub prefix: String,
    pub users: u64,
    pub domain: String,
    /// The UAS socket's port (relay): the port the users registered from.
    pub uas_port: Option<u16>,
    /// A final answer later than this is a failure.
    pub timeout: Duration,
    /// Successes at least this slow are listed in `Outcome::slow`.
    pub slow: Option<Duration>,
}

/// What a run measured.
#[derive(Debug)]
pub struct Outcome {
    pub sent: u64,
    /// Expected answers within the timeout; their latency is in `latency`.
    pub ok: u64,
    /// Another final status, or the expected one too late.
    pub wrong: u64,
    /// No final answer at all.
    pub missing: u64,
    /// Microseconds from send to the final answer, successes only.
    pub latency: Histogram<u64>,
    /// Seconds the sending took (the achieved rate is `sent / send_secs`).
    pub send_secs: f64,
    /// (ms from the start to the send, µs to the answer) of each success at
    /// least `Probe::slow` slow: when the stalls happened.
    pub slow: Vec<(u64, u64)>,
}

impl Outcome {
    /// One tab-separated line: sent ok failed achieved p50 p90 p99 p99.9 max
    /// (latencies in µs; `nan` when nothing succeeded).
    pub fn tsv(&self) -> String {
        let q = |q: f64| {
            if self.latency.is_empty() {
                "nan".to_string()
            } else {
                self.latency.value_at_quantile(q).to_string()
            }
        };
        let max = if self.latency.is_empty() {
            "nan".to_string()
        } else {
            self.latency.max().to_string()
        };
        #[allow(clippy::cast_precision_loss)]
        let achieved = self.sent as f64 / self.send_secs.max(1e-9);
        format!(
            "{}\t{}\t{}\t{achieved:.0}\t{}\t{}\t{}\t{}\t{max}",
            self.sent,
            self.ok,
            self.wrong + self.missing,
            q(0.5),
            q(0.9),
            q(0.99),
            q(0.999),
        )
    }
}

/// Runs the probe to the end: sends `requests` at `rate`, then waits up to
/// the timeout for the last answers.
pub fn run(p: &Probe) -> io::Result<Outcome> {
    if p.rate == 0 || p.requests == 0 || p.users == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "rate, requests and users must be positive",
        ));
    }
    let uac = UdpSocket::bind("127.0.0.1:0")?;
    let local = uac.local_addr()?;
    let uas = match (p.mode, p.uas_port) {
        (Mode::Relay, Some(port)) => Some(UdpSocket::bind(("127.0.0.1", port))?),
        (Mode::Relay, None) => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "relay mode needs the UAS port the users registered from",
            ));
        }
        _ => None,
    };
    let start = Instant::now();
    let n = usize::try_from(p.requests).map_err(|_| io::Error::other("too many requests"))?;
    // Send time of request i in ns since `start`, +1 (0 = not sent yet).
    let sent_at: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());
    let answered: Arc<Vec<AtomicBool>> = Arc::new((0..n).map(|_| AtomicBool::new(false)).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let tag = format!("{:x}", std::process::id());

    let uas_thread = match uas {
        Some(sock) => {
            sock.set_read_timeout(Some(Duration::from_millis(50)))?;
            let stop = stop.clone();
            Some(thread::spawn(move || serve_uas(&sock, &stop)))
        }
        None => None,
    };

    let receiver = {
        let sock = uac.try_clone()?;
        sock.set_read_timeout(Some(Duration::from_millis(50)))?;
        let (sent_at, answered, stop) = (sent_at.clone(), answered.clone(), stop.clone());
        let (p, tag) = (p.clone(), tag.clone());
        thread::spawn(move || receive(&sock, &p, &tag, start, &sent_at, &answered, &stop))
    };

    let mut buf = String::with_capacity(1024);
    let interval_ns = 1_000_000_000f64 / f64::from(p.rate);
    for i in 0..p.requests {
        #[allow(clippy::cast_precision_loss)]
        let due = start + Duration::from_nanos((i as f64 * interval_ns) as u64);
        let now = Instant::now();
        if due > now {
            thread::sleep(due - now);
        }
        buf.clear();
        request(&mut buf, p, &tag, local, i);
        let at = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX - 1) + 1;
        sent_at[i as usize].store(at, Ordering::Release);
        uac.send_to(buf.as_bytes(), p.target)?;
    }
    let send_secs = start.elapsed().as_secs_f64();
    // The last answers may take up to the timeout.
    let deadline = Instant::now() + p.timeout;
    while Instant::now() < deadline && !answered.iter().all(|a| a.load(Ordering::Acquire)) {
        thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::Release);
    let (latency, ok, wrong, slow) = receiver
        .join()
        .map_err(|_| io::Error::other("receiver thread panicked"))?;
    if let Some(t) = uas_thread {
        t.join()
            .map_err(|_| io::Error::other("UAS thread panicked"))?;
    }
    let missing = answered
        .iter()
        .filter(|a| !a.load(Ordering::Acquire))
        .count() as u64;
    Ok(Outcome {
        sent: p.requests,
        ok,
        wrong,
        missing,
        latency,
        send_secs,
        slow,
    })
}

/// The UAC's receive loop: matches each final answer to its request by
/// Call-ID, records it once, ACKs INVITE answers. Returns (latency, ok,
/// wrong, slow successes).
fn receive(
    sock: &UdpSocket,
    p: &Probe,
    tag: &str,
    start: Instant,
    sent_at: &[AtomicU64],
    answered: &[AtomicBool],
    stop: &AtomicBool,
) -> (Histogram<u64>, u64, u64, Vec<(u64, u64)>) {
    let mut slow = Vec::new();
    let mut hist = Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("static bounds");
    let (mut ok, mut wrong) = (0u64, 0u64);
    let mut buf = vec![0u8; 65_536];
    let mut ack = String::with_capacity(512);
    let local = sock.local_addr().ok();
    while !stop.load(Ordering::Acquire) {
        let Ok((len, _)) = sock.recv_from(&mut buf) else {
            continue;
        };
        let now = start.elapsed();
        let Ok(text) = std::str::from_utf8(&buf[..len]) else {
            continue;
        };
        let Some(status) = status_of(text) else {
            continue;
        };
        if status < 200 {
            continue;
        }
        let Some(i) = header(text, "call-id", "i").and_then(|c| request_index(c, tag)) else {
            continue;
        };
        let Some(at) = sent_at.get(i).map(|a| a.load(Ordering::Acquire)) else {
            continue;
        };
        if at == 0 || answered[i].swap(true, Ordering::AcqRel) {
            continue;
        }
        let took = now.saturating_sub(Duration::from_nanos(at - 1));
        if status == p.mode.expected() && took <= p.timeout {
            ok += 1;
            hist.saturating_record(micros(took).max(1));
            if p.slow.is_some_and(|s| took >= s) {
                slow.push(((at - 1) / 1_000_000, micros(took)));
            }
        } else {
            wrong += 1;
        }
        if p.mode != Mode::Register
            && let Some(local) = local
        {
            ack.clear();
            if build_ack(&mut ack, text, p, local, i as u64) {
                let _ = sock.send_to(ack.as_bytes(), p.target);
            }
        }
    }
    (hist, ok, wrong, slow)
}

/// The UAS: answers every INVITE with 200 at once, ignores the rest.
fn serve_uas(sock: &UdpSocket, stop: &AtomicBool) {
    let mut buf = vec![0u8; 65_536];
    let mut out = String::with_capacity(1024);
    let Ok(local) = sock.local_addr() else {
        return;
    };
    while !stop.load(Ordering::Acquire) {
        let Ok((len, from)) = sock.recv_from(&mut buf) else {
            continue;
        };
        let Ok(text) = std::str::from_utf8(&buf[..len]) else {
            continue;
        };
        if !text.starts_with("INVITE ") {
            continue;
        }
        out.clear();
        answer_200(&mut out, text, local);
        let _ = sock.send_to(out.as_bytes(), from);
    }
}

/// Writes request number `i` of the run into `out`.
pub fn request(out: &mut String, p: &Probe, tag: &str, local: SocketAddr, i: u64) {
    use std::fmt::Write as _;
    let user = match p.mode {
        Mode::Register => i + 1,
        Mode::Redirect | Mode::Relay => i % p.users + 1,
    };
    let (prefix, domain) = (&p.prefix, &p.domain);
    let _ = match p.mode {
        Mode::Register => write!(
            out,
            "REGISTER sip:{domain} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {local};branch=z9hG4bK-{tag}-{i}\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:{prefix}{user}@{domain}>;tag={tag}-{i}\r\n\
             To: <sip:{prefix}{user}@{domain}>\r\n\
             Call-ID: probe-{tag}-{i}\r\n\
             CSeq: 1 REGISTER\r\n\
             Contact: <sip:{prefix}{user}@{local}>\r\n\
             Expires: 3600\r\n\
             Content-Length: 0\r\n\r\n"
        ),
        Mode::Redirect | Mode::Relay => write!(
            out,
            "INVITE sip:{prefix}{user}@{domain} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {local};branch=z9hG4bK-{tag}-{i}\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:caller@{domain}>;tag={tag}-{i}\r\n\
             To: <sip:{prefix}{user}@{domain}>\r\n\
             Call-ID: probe-{tag}-{i}\r\n\
             CSeq: 1 INVITE\r\n\
             Contact: <sip:caller@{local}>\r\n\
             Content-Length: 0\r\n\r\n"
        ),
    };
}

/// Writes the ACK of the final answer `resp` to INVITE `i`: for a non-2xx
/// the same transaction (same branch, the INVITE's Request-URI); for a 2xx
/// a new one to the answer's Contact (routed through the target). False
/// when the answer lacks what the ACK needs.
fn build_ack(out: &mut String, resp: &str, p: &Probe, local: SocketAddr, i: u64) -> bool {
    use std::fmt::Write as _;
    let Some(status) = status_of(resp) else {
        return false;
    };
    let Some(to) = header(resp, "to", "t") else {
        return false;
    };
    let tag = request_tag(resp);
    let (uri, branch) = if (200..300).contains(&status) {
        let Some(contact) = header(resp, "contact", "m") else {
            return false;
        };
        let uri = contact
            .split_once('<')
            .and_then(|(_, r)| r.split_once('>'))
            .map_or(contact, |(u, _)| u);
        (uri.to_string(), format!("z9hG4bK-{tag}-{i}-ack"))
    } else {
        let user = i % p.users + 1;
        (
            format!("sip:{}{user}@{}", p.prefix, p.domain),
            format!("z9hG4bK-{tag}-{i}"),
        )
    };
    let _ = write!(
        out,
        "ACK {uri} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {local};branch={branch}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:caller@{domain}>;tag={tag}-{i}\r\n\
         To: {to}\r\n\
         Call-ID: probe-{tag}-{i}\r\n\
         CSeq: 1 ACK\r\n\
         Content-Length: 0\r\n\r\n",
        domain = p.domain,
    );
    true
}

/// The run tag inside an answer's Call-ID (`probe-{tag}-{i}`).
fn request_tag(resp: &str) -> &str {
    header(resp, "call-id", "i")
        .and_then(|c| c.strip_prefix("probe-"))
        .and_then(|r| r.rsplit_once('-'))
        .map_or("", |(t, _)| t)
}

/// Writes the UAS's 200 to `invite`: every Via and Record-Route, From,
/// To with a tag, Call-ID and CSeq copied, its own Contact.
fn answer_200(out: &mut String, invite: &str, local: SocketAddr) {
    out.push_str("SIP/2.0 200 OK\r\n");
    for line in invite.split("\r\n").skip(1) {
        if line.is_empty() {
            break;
        }
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let name = name.trim().to_ascii_lowercase();
        match name.as_str() {
            "via" | "v" | "record-route" | "from" | "f" | "call-id" | "i" | "cseq" => {
                out.push_str(line);
                out.push_str("\r\n");
            }
            "to" | "t" => {
                out.push_str(line);
                if !value.contains(";tag=") {
                    out.push_str(";tag=uas");
                }
                out.push_str("\r\n");
            }
            _ => {}
        }
    }
    out.push_str("Contact: <sip:uas@");
    out.push_str(&local.to_string());
    out.push_str(">\r\nContent-Length: 0\r\n\r\n");
}

/// The status code of a response, None for a request.
pub fn status_of(msg: &str) -> Option<u16> {
    let rest = msg.strip_prefix("SIP/2.0 ")?;
    rest.get(..3)?.parse().ok()
}

/// The value of the first header named `long` or `short` (case-insensitive).
pub fn header<'a>(msg: &'a str, long: &str, short: &str) -> Option<&'a str> {
    for line in msg.split("\r\n").skip(1) {
        if line.is_empty() {
            return None;
        }
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let name = name.trim();
        if name.eq_ignore_ascii_case(long) || name.eq_ignore_ascii_case(short) {
            return Some(value.trim());
        }
    }
    None
}

/// Request number from a Call-ID of this run (`probe-{tag}-{i}`).
pub fn request_index(call_id: &str, tag: &str) -> Option<usize> {
    call_id
        .strip_prefix("probe-")?
        .strip_prefix(tag)?
        .strip_prefix('-')?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(mode: Mode) -> Probe {
        Probe {
            target: "127.0.0.1:5060".parse().unwrap(),
            mode,
            rate: 100,
            requests: 10,
            prefix: "inv-".into(),
            users: 3,
            domain: "example.com".into(),
            uas_port: None,
            timeout: Duration::from_secs(1),
            slow: None,
        }
    }

    #[test]
    fn an_invite_cycles_over_the_users_and_carries_its_number_in_the_call_id() {
        let mut s = String::new();
        let local = "127.0.0.1:4000".parse().unwrap();
        request(&mut s, &probe(Mode::Redirect), "ab", local, 4);
        assert!(
            s.starts_with("INVITE sip:inv-2@example.com SIP/2.0\r\n"),
            "{s}"
        );
        assert_eq!(header(&s, "call-id", "i"), Some("probe-ab-4"));
        assert_eq!(request_index("probe-ab-4", "ab"), Some(4));
        assert_eq!(request_index("probe-ac-4", "ab"), None);
        assert!(s.ends_with("\r\n\r\n"));
    }

    #[test]
    fn a_register_is_for_a_new_user_each_time() {
        let mut s = String::new();
        let local = "127.0.0.1:4000".parse().unwrap();
        request(&mut s, &probe(Mode::Register), "ab", local, 7);
        assert!(s.starts_with("REGISTER sip:example.com SIP/2.0\r\n"), "{s}");
        assert_eq!(header(&s, "to", "t"), Some("<sip:inv-8@example.com>"));
    }

    #[test]
    fn the_uas_answer_copies_the_vias_and_tags_the_to() {
        let invite = "INVITE sip:uas@127.0.0.1:4001 SIP/2.0\r\n\
                      Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKp\r\n\
                      v: SIP/2.0/UDP 127.0.0.1:4000;branch=z9hG4bK-ab-1\r\n\
                      f: <sip:caller@example.com>;tag=ab-1\r\n\
                      To: <sip:inv-2@example.com>\r\n\
                      Call-ID: probe-ab-1\r\nCSeq: 1 INVITE\r\nMax-Forwards: 69\r\n\r\n";
        let mut out = String::new();
        answer_200(&mut out, invite, "127.0.0.1:4001".parse().unwrap());
        assert_eq!(status_of(&out), Some(200));
        assert_eq!(out.matches("Via: ").count() + out.matches("v: ").count(), 2);
        assert_eq!(
            header(&out, "to", "t"),
            Some("<sip:inv-2@example.com>;tag=uas")
        );
        assert_eq!(
            header(&out, "contact", "m"),
            Some("<sip:uas@127.0.0.1:4001>")
        );
        assert!(!out.contains("Max-Forwards"));
    }

    #[test]
    fn a_302_is_acked_in_its_transaction_and_a_200_to_its_contact() {
        let p = probe(Mode::Relay);
        let local = "127.0.0.1:4000".parse().unwrap();
        let redirect = "SIP/2.0 302 Moved\r\nTo: <sip:inv-2@example.com>;tag=x\r\n\
                        Call-ID: probe-ab-4\r\nContact: <sip:a@10.0.0.1>\r\n\r\n";
        let mut ack = String::new();
        assert!(build_ack(&mut ack, redirect, &p, local, 4));
        assert!(
            ack.starts_with("ACK sip:inv-2@example.com SIP/2.0\r\n"),
            "{ack}"
        );
        assert!(ack.contains("branch=z9hG4bK-ab-4\r\n"), "{ack}");
        assert_eq!(
            header(&ack, "to", "t"),
            Some("<sip:inv-2@example.com>;tag=x")
        );
        let ok = "SIP/2.0 200 OK\r\nt: <sip:inv-2@example.com>;tag=uas\r\n\
                  i: probe-ab-4\r\nm: <sip:uas@127.0.0.1:4001>\r\n\r\n";
        ack.clear();
        assert!(build_ack(&mut ack, ok, &p, local, 4));
        assert!(
            ack.starts_with("ACK sip:uas@127.0.0.1:4001 SIP/2.0\r\n"),
            "{ack}"
        );
        assert!(ack.contains("branch=z9hG4bK-ab-4-ack\r\n"), "{ack}");
    }

    #[test]
    fn a_request_is_not_a_status_and_headers_end_at_the_blank_line() {
        assert_eq!(status_of("INVITE sip:a@b SIP/2.0\r\n"), None);
        assert_eq!(status_of("SIP/2.0 486 Busy Here\r\n"), Some(486));
        assert_eq!(
            header("SIP/2.0 200 OK\r\n\r\nCall-ID: body", "call-id", "i"),
            None
        );
    }

    #[test]
    fn against_a_local_redirector_every_request_is_timed() {
        // A minimal redirector on loopback: 302 to every INVITE.
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        server
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let addr = server.local_addr().unwrap();
        let done = Arc::new(AtomicBool::new(false));
        let (d, acks) = (done.clone(), Arc::new(AtomicU64::new(0)));
        let a = acks.clone();
        let t = thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while !d.load(Ordering::Acquire) {
                let Ok((n, from)) = server.recv_from(&mut buf) else {
                    continue;
                };
                let req = std::str::from_utf8(&buf[..n]).unwrap();
                if req.starts_with("ACK ") {
                    a.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let call = header(req, "call-id", "i").unwrap();
                let to = header(req, "to", "t").unwrap();
                let resp = format!(
                    "SIP/2.0 302 Moved\r\nTo: {to};tag=r\r\nCall-ID: {call}\r\n\
                     Contact: <sip:x@10.0.0.1>\r\nContent-Length: 0\r\n\r\n"
                );
                server.send_to(resp.as_bytes(), from).unwrap();
            }
        });
        let mut p = probe(Mode::Redirect);
        p.target = addr;
        p.rate = 500;
        p.requests = 50;
        // No answer is faster than zero: every success is listed as slow.
        p.slow = Some(Duration::ZERO);
        let out = run(&p).unwrap();
        // The last ACK leaves as its 302 is counted: give it time to land.
        let until = Instant::now() + Duration::from_secs(5);
        while acks.load(Ordering::Relaxed) < 50 && Instant::now() < until {
            thread::sleep(Duration::from_millis(5));
        }
        done.store(true, Ordering::Release);
        t.join().unwrap();
        assert_eq!((out.sent, out.ok, out.wrong, out.missing), (50, 50, 0, 0));
        assert_eq!(out.latency.len(), 50);
        assert_eq!(acks.load(Ordering::Relaxed), 50);
        assert_eq!(out.tsv().split('\t').count(), 9);
        // 50 sends at 500/s: all within the first ~100 ms, none slower
        // than the histogram's highest.
        assert_eq!(out.slow.len(), 50);
        assert!(
            out.slow
                .iter()
                .all(|&(at_ms, took_us)| at_ms < 1000 && took_us <= out.latency.max())
        );
    }
}
