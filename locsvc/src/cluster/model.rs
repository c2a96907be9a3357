//! The cluster layout as configured in `locdb`, validated. Pure: rows in,
//! groups and problems out, so every rule is testable without a database.
//!
//! Rules (p_usrloc's, made explicit):
//! - a row with `spare = 1` is a spare, not a member of its group;
//! - a group is the set of non-spare rows sharing an `id`, ordered by `no`;
//!   it needs at least two usable members (p_usrloc's pair);
//! - a row with an unknown URL scheme, an unknown status or a duplicate
//!   (`id`, `no`) key is skipped and reported;
//! - a group that turns invalid keeps its last valid definition (reported),
//!   so a half-edited `locdb` never moves or drops subscribers.

use std::collections::BTreeMap;
use std::fmt;

use crate::domain::UnixTime;
use crate::store::{DbUrl, LocdbRow, rows::from_db_time};

/// `locdb.status` (p_usrloc's `DB_OFF`, `DB_ON`, `DB_INACTIVE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum MemberStatus {
    /// 0: switched off (errors, or an operator); gets no reads or writes.
    Off,
    /// 1: on.
    On,
    /// 2: maintenance; never touched automatically.
    Maintenance,
}

impl MemberStatus {
    /// The `locdb.status` code.
    pub fn code(self) -> i64 {
        match self {
            Self::Off => 0,
            Self::On => 1,
            Self::Maintenance => 2,
        }
    }

    /// Parses a `locdb.status` code.
    pub fn from_code(code: i64) -> Option<Self> {
        match code {
            0 => Some(Self::Off),
            1 => Some(Self::On),
            2 => Some(Self::Maintenance),
            _ => None,
        }
    }
}

impl fmt::Display for MemberStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Off => "off",
            Self::On => "on",
            Self::Maintenance => "maintenance",
        })
    }
}

/// One usable `locdb` row.
#[derive(Debug, Clone, PartialEq)]
pub struct MemberConfig {
    pub group: u32,
    pub no: u32,
    pub url: DbUrl,
    pub status: MemberStatus,
    pub errors: u32,
    /// Last state change; "recent" means the member may lack writes.
    pub failover: UnixTime,
    pub spare: bool,
    pub rg: i64,
}

/// A location group: its members, ordered by `no`.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupConfig {
    pub id: u32,
    pub members: Vec<MemberConfig>,
    /// Every member row says `leaving = 1`: the group is being drained and
    /// owns no AoRs in the next layout.
    pub leaving: bool,
}

/// The validated layout.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ClusterConfig {
    pub groups: BTreeMap<u32, GroupConfig>,
    pub spares: Vec<MemberConfig>,
}

impl ClusterConfig {
    /// The groups that should own AoRs: every usable group not leaving.
    pub fn owners_wanted(&self) -> Vec<u32> {
        self.groups
            .values()
            .filter(|g| !g.leaving)
            .map(|g| g.id)
            .collect()
    }
}

/// Something wrong in `locdb`, reported (logs, metrics, `Stats`) but never fatal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigProblem {
    #[error("locdb row (id={id}, no={no}): bad url: {reason}")]
    BadUrl { id: i64, no: i64, reason: String },
    #[error("locdb row (id={id}, no={no}): unknown status {status} (expected 0, 1 or 2)")]
    BadStatus { id: i64, no: i64, status: i64 },
    #[error("locdb row (id={id}, no={no}): id and no must be between 1 and 2^31-1")]
    BadKey { id: i64, no: i64 },
    #[error("locdb row (id={id}, no={no}) appears more than once; later copies ignored")]
    DuplicateKey { id: i64, no: i64 },
    #[error("group {id}: members {a} and {b} have the same url; the second is ignored")]
    DuplicateUrl { id: u32, a: u32, b: u32 },
    #[error(
        "every group is marked leaving: nobody could own subscribers, so they stay where they \
         are; add a group or clear a mark (groups drain <id> --undo)"
    )]
    EveryGroupLeaving,
    #[error("group {id} has {usable} usable member(s), needs at least 2; {action}")]
    TooFewMembers {
        id: u32,
        usable: usize,
        action: &'static str,
    },
}

