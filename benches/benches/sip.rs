//! The SIP work proxy-shim does per message, through its `sip` facade (the
//! only code that touches the sipx-sip parser): parsing a REGISTER and an
//! INVITE, reading what `register::to_save` and `forward::handle` read,
//! the edits a stateless proxy makes, building the 200 OK of a REGISTER,
//! and serializing.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use proxy_shim::sip::{self, Contacts, Parsed, Request};

/// A REGISTER as a current softphone sends it (RFC 5626 instance and
/// reg-id, rport, User-Agent, Allow, Supported).
const REGISTER: &str = "REGISTER sip:example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK.3f9a2c71;rport\r\n\
From: <sip:alice@example.com>;tag=8mzR1sXq4\r\n\
To: <sip:alice@example.com>\r\n\
CSeq: 21 REGISTER\r\n\
Call-ID: 6Yx3gEoN9p@192.0.2.10\r\n\
Max-Forwards: 70\r\n\
Supported: replaces, outbound, gruu, path\r\n\
Accept: application/sdp\r\n\
Accept: text/plain\r\n\
Accept: application/vnd.gsma.rcs-ft-http+xml\r\n\
Contact: <sip:alice@192.0.2.10:5060;transport=udp>;+sip.instance=\"<urn:uuid:3b6e2a1c-5d7f-4e8a-9c0b-1f2d3e4a5b6c>\";reg-id=1;expires=3600;q=0.8\r\n\
Expires: 3600\r\n\
User-Agent: Linphone-Desktop/5.2.6 (alice-laptop) ubuntu/24.04 Qt/5.15.13 LinphoneSDK/5.3.72\r\n\
Allow: INVITE, ACK, CANCEL, OPTIONS, BYE, REFER, NOTIFY, MESSAGE, SUBSCRIBE, INFO, PRACK, UPDATE\r\n\
Content-Length: 0\r\n\r\n";

/// An INVITE with an SDP offer, as a UA sends it to its proxy.
const INVITE: &str = "INVITE sip:bob@example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK.77d1e5a0;rport\r\n\
From: \"Alice\" <sip:alice@example.com>;tag=J4q9vZ2b\r\n\
To: <sip:bob@example.com>\r\n\
CSeq: 20 INVITE\r\n\
Call-ID: 1Wq8hT0cLk@192.0.2.10\r\n\
Max-Forwards: 70\r\n\
Supported: replaces, outbound, gruu, 100rel\r\n\
Allow: INVITE, ACK, CANCEL, OPTIONS, BYE, REFER, NOTIFY, MESSAGE, SUBSCRIBE, INFO, PRACK, UPDATE\r\n\
Contact: <sip:alice@192.0.2.10:5060;transport=udp>;+sip.instance=\"<urn:uuid:3b6e2a1c-5d7f-4e8a-9c0b-1f2d3e4a5b6c>\"\r\n\
User-Agent: Linphone-Desktop/5.2.6 (alice-laptop) ubuntu/24.04 Qt/5.15.13 LinphoneSDK/5.3.72\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 345\r\n\r\n\
v=0\r\n\
o=alice 2890844526 2890844526 IN IP4 192.0.2.10\r\n\
s=Talk\r\n\
c=IN IP4 192.0.2.10\r\n\
t=0 0\r\n\
m=audio 7078 RTP/AVP 96 0 8 101\r\n\
a=rtpmap:96 opus/48000/2\r\n\
a=fmtp:96 useinbandfec=1\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=rtcp-fb:* trr-int 1000\r\n\
a=rtcp-fb:* ccm tmmbr\r\n\
m=video 9078 RTP/AVP 103\r\n\
a=rtpmap:103 VP8/90000\r\n\
a=rtcp-fb:103 nack pli\r\n\
a=sendrecv\r\n";

fn request(raw: &'static str) -> Request {
    match sip::parse_datagram(Bytes::from_static(raw.as_bytes())) {
        Ok(Parsed::Request(r)) => r,
        other => panic!("not a request: {other:?}"),
    }
}

