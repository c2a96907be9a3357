//! Layout epochs (docs/layout-changes.md): which groups own AoRs, and the
//! phase of a change of owners that every instance serves. Pure: the rows
//! of `locsvc_layout` and `locsvc_instances` in, the next step out, so each
//! rule is tested without a database; `watcher` carries the steps out.

use std::fmt;

use crate::partition::HashMode;
use crate::store::InstanceRow;

/// Where a change of owners stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Every instance reads the AoRs that move from their new and old
    /// owner; writes still land on the old one.
    Announced,
    /// Writes carry a moved AoR's bindings to its new owner; the mover
    /// copies the rest.
    Moving,
    /// Every binding is with its owner: one owner per AoR again.
    Done,
}

impl Phase {
    /// The `locsvc_layout.phase` code.
    pub fn code(self) -> i32 {
        match self {
            Self::Announced => 0,
            Self::Moving => 1,
            Self::Done => 2,
        }
    }

    /// Parses a `locsvc_layout.phase` code.
    pub fn from_code(code: i32) -> Option<Self> {
        match code {
            0 => Some(Self::Announced),
            1 => Some(Self::Moving),
            2 => Some(Self::Done),
            _ => None,
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Announced => "announced",
            Self::Moving => "moving",
            Self::Done => "done",
        })
    }
}

/// One epoch of `locsvc_layout`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Epoch {
    pub epoch: i64,
    /// Groups owning AoRs in this epoch, ascending.
    pub owners: Vec<u32>,
    pub hash: HashMode,
    pub phase: Phase,
    /// Every live instance has served `Moving` (no upsert reaches an old
    /// owner any more).
    pub moving_acked: bool,
}

/// `owners` as stored: ids ascending, comma-separated.
pub fn owners_text(owners: &[u32]) -> String {
    let mut v = owners.to_vec();
    v.sort_unstable();
    v.dedup();
    v.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
}

/// Parses a stored `owners` list; None if any id is not a group id.
pub fn parse_owners(text: &str) -> Option<Vec<u32>> {
    if text.trim().is_empty() {
        return Some(Vec::new());
    }
    let mut v = text
        .split(',')
        .map(|t| t.trim().parse::<u32>().ok().filter(|&g| g > 0))
        .collect::<Option<Vec<u32>>>()?;
    v.sort_unstable();
    v.dedup();
    Some(v)
}

/// What the layout needs next, as one instance sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// No epoch yet: the first one, done at once (nothing to move).
    Bootstrap { owners: Vec<u32>, hash: HashMode },
    /// The wanted owners differ from the current epoch's, which is done:
    /// start the next epoch, announced.
    Start {
        epoch: i64,
        owners: Vec<u32>,
        hash: HashMode,
    },
    /// Every live instance serves the current phase: move to the next.
    Advance { epoch: i64, from: Phase },
    /// Every live instance has served `Moving`: record it.
    AckMoving { epoch: i64 },
    /// Nothing to do now.
    Wait,
}

