//! Builders for the values tests write, and client calls that read back.

use locsvc::domain::Binding;
use locsvc::store::{FAILOVER_RESET, LocdbRow};
use locsvc_proto::v1 as pb;
use locsvc_proto::v1::location_client::LocationClient;
use tonic::transport::Channel;

/// A contact of a Save request.
pub fn contact(uri: &str, expires: Option<i64>, q: Option<f32>) -> pb::ContactSpec {
    pb::ContactSpec {
        uri: uri.into(),
        expires,
        q,
        ..Default::default()
    }
}

/// A REGISTER of one contact.
pub fn register(
    aor: &str,
    contact_uri: &str,
    expires: Option<i64>,
    call_id: &str,
    cseq: u32,
) -> pb::SaveRequest {
    pb::SaveRequest {
        aor: aor.into(),
        contacts: vec![contact(contact_uri, expires, None)],
        call_id: call_id.into(),
        cseq,
        user_agent: "it".into(),
        ..Default::default()
    }
}

/// A stored binding as a store reads and writes it: Call-ID `cid-<ruid>`,
/// CSeq 1, every optional field empty. Change fields with
/// `Binding { q: Some(0.5), ..binding(..) }`.
pub fn binding(ruid: &str, contact: &str, expires: i64, last_modified: i64) -> Binding {
    Binding::new(ruid, contact, expires, last_modified)
}

/// A `locdb` row for member `no` of group `id`: on, no errors, risk group
/// `no`.
pub fn locdb_row(id: i64, no: i64, url: &str) -> LocdbRow {
    LocdbRow {
        id,
        no,
        url: url.to_string(),
        status: 1,
        errors: 0,
        failover: FAILOVER_RESET,
        spare: 0,
        rg: no,
        leaving: 0,
    }
}

/// The valid bindings of a Lookup, in order.
pub async fn lookup_bindings(c: &mut LocationClient<Channel>, aor: &str) -> Vec<pb::Binding> {
    c.lookup(pb::LookupRequest {
        aor: aor.into(),
        ..Default::default()
    })
    .await
    .expect("lookup")
    .into_inner()
    .bindings
}

/// The contacts of a Lookup, in order.
pub async fn lookup_contacts(c: &mut LocationClient<Channel>, aor: &str) -> Vec<String> {
    let bindings = lookup_bindings(c, aor).await;
    bindings.into_iter().map(|b| b.contact).collect()
}

/// Every binding in the cluster as (aor, contact, expires_at), sorted.
pub async fn dump_all(c: &mut LocationClient<Channel>) -> Vec<(String, String, i64)> {
    let mut s = c
        .dump(pb::DumpRequest::default())
        .await
        .expect("dump")
        .into_inner();
    let mut out = Vec::new();
    while let Some(p) = s.message().await.expect("dump page") {
        for b in p.bindings {
            let bb = b.binding.unwrap();
            out.push((b.aor, bb.contact, bb.expires_at));
        }
    }
    out.sort();
    out
}
