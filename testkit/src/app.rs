//! An in-process locsvc, served on loopback with a real gRPC client.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use locsvc::app::{App, AppError};
use locsvc::clock::Clock;
use locsvc::location::LocationService;
use locsvc::settings::Settings;
use locsvc_proto::v1 as pb;
use locsvc_proto::v1::location_client::LocationClient;
use locsvc_proto::v1::subscribers_client::SubscribersClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;

use crate::fixtures::{contact, lookup_bindings};
use crate::serving::Serving;

/// The embedded SQLite layout in `data_dir` (created on first use), gRPC on
/// 127.0.0.1 at an ephemeral port, no metrics listener.
pub fn embedded_settings(data_dir: &Path) -> Settings {
    let mut s = Settings {
        data_dir: data_dir.to_path_buf(),
        metrics_listen: None,
        ..Settings::default()
    };
    s.grpc.listen = "127.0.0.1:0".parse().expect("addr");
    s
}

/// Settings for tests of locsvc itself: the embedded layout in `dir/data`,
/// ephemeral gRPC and metrics ports, fast polling of `locdb`.
pub fn test_settings(dir: &Path) -> Settings {
    let mut s = embedded_settings(&dir.join("data"));
    s.metrics_listen = Some("127.0.0.1:0".parse().expect("addr"));
    s.cluster.poll_interval = Duration::from_millis(100);
    s.cluster.query_timeout = Duration::from_secs(5);
    s
}

/// A running in-process locsvc. Stop it with [`TestApp::stop`], which waits
/// until it no longer serves; dropping it only asks it to stop.
pub struct TestApp {
    /// The bound gRPC address (loopback, port picked by the OS).
    pub addr: SocketAddr,
    /// The bound metrics address, when the settings serve metrics.
    pub metrics_addr: Option<SocketAddr>,
    /// The app's service, to inspect its router and topology directly.
    pub service: Arc<LocationService>,
    /// The expiry sweeper, for tests that run a sweep themselves.
    pub sweeper: locsvc::expiry::Sweeper,
    /// The app's metrics, to read counters without scraping.
    pub metrics: Arc<locsvc::metrics::Metrics>,
    serving: Serving<Result<(), AppError>>,
}

impl TestApp {
    /// Builds and serves `settings` with the system clock; the listeners
    /// are bound when this returns.
    pub async fn spawn(settings: Settings) -> Self {
        Self::spawn_with_clock(settings, locsvc::clock::system()).await
    }

    /// Builds and serves `settings` reading time from `clock`.
    pub async fn spawn_with_clock(settings: Settings, clock: Clock) -> Self {
        let app = App::build_with_clock(settings, clock)
            .await
            .expect("locsvc builds");
        Self {
            addr: app.grpc_addr(),
            metrics_addr: app.metrics_addr(),
            service: app.service(),
            sweeper: app.sweeper(),
            metrics: app.metrics(),
            serving: Serving::spawn(|signal| app.run(signal)),
        }
    }

    /// The embedded layout in `data_dir` ([`embedded_settings`]), warmed up
    /// ([`TestApp::warm_up`]): the locsvc a SIP front's tests talk to.
    pub async fn embedded(data_dir: &Path) -> Self {
        let app = Self::spawn(embedded_settings(data_dir)).await;
        app.warm_up().await;
        app
    }

    /// `http://` and the gRPC address.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A connected Location client (plaintext, no token).
    pub async fn client(&self) -> LocationClient<Channel> {
        LocationClient::connect(self.url())
            .await
            .expect("client connects")
    }

    /// A connected Subscribers client (plaintext, no token).
    pub async fn subscribers(&self) -> SubscribersClient<Channel> {
        SubscribersClient::connect(self.url())
            .await
            .expect("client connects")
    }

    /// Writes (then removes) a binding in every group, so every member's
    /// pool and queues exist before a test's first request: a SIP front
    /// gives locsvc 400 ms, and a cold start on a loaded machine can take
    /// longer (it is not what the tests measure).
    pub async fn warm_up(&self) {
        let mut c = self.client().await;
        let mut groups = std::collections::BTreeSet::new();
        for i in 0..64 {
            let aor = format!("sip:warmup-{i}@example.com");
            let saved = c
                .save(pb::SaveRequest {
                    aor: aor.clone(),
                    contacts: vec![contact(&format!("sip:warmup-{i}@192.0.2.250"), None, None)],
                    expires: Some(60),
                    call_id: "warm-up".into(),
                    cseq: 1,
                    ..Default::default()
                })
                .await
                .expect("warm-up save")
                .into_inner();
            c.remove(pb::RemoveRequest {
                table: String::new(),
                aor,
                ..Default::default()
            })
            .await
            .expect("warm-up remove");
            groups.insert(saved.group);
            if groups.len() >= 2 {
                break;
            }
        }
    }

    /// The valid bindings of `aor`.
    pub async fn lookup(&self, aor: &str) -> Vec<pb::Binding> {
        lookup_bindings(&mut self.client().await, aor).await
    }

    /// Registers `contacts` (URI, q) for `aor`, for 600 s.
    pub async fn save(&self, aor: &str, contacts: &[(&str, f32)]) {
        self.client()
            .await
            .save(pb::SaveRequest {
                aor: aor.into(),
                contacts: contacts
                    .iter()
                    .map(|(uri, q)| contact(uri, None, Some(*q)))
                    .collect(),
                expires: Some(600),
                call_id: "seed".into(),
                cseq: 1,
                ..Default::default()
            })
            .await
            .expect("save");
    }

    /// Adds a subscriber through the admin API (needs no admin token set).
    pub async fn add_subscriber(&self, username: &str, domain: &str, password: &str) {
        self.subscribers()
            .await
            .add(pb::AddSubscriberRequest {
                username: username.into(),
                domain: domain.into(),
                password: password.into(),
            })
            .await
            .expect("add subscriber");
    }

    /// Changes a subscriber's password through the admin API.
    pub async fn set_password(&self, username: &str, domain: &str, password: &str) {
        self.subscribers()
            .await
            .set_password(pb::SetPasswordRequest {
                username: username.into(),
                domain: domain.into(),
                password: password.into(),
            })
            .await
            .expect("set password");
    }

    /// The Prometheus text on the metrics port (which must be enabled).
    pub async fn scrape(&self) -> String {
        scrape(self.metrics_addr.expect("the metrics listener is enabled")).await
    }

    /// Shuts down gracefully and waits until the app has stopped.
    pub async fn stop(mut self) {
        if let Some(stopped) = self.serving.stop().await {
            stopped.expect("locsvc stops cleanly");
        }
    }
}

/// `GET /metrics` from a metrics listener (locsvc's or the shim's): the
/// whole HTTP answer, status line included, which must be a 200.
pub async fn scrape(addr: SocketAddr) -> String {
    let mut conn = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to the metrics listener");
    // HTTP/1.0: the body comes unchunked, and the server closes at its end.
    conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: test\r\n\r\n")
        .await
        .expect("send the scrape");
    let mut text = String::new();
    tokio::time::timeout(Duration::from_secs(5), conn.read_to_string(&mut text))
        .await
        .expect("a scrape answer within 5 s")
        .expect("read the scrape");
    let status = text.lines().next().unwrap_or_default();
    assert!(
        status.starts_with("HTTP/1.") && status.contains(" 200 OK"),
        "{text}"
    );
    text
}
