//! Small-group suppression, shared by the AI extracts and by the KPIs
//! managers and HR see in privacy mode `team_only`.
//!
//! The figures are cells keyed by (period, group), where the group is one
//! part of a whole (a department) or the whole itself (`None`). Per period:
//! - a part with fewer than k subjects is suppressed (primary);
//! - the whole minus the published parts equals the suppressed parts, so
//!   while the suppressed parts hold fewer than k subjects together, the
//!   smallest published part is suppressed too (complementary); if none is
//!   left, the whole period is suppressed;
//! - a period whose whole has fewer than k subjects is suppressed whole.

use std::collections::{BTreeMap, BTreeSet};

/// Removes the cells of `cells` that may not be published, counting each
/// cell's people with `subjects`; returns how many were removed per period.
pub(crate) fn suppress<P, G, C>(
    cells: &mut BTreeMap<(P, Option<G>), C>,
    k: i64,
    subjects: impl Fn(&C) -> i64,
) -> BTreeMap<P, usize>
where
    P: Ord + Clone,
    G: Ord + Clone,
{
    let periods: BTreeSet<P> = cells.keys().map(|(p, _)| p.clone()).collect();
    let mut removed = BTreeMap::new();
    for p in periods {
        let whole = (p.clone(), None);
        let total = cells.get(&whole).map_or(0, &subjects);
        let mut parts: Vec<(i64, (P, Option<G>))> = cells
            .iter()
            .filter(|((q, g), _)| *q == p && g.is_some())
            .map(|(key, c)| (subjects(c), key.clone()))
            .collect();
        parts.sort();
        let mut hidden = Vec::new();
        let mut hidden_subjects = 0;
        let mut published = Vec::new();
        for (n, key) in parts {
            if n < k {
                hidden_subjects += n;
                hidden.push(key);
            } else {
                published.push((n, key));
            }
        }
        // Complementary: what the whole minus the published parts reveals
        // must itself be a group of at least k.
        let mut whole_period = total < k;
        published.reverse(); // largest first; pop takes the smallest
        while !hidden.is_empty() && hidden_subjects < k && !whole_period {
            match published.pop() {
                Some((n, key)) => {
                    hidden_subjects += n;
                    hidden.push(key);
                }
                None => whole_period = true,
            }
        }
        if whole_period {
            hidden.extend(published.into_iter().map(|(_, key)| key));
            hidden.push(whole);
        }
        let count = hidden
            .into_iter()
            .filter(|key| cells.remove(key).is_some())
            .count();
        removed.insert(p, count);
    }
    removed
}