/// Builds the layout from `rows`; `previous` supplies the last valid
/// definition of groups that became invalid.
pub fn build(
    rows: &[LocdbRow],
    previous: Option<&ClusterConfig>,
) -> (ClusterConfig, Vec<ConfigProblem>) {
    let mut problems = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut by_group: BTreeMap<u32, Vec<MemberConfig>> = BTreeMap::new();
    let mut spares = Vec::new();
    // A group leaves only when all its member rows say so: a half-finished
    // edit moves nobody.
    let mut staying = std::collections::HashSet::new();
    for r in rows.iter().filter(|r| r.spare == 0 && r.leaving == 0) {
        staying.insert(r.id);
    }
    for r in rows {
        let m = member(r);
        let bad_key = matches!(m, Err(ConfigProblem::BadKey { .. }));
        if !bad_key && !seen.insert((r.id, r.no)) {
            problems.push(ConfigProblem::DuplicateKey { id: r.id, no: r.no });
            continue;
        }
        match m {
            Ok(m) if m.spare => spares.push(m),
            Ok(m) => by_group.entry(m.group).or_default().push(m),
            Err(p) => problems.push(p),
        }
    }
    let mut groups = BTreeMap::new();
    let all_ids: std::collections::BTreeSet<u32> = by_group
        .keys()
        .copied()
        .chain(previous.into_iter().flat_map(|p| p.groups.keys().copied()))
        .collect();
    for id in all_ids {
        let members = by_group.remove(&id).unwrap_or_default();
        let prev = previous.and_then(|p| p.groups.get(&id));
        if let Some(mut g) = group(id, members, prev, &mut problems) {
            g.leaving = !staying.contains(&i64::from(id));
            groups.insert(id, g);
        }
    }
    if !groups.is_empty() && groups.values().all(|g| g.leaving) {
        problems.push(ConfigProblem::EveryGroupLeaving);
    }
    (ClusterConfig { groups, spares }, problems)
}

/// One `locdb` row as a member, or why it is ignored.
fn member(r: &LocdbRow) -> Result<MemberConfig, ConfigProblem> {
    let (id, no) = (r.id, r.no);
    let key_ok = |v: i64| (1..=i64::from(i32::MAX)).contains(&v);
    if !key_ok(id) || !key_ok(no) {
        return Err(ConfigProblem::BadKey { id, no });
    }
    let url = DbUrl::parse(&r.url).map_err(|e| ConfigProblem::BadUrl {
        id,
        no,
        reason: e.to_string(),
    })?;
    let status = MemberStatus::from_code(r.status).ok_or(ConfigProblem::BadStatus {
        id,
        no,
        status: r.status,
    })?;
    Ok(MemberConfig {
        group: id as u32,
        no: no as u32,
        url,
        status,
        errors: r.errors.clamp(0, i64::from(u32::MAX)) as u32,
        failover: from_db_time(r.failover),
        spare: r.spare != 0,
        rg: r.rg,
    })
}

