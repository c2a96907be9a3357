//! Pins each case the facade must read or edit right (see DESIGN.md: the
//! parser decision), so a library upgrade that regresses shows up at once.

use bytes::Bytes;

use super::*;

const REG: &str = "REGISTER sip:example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP [2001:db8::1]:5060;branch=z9hG4bK1;rport\r\n\
Max-Forwards: 70\r\n\
To: <sip:alice@example.com>\r\n\
From: <sip:alice@example.com>;tag=a1\r\n\
Call-ID: c1@h\r\n\
CSeq: 7 REGISTER\r\n\
Contact: <sip:alice@[2001:db8::1]:5060;transport=udp>;expires=60;q=0.5;+sip.instance=\"<urn:uuid:00000000-0000-0000-0000-000000000001>\";reg-id=1, \"Al, B\" <sip:alice@192.0.2.1>;q=1.0\r\n\
Contact: sip:alice@192.0.2.2;expires=30,\r\n <sip:alice@192.0.2.3>\r\n\
Path: <sip:p1.example.com;lr>,<sip:p2.example.com;lr>\r\n\
Path: <sip:p3.example.com;lr>\r\n\
Supported: path\r\n\
Expires: 600\r\n\
Content-Length: 0\r\n\r\n";

fn request(s: &str) -> Request {
    match parse_datagram(Bytes::copy_from_slice(s.as_bytes())) {
        Ok(Parsed::Request(r)) => r,
        other => panic!("not a request: {other:?}"),
    }
}

fn contacts(r: &Request) -> Vec<ContactEntry> {
    match r.contacts() {
        Ok(Contacts::List(l)) => l,
        other => panic!("no contact list: {other:?}"),
    }
}

#[test]
fn comma_joined_and_folded_contact_rows_yield_every_contact_in_order() {
    let r = request(REG);
    let uris: Vec<_> = contacts(&r).into_iter().map(|c| c.uri).collect();
    assert_eq!(
        uris,
        [
            "sip:alice@[2001:db8::1]:5060;transport=udp",
            "sip:alice@192.0.2.1",
            "sip:alice@192.0.2.2",
            "sip:alice@192.0.2.3"
        ]
    );
}

#[test]
fn contact_parameters_expires_q_instance_and_reg_id_are_read() {
    let c = contacts(&request(REG));
    assert_eq!(c[0].expires, Some(60));
    assert_eq!(c[0].q, Some(0.5));
    assert_eq!(
        c[0].instance,
        "<urn:uuid:00000000-0000-0000-0000-000000000001>"
    );
    assert_eq!(c[0].reg_id, 1);
    assert_eq!(c[1].q, Some(1.0));
    assert_eq!(c[2].expires, Some(30));
    assert_eq!(c[3].expires, None);
}

#[test]
fn an_ipv6_contact_keeps_its_brackets_and_exposes_the_address() {
    let c = contacts(&request(REG));
    let v = c[0].view.clone().unwrap();
    assert_eq!(v.host, "2001:db8::1");
    assert_eq!(v.host_for_uri(), "[2001:db8::1]");
    assert_eq!(v.port, Some(5060));
    assert_eq!(v.transport.as_deref(), Some("udp"));
    let via = request(REG).top_via().unwrap();
    assert_eq!(via.host, "2001:db8::1");
    assert_eq!(via.rport, Some(None));
}

#[test]
fn multiple_path_rows_and_comma_joined_paths_keep_their_order() {
    let r = request(REG);
    assert_eq!(
        r.path().unwrap(),
        [
            "sip:p1.example.com;lr",
            "sip:p2.example.com;lr",
            "sip:p3.example.com;lr"
        ]
    );
    assert!(r.lists_token("Supported", "path"));
    assert!(!r.lists_token("Supported", "outbound"));
}

#[test]
fn contact_star_is_a_wildcard_and_star_with_addresses_is_bad() {
    let star = REG
        .replace(
            "Contact: <sip:alice@[2001",
            "Contact: *\r\nX-Old: <sip:alice@[2001",
        )
        .replace(
            "Contact: sip:alice@192.0.2.2;expires=30,\r\n <sip:alice@192.0.2.3>\r\n",
            "",
        );
    assert_eq!(request(&star).contacts(), Ok(Contacts::Wildcard));
    let mixed = REG.replace("Contact: sip:alice@192.0.2.2", "Contact: *\r\nY: x");
    assert_eq!(
        request(&mixed).contacts(),
        Err(HeaderProblem::Bad("Contact"))
    );
}

#[test]
fn a_register_without_contact_is_a_query() {
    let q = REG
        .lines()
        .filter(|l| !l.starts_with("Contact") && !l.starts_with(" <sip"))
        .map(|l| format!("{l}\r\n"))
        .collect::<String>()
        + "\r\n";
    assert_eq!(request(&q).contacts(), Ok(Contacts::Absent));
}

#[test]
fn a_parsed_message_reserializes_byte_for_byte() {
    assert_eq!(request(REG).to_bytes().as_ref(), REG.as_bytes());
}

#[test]
fn to_call_id_cseq_and_expires_are_read() {
    let r = request(REG);
    let (to, tag) = r.to().unwrap();
    assert_eq!(to.aor().unwrap(), "sip:alice@example.com");
    assert_eq!(tag, None);
    assert_eq!(r.call_id().unwrap(), "c1@h");
    assert_eq!(r.cseq().unwrap(), (7, "REGISTER".to_string()));
    assert_eq!(r.expires().unwrap(), Some(600));
    assert_eq!(r.max_forwards().unwrap(), Some(70));
}

