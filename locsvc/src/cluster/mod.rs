//! The cluster: what `locdb` says (`model`), the live snapshot the router
//! reads (`topology`), the task that keeps it current (`watcher`), the
//! other locsvc instances serving it (`registry`), and the layout epochs
//! that change which groups own AoRs (`layout`).

pub mod layout;
pub mod model;
pub mod registry;
pub mod topology;
pub mod watcher;

pub use crate::store::StoreOptions;
pub use model::{ClusterConfig, ConfigProblem, GroupConfig, MemberConfig, MemberStatus};
pub use registry::{Peers, Registry};
pub use topology::{Group, Member, MemberHealth, Placement, Topology};
pub use watcher::ClusterWatcher;