/// Group `id` from its `members` rows (any order): duplicates of a URL are
/// dropped, and a group left with fewer than two members keeps its
/// `previous` definition, or is not used. None when it is not used.
fn group(
    id: u32,
    mut members: Vec<MemberConfig>,
    previous: Option<&GroupConfig>,
    problems: &mut Vec<ConfigProblem>,
) -> Option<GroupConfig> {
    members.sort_by_key(|m| m.no);
    let mut kept: Vec<MemberConfig> = Vec::with_capacity(members.len());
    for m in members {
        if let Some(first) = kept.iter().find(|k| k.url == m.url) {
            problems.push(ConfigProblem::DuplicateUrl {
                id,
                a: first.no,
                b: m.no,
            });
        } else {
            kept.push(m);
        }
    }
    if kept.len() >= 2 {
        return Some(GroupConfig {
            id,
            members: kept,
            leaving: false,
        });
    }
    if kept.is_empty() && previous.is_some() {
        // Every row of the group was deleted: a deliberate removal.
        return None;
    }
    let usable = kept.len();
    match previous {
        Some(g) => {
            problems.push(ConfigProblem::TooFewMembers {
                id,
                usable,
                action: "keeping its last valid definition",
            });
            Some(g.clone())
        }
        None => {
            problems.push(ConfigProblem::TooFewMembers {
                id,
                usable,
                action: "group not used",
            });
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: i64, no: i64, url: &str, status: i64) -> LocdbRow {
        LocdbRow {
            id,
            no,
            url: url.into(),
            status,
            errors: 0,
            failover: crate::store::FAILOVER_RESET,
            spare: 0,
            rg: 0,
            leaving: 0,
        }
    }

    #[test]
    fn a_group_leaves_only_when_every_member_row_says_so() {
        let mut rows = two_groups();
        rows[0].leaving = 1;
        let (c, _) = build(&rows, None);
        assert!(!c.groups[&1].leaving, "half an edit moves nobody");
        assert_eq!(c.owners_wanted(), vec![1, 2]);
        rows[1].leaving = 1;
        let (c, _) = build(&rows, None);
        assert!(c.groups[&1].leaving);
        assert_eq!(c.owners_wanted(), vec![2], "group 1 drains");
        for r in &mut rows {
            r.leaving = 1;
        }
        let (c, problems) = build(&rows, None);
        assert!(c.owners_wanted().is_empty());
        assert_eq!(problems, vec![ConfigProblem::EveryGroupLeaving]);
    }

    fn two_groups() -> Vec<LocdbRow> {
        vec![
            row(1, 1, "mysql://u:p@db1/loc", 1),
            row(1, 2, "mysql://u:p@db2/loc", 1),
            row(2, 1, "postgres://u:p@db3/loc", 1),
            row(2, 2, "sqlite:///var/lib/loc/g2m2.db", 2),
        ]
    }

    #[test]
    fn a_valid_layout_builds_groups_ordered_by_no() {
        let mut rows = two_groups();
        rows.reverse();
        let (c, problems) = build(&rows, None);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(c.groups.len(), 2);
        let g2 = &c.groups[&2];
        assert_eq!(g2.members.iter().map(|m| m.no).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(g2.members[1].status, MemberStatus::Maintenance);
    }

    #[test]
    fn spares_are_kept_apart_from_their_group() {
        let mut rows = two_groups();
        let mut spare = row(1, 3, "mysql://u:p@db9/loc", 1);
        spare.spare = 1;
        spare.rg = 7;
        rows.push(spare);
        let (c, _) = build(&rows, None);
        assert_eq!(c.groups[&1].members.len(), 2);
        assert_eq!(c.spares.len(), 1);
        assert_eq!(c.spares[0].rg, 7);
    }

    #[test]
    fn bad_rows_are_reported_and_skipped_without_failing() {
        let mut rows = two_groups();
        rows.push(row(3, 1, "oracle://x/y", 1));
        rows.push(row(3, 2, "mysql://u:p@db5/loc", 9));
        rows.push(row(1, 1, "mysql://u:p@dbX/loc", 1));
        rows.push(row(0, 1, "mysql://u:p@db6/loc", 1));
        let (c, problems) = build(&rows, None);
        assert_eq!(c.groups.keys().copied().collect::<Vec<_>>(), [1, 2]);
        assert!(matches!(
            problems[0],
            ConfigProblem::BadUrl { id: 3, no: 1, .. }
        ));
        assert!(matches!(
            problems[1],
            ConfigProblem::BadStatus {
                id: 3,
                no: 2,
                status: 9
            }
        ));
        assert!(matches!(
            problems[2],
            ConfigProblem::DuplicateKey { id: 1, no: 1 }
        ));
        assert!(matches!(
            problems[3],
            ConfigProblem::BadKey { id: 0, no: 1 }
        ));
        assert_eq!(problems.len(), 4);
        let text = problems
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n");
        assert!(!text.contains(":p@"), "passwords must not leak: {text}");
    }

    #[test]
    fn a_group_with_one_member_is_not_used() {
        let rows = vec![row(1, 1, "mysql://u:p@db1/loc", 1)];
        let (c, problems) = build(&rows, None);
        assert!(c.groups.is_empty());
        assert_eq!(problems.len(), 1);
    }

    #[test]
    fn a_group_that_turns_invalid_keeps_its_last_valid_definition() {
        let (before, _) = build(&two_groups(), None);
        let mut rows = two_groups();
        rows[1].url = "bogus".into();
        let (after, problems) = build(&rows, Some(&before));
        assert_eq!(after.groups[&1], before.groups[&1]);
        assert!(matches!(
            problems.last(),
            Some(ConfigProblem::TooFewMembers {
                id: 1,
                usable: 1,
                ..
            })
        ));
    }

    #[test]
    fn deleting_every_row_of_a_group_removes_it() {
        let (before, _) = build(&two_groups(), None);
        let (after, problems) = build(&two_groups()[2..], Some(&before));
        assert!(problems.is_empty());
        assert_eq!(after.groups.keys().copied().collect::<Vec<_>>(), [2]);
    }

    #[test]
    fn two_members_on_one_url_are_reported() {
        let mut rows = two_groups();
        rows[1].url = rows[0].url.clone();
        rows.push(row(1, 3, "mysql://u:p@db7/loc", 1));
        let (c, problems) = build(&rows, None);
        assert_eq!(
            problems,
            vec![ConfigProblem::DuplicateUrl { id: 1, a: 1, b: 2 }]
        );
        assert_eq!(
            c.groups[&1]
                .members
                .iter()
                .map(|m| m.no)
                .collect::<Vec<_>>(),
            [1, 3]
        );
    }
}