/// What `register::to_save` reads from a REGISTER, in its order.
fn read_register(r: &Request) -> (usize, u32, Option<u32>, String, usize, String) {
    let (to, _) = r.to().expect("To");
    let aor = to.aor().expect("AoR");
    let contacts = match r.contacts().expect("Contact") {
        Contacts::List(l) => l.len(),
        Contacts::Absent | Contacts::Wildcard => 0,
    };
    let (cseq, _) = r.cseq().expect("CSeq");
    let path = if r.lists_token("Supported", "path") {
        r.path().expect("Path").len()
    } else {
        0
    };
    let expires = r.expires().expect("Expires");
    let call_id = r.call_id().expect("Call-ID");
    let ua = r.header("User-Agent").unwrap_or_default();
    (contacts, cseq, expires, call_id, path + aor.len(), ua)
}

fn parse(c: &mut Criterion) {
    let mut g = c.benchmark_group("sip/parse");
    for (name, raw) in [("register", REGISTER), ("invite", INVITE)] {
        assert_eq!(raw.len(), request(raw).to_bytes().len());
        g.bench_function(name, |b| {
            b.iter(|| {
                black_box(sip::parse_datagram(black_box(Bytes::from_static(
                    raw.as_bytes(),
                ))))
            })
        });
    }
    g.finish();
}

fn serialize(c: &mut Criterion) {
    let mut g = c.benchmark_group("sip/serialize");
    for (name, raw) in [("register", REGISTER), ("invite", INVITE)] {
        let r = request(raw);
        g.bench_function(name, |b| b.iter(|| black_box(black_box(&r).to_bytes())));
    }
    g.finish();
}

fn hot_paths(c: &mut Criterion) {
    let mut g = c.benchmark_group("sip/hot_path");
    // REGISTER in: parse, read every field Save needs, answer 200 OK with
    // the binding (what the shim does around one Save call).
    assert_eq!(read_register(&request(REGISTER)).0, 1);
    let contact = "<sip:alice@192.0.2.10:5060;transport=udp>;expires=3600;q=0.80;\
                   +sip.instance=\"<urn:uuid:3b6e2a1c-5d7f-4e8a-9c0b-1f2d3e4a5b6c>\";reg-id=1"
        .to_string();
    let date = "Mon, 23 Nov 2026 12:00:00 GMT".to_string();
    g.bench_function("register_read_and_200", |b| {
        b.iter(|| {
            let Ok(Parsed::Request(r)) =
                sip::parse_datagram(black_box(Bytes::from_static(REGISTER.as_bytes())))
            else {
                unreachable!("REGISTER parses")
            };
            black_box(read_register(&r));
            let extra = [("Contact", contact.clone()), ("Date", date.clone())];
            black_box(sip::response(&r, 200, "OK", "ps-0123456789abcdef", &extra))
        })
    });
    // INVITE in proxy mode: parse, read routing fields, retarget to the
    // contact, stamp and push Via, decrement Max-Forwards, serialize.
    g.bench_function("invite_route_and_forward", |b| {
        let src = "198.51.100.7:40123".parse().expect("address");
        b.iter(|| {
            let Ok(Parsed::Request(mut r)) =
                sip::parse_datagram(black_box(Bytes::from_static(INVITE.as_bytes())))
            else {
                unreachable!("INVITE parses")
            };
            let (_, to_tag) = r.to().expect("To");
            let mf = r.max_forwards().expect("Max-Forwards");
            r.call_id().expect("Call-ID");
            r.cseq().expect("CSeq");
            let routes = r.routes().expect("Route");
            let uri = r.uri().expect("Request-URI");
            black_box((to_tag, routes, uri.aor()));
            let via = r.top_via().expect("Via");
            black_box(via.branch);
            r.set_uri("sip:bob@203.0.113.20:5060;transport=udp")
                .expect("contact");
            r.stamp_top_via(src);
            r.set_max_forwards(mf.map_or(70, |m| m.saturating_sub(1)));
            r.push_via("SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK-ps-0123456789abcdef")
                .expect("Via");
            black_box(r.to_bytes())
        })
    });
    g.finish();
}

criterion_group!(benches, parse, serialize, hot_paths);
criterion_main!(benches);
