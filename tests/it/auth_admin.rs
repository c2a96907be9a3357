//! Admin separation end to end: the data-plane token (what a SIP front
//! holds) serves Location and GetCredentials but cannot administer the
//! cluster or subscribers; the admin token can; mutual TLS refuses clients
//! without a certificate from `grpc.tls_client_ca`.

use locsvc_proto::v1 as pb;
use locsvc_proto::v1::cluster_client::ClusterClient;
use locsvc_proto::v1::location_client::LocationClient;
use locsvc_proto::v1::subscribers_client::SubscribersClient;
use tonic::Code;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint, Identity};
use tonic_types::StatusExt;

use crate::harness::*;
use crate::subscriber_store::{HA1, HA1_OTHER_REALM, HA1_SHA256};

const DATA: Option<&str> = Some("d4ta");
const ADMIN: Option<&str> = Some("adm1n");

fn req<T>(msg: T, token: Option<&str>) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if let Some(t) = token {
        r.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    r
}

async fn channel(app: &TestApp) -> Channel {
    Endpoint::from_shared(app.url())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

fn add(user: &str, password: &str) -> pb::AddSubscriberRequest {
    pb::AddSubscriberRequest {
        username: user.into(),
        domain: "example.com".into(),
        password: password.into(),
    }
}

fn creds(user: &str, realm: &str) -> pb::GetCredentialsRequest {
    pb::GetCredentialsRequest {
        username: user.into(),
        domain: "example.com".into(),
        realm: realm.into(),
    }
}

fn maintenance(no: u32, force: bool) -> pb::SetStatusRequest {
    pb::SetStatusRequest {
        group: 1,
        no,
        status: pb::MemberStatus::Maintenance as i32,
        force,
    }
}

#[tokio::test]
async fn the_data_token_cannot_administer_and_the_admin_token_can() {
    let layout = Layout::create(Backend::Sqlite, &[Backend::Sqlite, Backend::Sqlite], 1).await;
    let mut settings = layout.settings();
    settings.grpc.token = DATA.map(Into::into);
    settings.grpc.admin_token = ADMIN.map(Into::into);
    let app = TestApp::spawn(settings).await;
    let ch = channel(&app).await;
    let mut subs = SubscribersClient::new(ch.clone());
    let mut cluster = ClusterClient::new(ch.clone());
    let mut loc = LocationClient::new(ch);

    // The front's token administers nothing.
    let e = subs
        .add(req(add("alice", "secret"), DATA))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let e = cluster
        .set_status(req(maintenance(2, false), DATA))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let e = cluster
        .list_groups(req(pb::ListGroupsRequest {}, DATA))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    for token in [None, Some("guess")] {
        let e = subs
            .set_password(req(
                pb::SetPasswordRequest {
                    username: "alice".into(),
                    domain: "example.com".into(),
                    password: "x".into(),
                },
                token,
            ))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);
    }
    let e = subs
        .list(req(pb::ListSubscribersRequest::default(), DATA))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let e = subs
        .remove(req(
            pb::RemoveSubscriberRequest {
                username: "alice".into(),
                domain: "example.com".into(),
            },
            DATA,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);

    // The admin token does.
    subs.add(req(add("alice", "secret"), ADMIN)).await.unwrap();
    let e = subs
        .add(req(add("alice", "other"), ADMIN))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists);
    cluster
        .set_status(req(maintenance(2, false), ADMIN))
        .await
        .unwrap();
    let page = subs
        .list(req(pb::ListSubscribersRequest::default(), ADMIN))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.subscribers.len(), 1);
    assert!(page.subscribers[0].has_password);
    assert!(page.next_page_token.is_empty());

    // GetCredentials is data plane: hashes, never the password.
    let c = subs
        .get_credentials(req(creds("alice", ""), DATA))
        .await
        .unwrap()
        .into_inner();
    assert!(c.found);
    assert_eq!(
        (c.ha1_md5.as_str(), c.ha1_sha256.as_str()),
        (HA1, HA1_SHA256)
    );
    let c = subs
        .get_credentials(req(creds("alice", "other.org"), DATA))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(c.ha1_md5, HA1_OTHER_REALM);
    let c = subs
        .get_credentials(req(creds("nobody", ""), DATA))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(c, pb::GetCredentialsResponse::default());
    let e = subs
        .get_credentials(req(creds("alice", ""), None))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(
        loc.lookup(req(
            pb::LookupRequest {
                table: String::new(),
                aor: "sip:alice@example.com".into(),
                ..Default::default()
            },
            DATA,
        ))
        .await
        .is_ok()
    );

    // Bad input names the field.
    let e = subs
        .get_credentials(req(creds("", ""), DATA))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(
        e.get_details_bad_request().unwrap().field_violations[0].field,
        "username"
    );
    let e = subs
        .add(req(add("bob", &"p".repeat(65)), ADMIN))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = subs
        .add(req(add("bo\u{7}b", "pw"), ADMIN))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    // Password change and removal.
    subs.set_password(req(
        pb::SetPasswordRequest {
            username: "alice".into(),
            domain: "example.com".into(),
            password: "n3w".into(),
        },
        ADMIN,
    ))
    .await
    .unwrap();
    let c = subs
        .get_credentials(req(creds("alice", ""), DATA))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(c.ha1_md5, HA1);
    // Reflection publishes the service (grpcurl list).
    let set = locsvc_proto::FILE_DESCRIPTOR_SET;
    assert!(set.windows(11).any(|w| w == b"Subscribers"));
    assert!(set.windows(14).any(|w| w == b"GetCredentials"));
    let r = subs
        .remove(req(
            pb::RemoveSubscriberRequest {
                username: "alice".into(),
                domain: "example.com".into(),
            },
            ADMIN,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(r.removed);
    app.stop().await;
}

#[tokio::test]
async fn a_data_token_without_an_admin_token_disables_administration() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(dir.path());
    settings.grpc.token = DATA.map(Into::into);
    let app = TestApp::spawn(settings).await;
    let ch = channel(&app).await;
    let mut subs = SubscribersClient::new(ch.clone());
    let mut cluster = ClusterClient::new(ch);
    let e = cluster
        .set_status(req(maintenance(2, false), DATA))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().contains("grpc.admin_token"), "{}", e.message());
    let e = subs.add(req(add("carol", "pw"), DATA)).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().contains("grpc.admin_token"), "{}", e.message());
    let c = subs
        .get_credentials(req(creds("carol", ""), DATA))
        .await
        .unwrap()
        .into_inner();
    assert!(!c.found);
    app.stop().await;
}

