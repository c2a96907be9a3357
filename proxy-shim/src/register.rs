//! REGISTER → locsvc `Save`, and the answer back (RFC 3261 §10.3 as seen
//! from the wire). The registrar rules themselves (expires precedence,
//! Min-Expires, `Contact: *`, Call-ID/CSeq ordering) live in locsvc; this
//! module only converts, and maps locsvc's typed errors to SIP statuses.

use std::time::Instant;

use locsvc_proto::v1::{Binding, ContactSpec, SaveRequest};

use crate::envelope::{Inbound, Outbound, Transport};
use crate::nat;
use crate::sanity::{self, Checked, Refusal};
use crate::sip::{self, ContactEntry, Contacts, HeaderProblem, Request};
use crate::state::Core;

/// Handles one REGISTER.
pub async fn handle(core: &Core, req: &Request, src: Inbound, checked: &Checked) -> Vec<Outbound> {
    let save = match to_save_checked(core, req, src, checked) {
        Ok(s) => s,
        Err(Refusal { code, reason }) => return core.reply(req, src, code, &reason, &[]),
    };
    // RFC 3327 §5.3: a registrar that stored the Path echoes it in the 200.
    let path = save.path.clone();
    let started = Instant::now();
    let result = core.client.save(save).await;
    core.metrics
        .locsvc_call("save", result.is_ok(), started.elapsed().as_secs_f64());
    match result {
        Ok(bindings) => {
            let mut headers: Vec<(&str, String)> = bindings
                .iter()
                .map(|b| ("Contact", contact_value(b)))
                .collect();
            headers.extend(path.iter().map(|p| ("Path", format!("<{p}>"))));
            headers.push(("Date", httpdate_now()));
            core.reply(req, src, 200, "OK", &headers)
        }
        Err(e) => {
            let (code, reason, extra) = e.sip();
            if code >= 500 {
                tracing::warn!(error = %e, "REGISTER failed in locsvc");
            }
            core.reply(req, src, code, &reason, &extra)
        }
    }
}

/// Builds the Save request: AoR from To, every Contact with its own NAT
/// verdict (`nat`), Expires, Call-ID, CSeq, Path (only from a trusted source
/// and with `Supported: path`, RFC 3327 §5.3), User-Agent, the socket.
pub fn to_save(core: &Core, req: &Request, src: Inbound) -> Result<SaveRequest, Refusal> {
    let checked = sanity::check(req, core.settings.max_forwards, |h, p| core.is_local(h, p))?;
    to_save_checked(core, req, src, &checked)
}

/// `to_save` for a request the pipeline has already checked.
pub fn to_save_checked(
    core: &Core,
    req: &Request,
    src: Inbound,
    checked: &Checked,
) -> Result<SaveRequest, Refusal> {
    let to = &checked.to;
    let aor = to.aor().ok_or(HeaderProblem::Bad("To"))?;
    if !core.settings.serves(&to.host) {
        return Err(Refusal::new(403, "Domain Not Served"));
    }
    let (wildcard, contacts) = match req.contacts()? {
        Contacts::Absent => (false, Vec::new()),
        Contacts::Wildcard => (true, Vec::new()),
        Contacts::List(l) => (false, l),
    };
    let (cseq, _) = req.cseq()?;
    // A Path steers every later call to this AoR: only an edge we trust
    // may set one.
    let trusted = core.settings.trusts(src.peer.ip());
    let path = if trusted && req.lists_token("Supported", "path") {
        req.path()?
    } else {
        Vec::new()
    };
    let via = req.top_via()?;
    let tcp = src.transport == Transport::Tcp;
    let contacts = contacts
        .into_iter()
        .map(|c| {
            let received =
                nat::received_for(core.settings.nat, c.view.as_ref(), &via, src.peer, tcp);
            spec(c, received)
        })
        .collect();
    Ok(SaveRequest {
        table: String::new(),
        aor,
        received: String::new(),
        contacts,
        wildcard,
        expires: req.expires()?.map(i64::from),
        call_id: req.call_id()?,
        cseq,
        path,
        user_agent: req.header("User-Agent").unwrap_or_default(),
        socket: format!(
            "{}:{}:{}",
            src.transport.as_str(),
            sip::bracket(&src.local.ip().to_string()),
            src.local.port()
        ),
        flags: 0,
        cflags: 0,
    })
}

fn spec(c: ContactEntry, received: Option<String>) -> ContactSpec {
    ContactSpec {
        uri: c.uri,
        expires: c.expires,
        q: c.q,
        instance: c.instance,
        reg_id: c.reg_id,
        methods: None,
        received: received.unwrap_or_default(),
    }
}

/// One Contact row of the 200 OK: the binding with its remaining seconds
/// (RFC 3261 §10.3 step 8), its q, and its RFC 5626 instance and reg-id.
fn contact_value(b: &Binding) -> String {
    let mut v = format!("<{}>;expires={}", b.contact, b.expires_in.max(0));
    if let Some(q) = b.q {
        v.push_str(&format!(";q={q:.2}"));
    }
    if !b.instance.is_empty() {
        v.push_str(&format!(
            ";+sip.instance=\"{}\"",
            b.instance.replace('"', "")
        ));
    }
    if b.reg_id > 0 {
        v.push_str(&format!(";reg-id={}", b.reg_id));
    }
    v
}

fn httpdate_now() -> String {
    chrono::Utc::now()
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_contact_row_carries_remaining_expires_q_and_instance() {
        let b = Binding {
            contact: "sip:a@192.0.2.1:5060".into(),
            expires_in: 599,
            q: Some(0.5),
            instance: "<urn:uuid:1>".into(),
            reg_id: 2,
            ..Default::default()
        };
        assert_eq!(
            contact_value(&b),
            "<sip:a@192.0.2.1:5060>;expires=599;q=0.50;+sip.instance=\"<urn:uuid:1>\";reg-id=2"
        );
    }
}
