//! How a client reaches one locsvc instance. Over plain HTTP/2 the calls go
//! through hyper's client straight from the caller's task; tonic's
//! `Channel` would first hand each call to a buffer task of its own (a
//! `tower::Buffer`), which costs every call two thread wake-ups more before
//! its request is even queued on the connection. TLS keeps the `Channel`
//! (its rustls setup is tonic's).

use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tonic::body::Body;
use tonic::transport::Channel;

/// The error of either transport.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One instance's connection: a tonic channel (TLS) or hyper's HTTP/2
/// client (plain HTTP). Cheap to clone; clones share the connection.
#[derive(Debug, Clone)]
pub(super) enum Transport {
    /// tonic's buffered channel.
    Channel(Channel),
    /// hyper's client: one HTTP/2 connection, made on first use and again
    /// after it broke. Boxed: the client is ten times a channel's size.
    Direct(Box<Client<HttpConnector, Body>>),
}

impl Transport {
    /// Plain HTTP/2 with TCP_NODELAY, connecting within `connect_timeout`.
    pub(super) fn direct(connect_timeout: Duration) -> Self {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
        let client = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .timer(TokioTimer::new())
            .build(http);
        Transport::Direct(Box::new(client))
    }
}

impl tower_service::Service<http::Request<Body>> for Transport {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Self::Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match self {
            Transport::Channel(c) => c.poll_ready(cx).map_err(Into::into),
            // It checks out (or makes) its connection when called.
            Transport::Direct(_) => Poll::Ready(Ok(())),
        }
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        match self {
            Transport::Channel(c) => {
                let answer = c.call(req);
                Box::pin(async move { answer.await.map_err(Into::into) })
            }
            Transport::Direct(c) => {
                let answer = c.request(req);
                Box::pin(async move { Ok(answer.await?.map(Body::new)) })
            }
        }
    }
}
