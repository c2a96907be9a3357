//! The `locsvc.v1.Cluster` admin service: lists members with their state and
//! the layout epoch, sets a member's status in `locdb` (then has this
//! instance apply it at once; taking the last readable member of a group out
//! needs `force`), and adds or drains a group (`locdb` edits that the layout
//! epochs then carry out online).

use std::sync::Arc;

use locsvc_proto::v1 as pb;
use locsvc_proto::v1::cluster_server::Cluster;
use tonic::{Request, Response, Status};

use super::status;
use crate::clock::Clock;
use crate::cluster::{MemberConfig, MemberStatus};
use crate::failover::Failover;
use crate::metrics::Metrics;
use crate::router::Router;
use crate::store::migrate::Scope;
use crate::store::{DbUrl, FAILOVER_RESET, LocdbRow, SqlStore, StoreOptions};

/// The gRPC face of cluster administration.
#[derive(Clone)]
pub struct ClusterApi {
    router: Router,
    failover: Arc<Failover>,
    clock: Clock,
    window: i64,
    /// How a new group's members are opened and which tables they get
    /// (None: adding groups is not offered).
    member_opts: Option<StoreOptions>,
    metrics: Arc<Metrics>,
}

impl ClusterApi {
    /// Administers the cluster behind `router`; status changes go through
    /// `failover`, which owns every `locdb` update.
    pub fn new(router: Router, failover: Arc<Failover>, clock: Clock, window: i64) -> Self {
        Self {
            router,
            failover,
            clock,
            window,
            member_opts: None,
            metrics: Arc::new(Metrics::new()),
        }
    }

    /// New groups' members are opened with `member_opts` (its tables are
    /// migrated on them); the mover's count comes from `metrics`.
    pub fn with_groups(mut self, member_opts: StoreOptions, metrics: Arc<Metrics>) -> Self {
        self.member_opts = Some(member_opts);
        self.metrics = metrics;
        self
    }

    /// The layout this instance routes by.
    fn layout(&self) -> pb::LayoutInfo {
        let topo = self.router.topology();
        let p = &topo.placement;
        pb::LayoutInfo {
            epoch: p.epoch,
            phase: p.phase.to_string(),
            owners: topo.partitioner.groups().to_vec(),
            previous_owners: p
                .previous
                .as_ref()
                .map(|q| q.groups().to_vec())
                .unwrap_or_default(),
            carried: self.metrics.mover_aors.get(),
            pass_rows: self.metrics.mover_pass_rows.get(),
            pass_scanned: self.metrics.mover_pass_scanned.get(),
            eta_seconds: self.metrics.mover_eta_seconds.get(),
        }
    }
}

/// Whether setting member `no` to `to` takes out the only member of its
/// group that is read now (`readable`): every subscriber of the group would
/// then fail until another member is resynced.
pub fn leaves_group_unreadable(readable: &[u32], no: u32, to: Option<MemberStatus>) -> bool {
    to != Some(MemberStatus::On) && readable == [no]
}

fn to_pb(s: MemberStatus) -> pb::MemberStatus {
    match s {
        MemberStatus::Off => pb::MemberStatus::Off,
        MemberStatus::On => pb::MemberStatus::On,
        MemberStatus::Maintenance => pb::MemberStatus::Maintenance,
    }
}

fn info(c: &MemberConfig) -> pb::MemberInfo {
    pb::MemberInfo {
        group: c.group,
        no: c.no,
        url: c.url.redacted(),
        status: to_pb(c.status) as i32,
        errors: c.errors,
        failover: c.failover,
        readable: false,
        spare: c.spare,
        risk_group: c.rg,
        transport_errors: 0,
        last_probe_ms: None,
        last_probe_ok: false,
    }
}

#[tonic::async_trait]
impl Cluster for ClusterApi {
    async fn list_groups(
        &self,
        _req: Request<pb::ListGroupsRequest>,
    ) -> Result<Response<pb::ListGroupsResponse>, Status> {
        let topo = self.router.topology();
        let now = (self.clock)();
        let mut members = Vec::new();
        for g in topo.groups.values() {
            for m in &g.members {
                let mut i = info(&m.config);
                i.readable = m.readable(now, self.window);
                i.transport_errors = m.health.transport_errors();
                if let Some((ok, took)) = m.health.last_probe() {
                    i.last_probe_ms = Some(took.as_secs_f64() * 1000.0);
                    i.last_probe_ok = ok;
                }
                members.push(i);
            }
        }
        members.extend(topo.spares.iter().map(info));
        Ok(Response::new(pb::ListGroupsResponse {
            members,
            problems: topo.problems.iter().map(ToString::to_string).collect(),
            generation: topo.generation,
            layout: Some(self.layout()),
        }))
    }

