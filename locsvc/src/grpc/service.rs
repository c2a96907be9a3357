//! The `locsvc.v1.Location` gRPC service: converts, sheds load, works out
//! the request's deadline (the caller's, inside the server's), and delegates
//! to `LocationService`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use locsvc_proto::v1 as pb;
use locsvc_proto::v1::location_server::Location;
use svc_base::metrics::InFlight;
use svc_base::telemetry::{self, Parent};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use super::{convert, deadline, status};
use crate::location::LocationService;
use crate::metrics::Metrics;
use crate::store::Removal;

/// Largest Dump page.
pub const MAX_PAGE: u32 = 5000;
/// Dump page when the request says 0.
pub const DEFAULT_PAGE: u32 = 500;
/// Most lookups in one LookupMany.
pub const MAX_LOOKUPS: usize = 1000;

/// The gRPC face of the location service.
#[derive(Clone)]
pub struct LocationApi {
    svc: Arc<LocationService>,
    in_flight: Arc<Semaphore>,
    timeout: Duration,
    metrics: Arc<Metrics>,
}

impl LocationApi {
    /// Serves `svc`, refusing requests beyond `max_in_flight` at once.
    pub fn new(
        svc: Arc<LocationService>,
        max_in_flight: usize,
        timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            svc,
            in_flight: Arc::new(Semaphore::new(max_in_flight)),
            timeout,
            metrics,
        }
    }

    /// When `req` must be answered: its `grpc-timeout` less a margin, never
    /// beyond `grpc.request_timeout`.
    fn deadline<R>(&self, req: &Request<R>) -> Instant {
        let header = req
            .metadata()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok());
        deadline::answer_by(Instant::now(), header, self.timeout)
    }

    /// Runs one unary call in a span naming the method and AoR (the router
    /// adds the group, member operations their own spans below it; the
    /// caller's trace is its parent): load shedding (answer at once rather
    /// than queue), `deadline` as the last guard (the work itself answers
    /// by then), metrics.
    async fn call<T>(
        &self,
        method: &'static str,
        aor: &str,
        deadline: Instant,
        parent: Parent,
        f: impl Future<Output = Result<T, Status>>,
    ) -> Result<Response<T>, Status> {
        // Debug-formatted: the AoR is not validated yet, and escaping keeps a
        // crafted one from forging log lines.
        let span = svc_base::rpc_span!(
            tracing::Level::INFO,
            "rpc",
            method,
            aor = ?aor,
            group = tracing::field::Empty,
        );
        telemetry::name_rpc_span(&span, "locsvc.v1.Location", method, "server");
        parent.adopt(&span);
        telemetry::in_rpc_span(span, self.call_in(method, deadline, f)).await
    }

    async fn call_in<T>(
        &self,
        method: &'static str,
        deadline: Instant,
        f: impl Future<Output = Result<T, Status>>,
    ) -> Result<Response<T>, Status> {
        let Ok(_permit) = self.in_flight.try_acquire() else {
            self.metrics.rpc_shed.inc();
            self.metrics
                .rpc_requests
                .with_label_values(&[method, "Unavailable"])
                .inc();
            return Err(status::overloaded());
        };
        let start = Instant::now();
        let _gauge = InFlight::enter(&self.metrics.rpc_in_flight);
        let r = match tokio::time::timeout_at(deadline, f).await {
            Ok(r) => r,
            Err(_) => Err(status::deadline()),
        };
        self.metrics
            .rpc_seconds
            .with_label_values(&[method])
            .observe(start.elapsed().as_secs_f64());
        let code = match &r {
            Ok(_) => "Ok".to_string(),
            Err(s) => format!("{:?}", s.code()),
        };
        self.metrics
            .rpc_requests
            .with_label_values(&[method, &code])
            .inc();
        r.map(Response::new)
    }
}

type DumpStream = Pin<Box<dyn Stream<Item = Result<pb::DumpPage, Status>> + Send>>;

impl LocationApi {
    /// One Lookup, alone or as part of a LookupMany.
    async fn lookup_one(
        &self,
        r: pb::LookupRequest,
        deadline: Instant,
        parent: Parent,
    ) -> Result<Response<pb::LookupResponse>, Status> {
        self.call("Lookup", &r.aor, deadline, parent, async {
            let ruid = convert::ruid(&r.ruid)?;
            let (group, bindings) = self
                .svc
                .lookup(convert::table(&r.table), &r.aor, deadline)
                .await?;
            let now = self.svc.now();
            Ok(pb::LookupResponse {
                bindings: bindings
                    .iter()
                    .filter(|b| ruid.is_empty() || b.ruid == ruid)
                    .map(|b| convert::binding(b, now))
                    .collect(),
                group,
            })
        })
        .await
    }
}