#[test]
fn a_malformed_contact_is_a_bad_header_not_a_drop() {
    let r = request(&REG.replace("Contact: sip:alice@192.0.2.2", "Contact: <sip:"));
    assert_eq!(r.contacts(), Err(HeaderProblem::Bad("Contact")));
    let r = request(&REG.replace("q=0.5", "q=high"));
    assert_eq!(r.contacts(), Err(HeaderProblem::Bad("Contact")));
}

#[test]
fn a_declared_body_above_the_limit_is_refused_before_allocation() {
    let big = "REGISTER sip:e SIP/2.0\r\nContent-Length: 999999999\r\n\r\n";
    let mut f = StreamFramer::default();
    assert!(matches!(
        f.push(big.as_bytes()),
        Err(ParseError::TooLarge(_))
    ));
    let huge = vec![b'a'; MAX_MESSAGE_BYTES + 1];
    assert!(matches!(
        parse_datagram(Bytes::from(huge)),
        Err(ParseError::TooLarge(_))
    ));
}

#[test]
fn garbage_is_not_a_message() {
    assert!(parse_datagram(Bytes::from_static(b"\x00\xffhello")).is_err());
    assert!(parse_datagram(Bytes::from_static(b"")).is_err());
}

#[test]
fn the_stream_framer_splits_by_content_length_and_counts_keepalives() {
    let invite = "INVITE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bKx\r\nTo: <sip:bob@example.com>\r\nFrom: <sip:a@b>;tag=1\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\nContent-Length: 5\r\n\r\nhello";
    let stream = format!("\r\n\r\n{REG}{invite}");
    let mut f = StreamFramer::default();
    let (mut msgs, mut pings) = (Vec::new(), 0);
    for chunk in stream.as_bytes().chunks(7) {
        let (m, k) = f.push(chunk).unwrap();
        msgs.extend(m);
        pings += k;
    }
    assert_eq!(msgs.len(), 2);
    assert_eq!(pings, 2);
    assert_eq!(f.pending(), 0);
}

#[test]
fn a_response_echoes_via_from_to_call_id_cseq_and_adds_a_to_tag() {
    let r = request(REG);
    let out = response(
        &r,
        423,
        "Interval Too Brief",
        "tag9",
        &[("Min-Expires", "60".into())],
    )
    .unwrap();
    let text = String::from_utf8(out.to_vec()).unwrap();
    assert!(
        text.starts_with("SIP/2.0 423 Interval Too Brief\r\n"),
        "{text}"
    );
    assert!(text.contains("Via: SIP/2.0/UDP [2001:db8::1]:5060;branch=z9hG4bK1;rport\r\n"));
    assert!(
        text.contains("To: <sip:alice@example.com>;tag=tag9\r\n"),
        "{text}"
    );
    assert!(text.contains("From: <sip:alice@example.com>;tag=a1\r\n"));
    assert!(text.contains("Call-ID: c1@h\r\n"));
    assert!(text.contains("CSeq: 7 REGISTER\r\n"));
    assert!(text.contains("Min-Expires: 60\r\n"));
}

#[test]
fn stamping_the_top_via_adds_received_and_fills_rport() {
    let mut r = request(REG);
    r.stamp_top_via("198.51.100.7:40123".parse().unwrap());
    let v = r.top_via().unwrap();
    assert_eq!(v.received.as_deref(), Some("198.51.100.7"));
    assert_eq!(v.rport, Some(Some(40123)));
    assert_eq!(v.branch.as_deref(), Some("z9hG4bK1"));
}

#[test]
fn a_pushed_via_goes_on_top_and_popping_it_restores_the_previous_hop() {
    let mut r = request(REG);
    r.push_via("SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKps1")
        .unwrap();
    assert_eq!(r.top_via().unwrap().branch.as_deref(), Some("z9hG4bKps1"));
    let resp = "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKps1, SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKa\r\nTo: <sip:a@b>;tag=2\r\nFrom: <sip:a@b>;tag=1\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n".to_string();
    let Ok(Parsed::Response(mut resp)) = parse_datagram(Bytes::from(resp)) else {
        panic!("response");
    };
    resp.pop_via();
    let v = resp.top_via().unwrap();
    assert_eq!(
        (v.host.as_str(), v.branch.as_deref()),
        ("10.0.0.1", Some("z9hG4bKa"))
    );
}

#[test]
fn a_retargeted_request_keeps_the_rest_of_its_start_line() {
    let mut r = request(REG);
    r.set_uri("sip:alice@192.0.2.9:5070").unwrap();
    r.set_max_forwards(69);
    r.prepend_routes(&["sip:p1.example.com;lr".into()]).unwrap();
    let text = String::from_utf8(r.to_bytes().to_vec()).unwrap();
    assert!(text.starts_with("REGISTER sip:alice@192.0.2.9:5070 SIP/2.0\r\n"));
    assert!(text.contains("Max-Forwards: 69\r\n"));
    assert_eq!(r.routes().unwrap(), ["sip:p1.example.com;lr"]);
    r.pop_route();
    assert!(r.routes().unwrap().is_empty());
}
