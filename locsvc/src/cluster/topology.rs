//! The live cluster snapshot: groups with their members' stores and health.
//! A new snapshot is published on every `locdb` change; members whose
//! (group, no, url) did not change keep their pool and their health (which
//! `failover` owns).

use std::collections::BTreeMap;
use std::sync::Arc;

use super::layout::Phase;
use super::{ConfigProblem, MemberConfig, MemberStatus};
use crate::domain::UnixTime;
pub use crate::failover::MemberHealth;
use crate::metrics::MemberTimers;
use crate::partition::Partitioner;
use crate::store::LocationStore;

/// A group member in one snapshot.
pub struct Member {
    pub config: MemberConfig,
    pub store: Arc<dyn LocationStore>,
    pub health: Arc<MemberHealth>,
    /// Where its reads and writes report their time.
    pub timers: MemberTimers,
}

impl std::fmt::Debug for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Member")
            .field("config", &self.config)
            .field("health", &self.health)
            .finish_non_exhaustive()
    }
}

impl Member {
    /// Receives writes (status on).
    pub fn writable(&self) -> bool {
        self.config.status == MemberStatus::On
    }

    /// Holds everything its partners hold, as far as we know (see
    /// `MemberHealth::complete`).
    pub fn readable(&self, now: UnixTime, window: i64) -> bool {
        self.writable() && self.health.complete(self.config.failover, now, window)
    }

    /// A missed write this instance saw that `locdb.failover` (as last read)
    /// does not cover yet.
    pub fn unrecorded_miss(&self) -> bool {
        self.health.unrecorded_miss(self.config.failover)
    }

    /// `group/no`, for logs and errors.
    pub fn label(&self) -> String {
        format!("{}/{}", self.config.group, self.config.no)
    }
}

/// A location group in one snapshot.
#[derive(Debug)]
pub struct Group {
    pub id: u32,
    pub members: Vec<Arc<Member>>,
}

/// Which layout epoch the partitioner comes from, and, while that epoch's
/// change of owners runs, the partitioner of the epoch before (an AoR whose
/// owner changed may still have rows with its old owner).
#[derive(Debug, Clone)]
pub struct Placement {
    /// 0 before the first epoch is read (owners from `locdb` directly).
    pub epoch: i64,
    pub phase: Phase,
    pub previous: Option<Partitioner>,
}

impl Default for Placement {
    fn default() -> Self {
        Self {
            epoch: 0,
            phase: Phase::Done,
            previous: None,
        }
    }
}

/// One published view of the cluster.
#[derive(Debug)]
pub struct Topology {
    /// Increases with every published change.
    pub generation: u64,
    /// Places AoRs on the owners of the current epoch.
    pub partitioner: Partitioner,
    pub placement: Placement,
    pub groups: BTreeMap<u32, Arc<Group>>,
    pub spares: Vec<MemberConfig>,
    pub problems: Vec<ConfigProblem>,
}

impl Topology {
    /// An empty topology (before the first load).
    pub fn empty(partitioner: Partitioner) -> Self {
        Self {
            generation: 0,
            partitioner,
            placement: Placement::default(),
            groups: BTreeMap::new(),
            spares: Vec::new(),
            problems: Vec::new(),
        }
    }
}
