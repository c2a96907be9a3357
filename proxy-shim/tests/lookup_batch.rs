//! The shim's lookups coalesced into `LookupMany` calls against a real
//! locsvc: every lookup gets its own answer (bindings, not found, or its own
//! error) whatever else shares its call, and a locsvc that does not serve
//! `LookupMany` is asked one `Lookup` at a time instead.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use locsvc_proto::v1 as pb;
use locsvc_proto::v1::location_client::LocationClient;
use locsvc_proto::v1::location_server::{Location, LocationServer};
use proxy_shim::locsvc_client::{Batching, LocsvcClient, LocsvcError};
use testkit::TestApp;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

const USERS: usize = 200;

fn aor(i: usize) -> String {
    format!("sip:user{i}@example.com")
}

fn contact(i: usize) -> String {
    format!("sip:user{i}@192.0.2.{}:{}", 1 + i % 200, 5060 + i)
}

async fn registered_app(dir: &std::path::Path) -> TestApp {
    let app = TestApp::embedded(dir).await;
    for i in 0..USERS {
        app.save(&aor(i), &[(&contact(i), 1.0)]).await;
    }
    app
}

/// Runs every lookup of `aors` at once through `client`.
async fn lookup_all(
    client: &LocsvcClient,
    aors: &[String],
) -> Vec<Result<Vec<pb::Binding>, LocsvcError>> {
    futures::future::join_all(aors.iter().map(|a| {
        let client = client.clone();
        let a = a.clone();
        tokio::spawn(async move { client.lookup(&a).await })
    }))
    .await
    .into_iter()
    .map(|r| r.expect("lookup task"))
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_lookups_share_calls_and_each_gets_its_own_answer() {
    let dir = tempfile::tempdir().unwrap();
    let app = registered_app(dir.path()).await;
    // One call slot: whatever arrives while a call is in flight joins the next.
    let client = LocsvcClient::new(&[app.url()], Duration::from_secs(5), None, String::new())
        .unwrap()
        .with_batching(Batching {
            max_items: 64,
            max_calls: 1,
        });
    let mut aors: Vec<String> = (0..USERS).map(aor).collect();
    // Not registered, and not an AoR at all: answered on their own.
    aors.push("sip:nobody@example.com".into());
    aors.push("sip:".into());
    let calls_before = app.metrics.lookup_batch.get_sample_count();
    let answers = lookup_all(&client, &aors).await;

    for (i, answer) in answers.iter().take(USERS).enumerate() {
        let bindings = answer
            .as_ref()
            .unwrap_or_else(|e| panic!("{}: {e}", aor(i)));
        let contacts: Vec<&str> = bindings.iter().map(|b| b.contact.as_str()).collect();
        assert_eq!(contacts, [contact(i).as_str()], "{}", aor(i));
    }
    assert_eq!(answers[USERS].as_ref().unwrap(), &Vec::<pb::Binding>::new());
    assert!(
        matches!(&answers[USERS + 1], Err(LocsvcError::BadRequest(_))),
        "{:?}",
        answers[USERS + 1]
    );

    let calls = app.metrics.lookup_batch.get_sample_count() - calls_before;
    let items = app.metrics.lookup_batch.get_sample_sum();
    assert_eq!(
        items as usize,
        aors.len(),
        "every lookup went in a LookupMany"
    );
    assert!(
        (calls as usize) < aors.len() / 2,
        "{} lookups at once went in {calls} calls: not coalesced",
        aors.len()
    );
    // No call carried more than the limit.
    assert!(calls as usize >= aors.len().div_ceil(64), "{calls} calls");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_batching_off_every_lookup_is_a_lookup_call() {
    let dir = tempfile::tempdir().unwrap();
    let app = registered_app(dir.path()).await;
    let client = LocsvcClient::new(&[app.url()], Duration::from_secs(5), None, String::new())
        .unwrap()
        .with_batching(Batching {
            max_items: 0,
            max_calls: 1,
        });
    let aors: Vec<String> = (0..20).map(aor).collect();
    for (i, answer) in lookup_all(&client, &aors).await.into_iter().enumerate() {
        assert_eq!(answer.unwrap()[0].contact, contact(i));
    }
    assert_eq!(app.metrics.lookup_batch.get_sample_count(), 0);
    app.stop().await;
}

/// A locsvc of before `LookupMany`: serves Lookup (through a real one) and
/// nothing else.
struct OldLocsvc {
    real: LocationClient<Channel>,
    lookup_many_calls: Arc<AtomicUsize>,
}

#[tonic::async_trait]
impl Location for OldLocsvc {
    async fn save(
        &self,
        _: Request<pb::SaveRequest>,
    ) -> Result<Response<pb::SaveResponse>, Status> {
        Err(Status::unimplemented("save"))
    }

    async fn lookup(
        &self,
        req: Request<pb::LookupRequest>,
    ) -> Result<Response<pb::LookupResponse>, Status> {
        self.real.clone().lookup(req.into_inner()).await
    }

    async fn lookup_many(
        &self,
        _: Request<pb::LookupManyRequest>,
    ) -> Result<Response<pb::LookupManyResponse>, Status> {
        self.lookup_many_calls.fetch_add(1, Ordering::SeqCst);
        Err(Status::unimplemented("Method not found"))
    }

    async fn remove(
        &self,
        _: Request<pb::RemoveRequest>,
    ) -> Result<Response<pb::RemoveResponse>, Status> {
        Err(Status::unimplemented("remove"))
    }

    type DumpStream = tokio_stream::wrappers::ReceiverStream<Result<pb::DumpPage, Status>>;

    async fn dump(
        &self,
        _: Request<pb::DumpRequest>,
    ) -> Result<Response<Self::DumpStream>, Status> {
        Err(Status::unimplemented("dump"))
    }

    async fn stats(
        &self,
        _: Request<pb::StatsRequest>,
    ) -> Result<Response<pb::StatsResponse>, Status> {
        Err(Status::unimplemented("stats"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locsvc_without_lookup_many_is_asked_one_lookup_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let app = registered_app(dir.path()).await;
    let lookup_many_calls = Arc::new(AtomicUsize::new(0));
    let old = OldLocsvc {
        real: app.client().await,
        lookup_many_calls: lookup_many_calls.clone(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(LocationServer::new(old))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let client = LocsvcClient::new(
        &[format!("http://{addr}")],
        Duration::from_secs(5),
        None,
        String::new(),
    )
    .unwrap();

    let aors: Vec<String> = (0..50).map(aor).collect();
    for round in 0..2 {
        for (i, answer) in lookup_all(&client, &aors).await.into_iter().enumerate() {
            let bindings = answer.unwrap_or_else(|e| panic!("round {round}, {}: {e}", aor(i)));
            assert_eq!(bindings[0].contact, contact(i));
        }
    }
    // The calls in flight when the first UNIMPLEMENTED came back, at most
    // one per call slot; none after.
    let tried = lookup_many_calls.load(Ordering::SeqCst);
    assert!(
        (1..=Batching::default().max_calls).contains(&tried),
        "{tried} LookupMany calls"
    );
    server.abort();
    app.stop().await;
}