#[tokio::test]
async fn mutual_tls_admits_only_clients_with_a_certificate_from_the_client_ca() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(dir.path());
    // A second CA the server does not trust for clients.
    let rogue_dir = dir.path().join("rogue");
    std::fs::create_dir(&rogue_dir).unwrap();
    let rogue = Pki::create(&rogue_dir);
    let mut settings = test_settings(dir.path());
    settings.grpc.tls_cert = Some(pki.server_cert.clone());
    settings.grpc.tls_key = Some(pki.server_key.clone());
    settings.grpc.tls_client_ca = Some(pki.ca.clone());
    let app = TestApp::spawn(settings).await;
    let try_lookup = |identity: Option<Identity>| {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(pki.ca_certificate())
            .domain_name("localhost");
        if let Some(i) = identity {
            tls = tls.identity(i);
        }
        let url = format!("https://127.0.0.1:{}", app.addr.port());
        async move {
            let ch = Endpoint::from_shared(url)
                .unwrap()
                .tls_config(tls)
                .unwrap()
                .connect()
                .await?;
            LocationClient::new(ch)
                .lookup(pb::LookupRequest {
                    table: String::new(),
                    aor: "sip:mtls@example.com".into(),
                    ..Default::default()
                })
                .await
                .map_err(|s| anyhow::anyhow!("{s:?}"))?;
            anyhow::Ok(())
        }
    };
    try_lookup(Some(pki.client_identity()))
        .await
        .expect("a client certificate from the client CA is admitted");
    assert!(
        try_lookup(None).await.is_err(),
        "no client certificate, no service"
    );
    assert!(
        try_lookup(Some(rogue.client_identity())).await.is_err(),
        "a certificate from another CA is refused"
    );
    app.stop().await;
}
