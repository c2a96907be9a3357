//! Where an AoR's bindings are while the groups that own AoRs change
//! (docs/layout-changes.md): during a change an AoR whose owner changed may
//! have rows with its new owner, its old owner, or both. This module holds
//! the pure rules: how the two copies merge into what a read returns, and
//! what a Save writes to each group in each phase.

use std::collections::HashMap;

use crate::cluster::layout::Phase;
use crate::domain::Binding;

/// The AoR's bindings as one: every ruid once, the copy written last
/// winning (the new owner's on a tie: it is where writes go), and one
/// binding per contact (the latest), so a contact re-registered on the new
/// owner under a new ruid does not show twice.
pub fn merge(new: Vec<Binding>, old: Vec<Binding>) -> Vec<Binding> {
    let mut by_ruid: HashMap<String, Binding> = HashMap::new();
    for b in old.into_iter().chain(new) {
        // `new` comes second: on equal last_modified it replaces `old`.
        match by_ruid.get(&b.ruid) {
            Some(kept) if kept.last_modified > b.last_modified => {}
            _ => {
                by_ruid.insert(b.ruid.clone(), b);
            }
        }
    }
    let mut by_contact: HashMap<String, Binding> = HashMap::new();
    for b in by_ruid.into_values() {
        match by_contact.get(&b.contact) {
            Some(kept)
                if (kept.last_modified, kept.ruid.as_str())
                    >= (b.last_modified, b.ruid.as_str()) => {}
            _ => {
                by_contact.insert(b.contact.clone(), b);
            }
        }
    }
    let mut out: Vec<Binding> = by_contact.into_values().collect();
    out.sort_by(|a, b| a.ruid.cmp(&b.ruid));
    out
}

/// The rows one group gets from a Save.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GroupWrite {
    pub upserts: Vec<Binding>,
    pub deletes: Vec<String>,
}

impl GroupWrite {
    /// Nothing to write.
    pub fn is_empty(&self) -> bool {
        self.upserts.is_empty() && self.deletes.is_empty()
    }
}

/// What a Save of a moving AoR writes to its new and old owner, given the
/// rows each held (`new_rows`, `old_rows`), the registrar's decision on
/// their merge (`upserts`, `deletes`) and the bindings valid after it
/// (`after`).
///
/// - `Announced`: some instance may still read the old owner alone, so
///   everything lands there; deletes go to both, so no removed binding
///   survives on the new owner to come back through a merge.
/// - `Moving` (and later): every instance reads both; the AoR moves whole:
///   its valid bindings to the new owner, every row of it off the old one.
pub fn split_save(
    phase: Phase,
    new_rows: &[Binding],
    old_rows: &[Binding],
    upserts: Vec<Binding>,
    deletes: Vec<String>,
    after: &[Binding],
) -> (GroupWrite, GroupWrite) {
    match phase {
        Phase::Announced => {
            let on_new: Vec<String> = deletes
                .iter()
                .filter(|r| new_rows.iter().any(|b| &b.ruid == *r))
                .cloned()
                .collect();
            (
                GroupWrite {
                    upserts: Vec::new(),
                    deletes: on_new,
                },
                GroupWrite { upserts, deletes },
            )
        }
        Phase::Moving | Phase::Done => {
            let keep: Vec<Binding> = after.to_vec();
            let stale_on_new: Vec<String> = new_rows
                .iter()
                .filter(|b| !keep.iter().any(|k| k.ruid == b.ruid))
                .map(|b| b.ruid.clone())
                .collect();
            (
                GroupWrite {
                    upserts: keep,
                    deletes: stale_on_new,
                },
                GroupWrite {
                    upserts: Vec::new(),
                    deletes: old_rows.iter().map(|b| b.ruid.clone()).collect(),
                },
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(ruid: &str, contact: &str, last_modified: i64) -> Binding {
        Binding::new(ruid, contact, 2_000_000_000, last_modified)
    }

    #[test]
    fn merge_keeps_the_latest_copy_of_each_ruid_and_one_binding_per_contact() {
        let new = vec![b("r1", "sip:a@x", 20), b("r3", "sip:c@x", 10)];
        let old = vec![
            b("r1", "sip:a@x", 10),
            b("r2", "sip:b@x", 10),
            b("r4", "sip:c@x", 30),
        ];
        let m = merge(new, old);
        let got: Vec<(&str, i64)> = m
            .iter()
            .map(|b| (b.ruid.as_str(), b.last_modified))
            .collect();
        assert_eq!(got, vec![("r1", 20), ("r2", 10), ("r4", 30)]);
        // A tie goes to the new owner's copy.
        let m = merge(vec![b("r1", "sip:new@x", 5)], vec![b("r1", "sip:old@x", 5)]);
        assert_eq!(m[0].contact, "sip:new@x");
    }

    #[test]
    fn an_announced_save_writes_the_old_owner_and_deletes_everywhere() {
        let new_rows = vec![b("gone", "sip:g@x", 1)];
        let old_rows = vec![b("r1", "sip:a@x", 1), b("gone", "sip:g@x", 1)];
        let (new, old) = split_save(
            Phase::Announced,
            &new_rows,
            &old_rows,
            vec![b("r2", "sip:b@x", 2)],
            vec!["gone".into()],
            &[b("r1", "sip:a@x", 1), b("r2", "sip:b@x", 2)],
        );
        assert!(
            new.upserts.is_empty(),
            "nothing new lands on the new owner yet"
        );
        assert_eq!(new.deletes, vec!["gone".to_string()]);
        assert_eq!(old.upserts.len(), 1);
        assert_eq!(old.deletes, vec!["gone".to_string()]);
    }

    #[test]
    fn a_moving_save_carries_the_whole_aor_and_empties_the_old_owner() {
        let new_rows = vec![b("stale", "sip:s@x", 1)];
        let old_rows = vec![b("r1", "sip:a@x", 1), b("x", "sip:expired@x", 1)];
        let after = [b("r1", "sip:a@x", 1), b("r2", "sip:b@x", 2)];
        let (new, old) = split_save(
            Phase::Moving,
            &new_rows,
            &old_rows,
            vec![b("r2", "sip:b@x", 2)],
            vec!["stale".into()],
            &after,
        );
        let carried: Vec<&str> = new.upserts.iter().map(|b| b.ruid.as_str()).collect();
        assert_eq!(carried, vec!["r1", "r2"]);
        assert_eq!(new.deletes, vec!["stale".to_string()]);
        assert!(old.upserts.is_empty());
        assert_eq!(old.deletes, vec!["r1".to_string(), "x".to_string()]);
    }
}