#[tonic::async_trait]
impl Location for LocationApi {
    async fn save(
        &self,
        req: Request<pb::SaveRequest>,
    ) -> Result<Response<pb::SaveResponse>, Status> {
        let deadline = self.deadline(&req);
        let parent = Parent::of(req.metadata());
        let r = req.into_inner();
        let aor = r.aor.clone();
        self.call("Save", &aor, deadline, parent, async {
            let input = convert::save_input(&r)?;
            let table = convert::table(&r.table).to_string();
            let svc = self.svc.clone();
            // Runs in its own task so a caller that goes away cannot cut the
            // Save between its read and its write (the member writes
            // themselves always run to the end, in the router's tasks).
            let saved = tokio::spawn(
                async move { svc.save(&table, &r.aor, &input, deadline).await }.in_current_span(),
            )
            .await
            .map_err(|_| status::internal("save task failed"))??;
            Ok(pb::SaveResponse {
                bindings: saved
                    .bindings
                    .iter()
                    .map(|b| convert::binding(b, saved.now))
                    .collect(),
                group: saved.group,
            })
        })
        .await
    }

    async fn lookup(
        &self,
        req: Request<pb::LookupRequest>,
    ) -> Result<Response<pb::LookupResponse>, Status> {
        let deadline = self.deadline(&req);
        let parent = Parent::of(req.metadata());
        self.lookup_one(req.into_inner(), deadline, parent).await
    }

    async fn lookup_many(
        &self,
        req: Request<pb::LookupManyRequest>,
    ) -> Result<Response<pb::LookupManyResponse>, Status> {
        let deadline = self.deadline(&req);
        let lookups = req.into_inner().lookups;
        if lookups.len() > MAX_LOOKUPS {
            return Err(status::invalid(
                "lookups",
                &format!("at most {MAX_LOOKUPS} lookups per call"),
            ));
        }
        self.metrics.lookup_batch.observe(lookups.len() as f64);
        // Each lookup is served as if it came alone (its own span, shedding,
        // metrics), all at once: the router coalesces their reads.
        let outcomes = futures::future::join_all(lookups.into_iter().map(|r| {
            let parent = Parent::of_map(&r.trace_context);
            self.lookup_one(r, deadline, parent)
        }))
        .await
        .into_iter()
        .map(|r| pb::LookupOutcome {
            outcome: Some(match r {
                Ok(found) => pb::lookup_outcome::Outcome::Found(found.into_inner()),
                Err(s) => pb::lookup_outcome::Outcome::Failed(s.into()),
            }),
        })
        .collect();
        Ok(Response::new(pb::LookupManyResponse { outcomes }))
    }

    async fn remove(
        &self,
        req: Request<pb::RemoveRequest>,
    ) -> Result<Response<pb::RemoveResponse>, Status> {
        let deadline = self.deadline(&req);
        let parent = Parent::of(req.metadata());
        let r = req.into_inner();
        let aor = r.aor.clone();
        self.call("Remove", &aor, deadline, parent, async {
            let removal = Removal::from(convert::removal(&r)?);
            let svc = self.svc.clone();
            let (group, removed) = tokio::spawn(
                async move {
                    svc.remove(convert::table(&r.table), &r.aor, removal.which(), deadline)
                        .await
                }
                .in_current_span(),
            )
            .await
            .map_err(|_| status::internal("remove task failed"))??;
            Ok(pb::RemoveResponse {
                removed: removed.min(u64::from(u32::MAX)) as u32,
                group,
            })
        })
        .await
    }

    type DumpStream = DumpStream;

    async fn dump(
        &self,
        req: Request<pb::DumpRequest>,
    ) -> Result<Response<Self::DumpStream>, Status> {
        let deadline = self.deadline(&req);
        let parent = Parent::of(req.metadata());
        let r = req.into_inner();
        let page = match r.page_size {
            0 => DEFAULT_PAGE,
            n => n.min(MAX_PAGE),
        };
        let group = (r.group != 0).then_some(r.group);
        let svc = self.svc.clone();
        let rx = self
            .call("Dump", "", deadline, parent, async {
                Ok(svc.dump(convert::table(&r.table).to_string(), group, page)?)
            })
            .await?
            .into_inner();
        let svc = self.svc.clone();
        let pages = tokio_stream::wrappers::ReceiverStream::new(rx);
        let stream = tokio_stream::StreamExt::map(pages, move |p| {
            let now = svc.now();
            p.map(|p| pb::DumpPage {
                group: p.group,
                bindings: p
                    .bindings
                    .iter()
                    .map(|b| convert::aor_binding(b, now))
                    .collect(),
            })
            .map_err(Status::from)
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn stats(
        &self,
        req: Request<pb::StatsRequest>,
    ) -> Result<Response<pb::StatsResponse>, Status> {
        let deadline = self.deadline(&req);
        let parent = Parent::of(req.metadata());
        let r = req.into_inner();
        self.call("Stats", "", deadline, parent, async {
            let groups = self.svc.stats(convert::table(&r.table), deadline).await?;
            Ok(pb::StatsResponse {
                contacts: groups.iter().map(|g| g.stats.contacts).sum(),
                aors: groups.iter().map(|g| g.stats.aors).sum(),
                groups: groups
                    .iter()
                    .map(|g| pb::GroupStats {
                        group: g.group,
                        contacts: g.stats.contacts,
                        aors: g.stats.aors,
                        member: g.member,
                    })
                    .collect(),
            })
        })
        .await
    }
}