    async fn add_group(
        &self,
        req: Request<pb::AddGroupRequest>,
    ) -> Result<Response<pb::AddGroupResponse>, Status> {
        let r = req.into_inner();
        if r.group == 0 || r.group > i32::MAX as u32 {
            return Err(status::invalid("group", "must be between 1 and 2^31-1"));
        }
        if r.urls.len() < 2 {
            return Err(status::invalid(
                "urls",
                "a group needs at least two members",
            ));
        }
        let urls = r
            .urls
            .iter()
            .map(|u| DbUrl::parse(u))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| status::invalid("urls", &e.to_string()))?;
        let Some(opts) = &self.member_opts else {
            return Err(status::internal("adding groups is not configured here"));
        };
        let master = self.router.master();
        let rows = master
            .load_locdb()
            .await
            .map_err(|e| status::admin_store("reading locdb", e))?;
        if rows.iter().any(|row| row.id == i64::from(r.group)) {
            return Err(status::invalid("group", "already in locdb"));
        }
        // Tables first: a member row must never point at a database that
        // cannot take writes.
        for u in &urls {
            let what = format!("migrating member {}", u.redacted());
            let m = SqlStore::open(u, opts).map_err(|e| status::admin_store(&what, e))?;
            for t in &opts.tables {
                m.migrate(Scope::Table(t))
                    .await
                    .map_err(|e| status::admin_store(&what, e))?;
            }
            m.close().await;
        }
        for (i, u) in urls.iter().enumerate() {
            let no = i as i64 + 1;
            master
                .insert_locdb(&LocdbRow {
                    id: i64::from(r.group),
                    no,
                    url: u.expose().to_string(),
                    status: MemberStatus::On.code(),
                    errors: 0,
                    failover: FAILOVER_RESET,
                    spare: 0,
                    rg: no,
                    leaving: 0,
                })
                .await
                .map_err(|e| status::admin_store("the group's locdb rows", e))?;
        }
        tracing::info!(
            group = r.group,
            members = urls.len(),
            "group added to locdb"
        );
        Ok(Response::new(pb::AddGroupResponse {}))
    }

    async fn drain(
        &self,
        req: Request<pb::DrainRequest>,
    ) -> Result<Response<pb::DrainResponse>, Status> {
        let r = req.into_inner();
        let master = self.router.master();
        if !r.undo {
            // Checked against locdb itself, not this instance's last poll;
            // an edit racing this one is caught by the layout, which keeps
            // its owners while every group is leaving (and reports it).
            let rows = master
                .load_locdb()
                .await
                .map_err(|e| status::admin_store("the drain mark", e))?;
            let others_stay = rows
                .iter()
                .any(|m| m.spare == 0 && m.leaving == 0 && m.id != i64::from(r.group));
            let known = rows
                .iter()
                .any(|m| m.spare == 0 && m.id == i64::from(r.group));
            if known && !others_stay {
                return Err(status::last_owning_group(r.group));
            }
        }
        let n = master
            .set_leaving(r.group, !r.undo)
            .await
            .map_err(|e| status::admin_store("the drain mark", e))?;
        if n == 0 {
            return Err(status::unknown_group(r.group));
        }
        tracing::info!(
            group = r.group,
            leaving = !r.undo,
            "group drain mark set in locdb"
        );
        Ok(Response::new(pb::DrainResponse {}))
    }

    async fn set_status(
        &self,
        req: Request<pb::SetStatusRequest>,
    ) -> Result<Response<pb::SetStatusResponse>, Status> {
        let r = req.into_inner();
        let to = match pb::MemberStatus::try_from(r.status) {
            Ok(pb::MemberStatus::Off) => MemberStatus::Off,
            Ok(pb::MemberStatus::On) => MemberStatus::On,
            Ok(pb::MemberStatus::Maintenance) => MemberStatus::Maintenance,
            _ => return Err(status::invalid("status", "must be off, on or maintenance")),
        };
        if let Some(g) = self.router.topology().groups.get(&r.group) {
            let readable: Vec<u32> = self
                .router
                .readable_members(g)
                .iter()
                .map(|m| m.config.no)
                .collect();
            if leaves_group_unreadable(&readable, r.no, Some(to)) {
                if !r.force {
                    return Err(status::last_readable_member(r.group, r.no));
                }
                tracing::warn!(
                    group = r.group,
                    no = r.no,
                    "forced: the group's last readable member is taken out"
                );
            }
        }
        let n = self
            .failover
            .set_status(r.group, r.no, to)
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "cannot set member status in locdb");
                status::master_unavailable("the change")
            })?;
        if n == 0 {
            return Err(status::unknown_member(r.group, r.no));
        }
        tracing::warn!(
            group = r.group,
            no = r.no,
            status = to.code(),
            "member status set by operator"
        );
        Ok(Response::new(pb::SetStatusResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_taking_out_the_last_readable_member_is_guarded() {
        let (off, maint, on) = (
            Some(MemberStatus::Off),
            Some(MemberStatus::Maintenance),
            Some(MemberStatus::On),
        );
        assert!(leaves_group_unreadable(&[2], 2, off));
        assert!(leaves_group_unreadable(&[2], 2, maint));
        assert!(!leaves_group_unreadable(&[2], 2, on));
        assert!(!leaves_group_unreadable(&[1, 2], 2, off));
        assert!(!leaves_group_unreadable(&[1], 2, maint));
        assert!(!leaves_group_unreadable(&[], 2, off));
    }
}