/// The next step, given the current epoch, the owners and hash this
/// instance wants (from `locdb` and its settings), and what every live
/// instance (this one included) reports serving. `Moving` → `Done` is the
/// mover's to take, once a pass that began after `moving_acked` is through;
/// it is never a step here.
pub fn next_step(
    current: Option<&Epoch>,
    wanted: &[u32],
    hash: HashMode,
    live: &[InstanceRow],
) -> Step {
    let Some(cur) = current else {
        return if wanted.is_empty() {
            Step::Wait
        } else {
            Step::Bootstrap {
                owners: wanted.to_vec(),
                hash,
            }
        };
    };
    let all_serve = |phase: Phase| {
        live.iter()
            .all(|i| i.epoch == cur.epoch && i.phase == phase.code())
    };
    match cur.phase {
        Phase::Done if !wanted.is_empty() && (wanted != cur.owners || hash != cur.hash) => {
            Step::Start {
                epoch: cur.epoch + 1,
                owners: wanted.to_vec(),
                hash,
            }
        }
        Phase::Done => Step::Wait,
        Phase::Announced if all_serve(Phase::Announced) => Step::Advance {
            epoch: cur.epoch,
            from: Phase::Announced,
        },
        Phase::Moving if !cur.moving_acked && all_serve(Phase::Moving) => {
            Step::AckMoving { epoch: cur.epoch }
        }
        _ => Step::Wait,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn epoch(n: i64, owners: &[u32], phase: Phase) -> Epoch {
        Epoch {
            epoch: n,
            owners: owners.to_vec(),
            hash: HashMode::Xxh3,
            phase,
            moving_acked: false,
        }
    }

    fn serving(id: &str, epoch: i64, phase: Phase) -> InstanceRow {
        InstanceRow {
            id: id.into(),
            host: "h".into(),
            started_ms: 1,
            seen_ms: 2,
            newest_peer_ms: 1,
            epoch,
            phase: phase.code(),
        }
    }

    #[test]
    fn owners_round_trip_sorted_and_reject_garbage() {
        assert_eq!(owners_text(&[3, 1, 2, 1]), "1,2,3");
        assert_eq!(parse_owners("3, 1,2"), Some(vec![1, 2, 3]));
        assert_eq!(parse_owners(""), Some(vec![]));
        assert_eq!(parse_owners("1,x"), None);
        assert_eq!(parse_owners("0,1"), None);
    }

    #[test]
    fn the_first_epoch_is_done_at_once_and_a_new_group_starts_the_next() {
        let x = HashMode::Xxh3;
        assert_eq!(
            next_step(None, &[1, 2], x, &[]),
            Step::Bootstrap {
                owners: vec![1, 2],
                hash: x
            }
        );
        assert_eq!(next_step(None, &[], x, &[]), Step::Wait);
        let done = epoch(1, &[1, 2], Phase::Done);
        assert_eq!(next_step(Some(&done), &[1, 2], x, &[]), Step::Wait);
        assert_eq!(
            next_step(Some(&done), &[1, 2, 3], x, &[]),
            Step::Start {
                epoch: 2,
                owners: vec![1, 2, 3],
                hash: x
            }
        );
        // A drain is a change of owners too.
        assert!(matches!(
            next_step(Some(&done), &[2], x, &[]),
            Step::Start { epoch: 2, .. }
        ));
        // No groups at all (a half-finished edit) never empties the layout.
        assert_eq!(next_step(Some(&done), &[], x, &[]), Step::Wait);
    }

    #[test]
    fn a_phase_advances_only_once_every_live_instance_serves_it() {
        let x = HashMode::Xxh3;
        let ann = epoch(2, &[1, 2, 3], Phase::Announced);
        let lagging = [
            serving("a", 2, Phase::Announced),
            serving("b", 1, Phase::Done),
        ];
        assert_eq!(next_step(Some(&ann), &[1, 2, 3], x, &lagging), Step::Wait);
        let caught_up = [
            serving("a", 2, Phase::Announced),
            serving("b", 2, Phase::Announced),
        ];
        assert_eq!(
            next_step(Some(&ann), &[1, 2, 3], x, &caught_up),
            Step::Advance {
                epoch: 2,
                from: Phase::Announced
            }
        );
        // While a change runs, a newer wish waits for it to finish.
        assert_eq!(next_step(Some(&ann), &[2, 3], x, &lagging), Step::Wait);

        let mut mov = epoch(2, &[1, 2, 3], Phase::Moving);
        assert_eq!(next_step(Some(&mov), &[1, 2, 3], x, &caught_up), Step::Wait);
        let moving = [
            serving("a", 2, Phase::Moving),
            serving("b", 2, Phase::Moving),
        ];
        assert_eq!(
            next_step(Some(&mov), &[1, 2, 3], x, &moving),
            Step::AckMoving { epoch: 2 }
        );
        // Recorded once; then only the mover ends the epoch.
        mov.moving_acked = true;
        assert_eq!(next_step(Some(&mov), &[1, 2, 3], x, &moving), Step::Wait);
    }
}
