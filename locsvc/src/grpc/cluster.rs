//! The `locsvc.v1.Cluster` admin service: lists members with their state and
//! sets a member's status in `locdb`, then has this instance apply it at once.
//! Taking the last readable member of a group out needs `force`.

use std::sync::Arc;

use locsvc_proto::v1 as pb;
use locsvc_proto::v1::cluster_server::Cluster;
use tonic::{Request, Response, Status};

use super::status;
use crate::clock::Clock;
use crate::cluster::{MemberConfig, MemberStatus};
use crate::failover::Failover;
use crate::router::Router;

/// The gRPC face of cluster administration.
#[derive(Clone)]
pub struct ClusterApi {
    router: Router,
    failover: Arc<Failover>,
    clock: Clock,
    window: i64,
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
        }))
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
