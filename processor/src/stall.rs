//! Partitions nobody in the group is reading.
//!
//! A member that dies holds its partitions until the group's session
//! timeout; then the broker has the survivors rebalance and take them over.
//! A broker whose group coordinator gets that wrong (measured on Tansu
//! 0.6.0: when a member of a formed group dies, the survivors rejoin and
//! are handed their old assignment again, so the dead member's partitions
//! have no reader) leaves records in the log that no processor will ever
//! commit, while every processor looks healthy.
//!
//! So each processor watches the group's commits. A partition with records
//! waiting whose commit has not moved for `after`, while this processor
//! kept stepping, has no working reader: the processor leaves the group and
//! joins it again, which makes any broker assign every partition afresh.
//! Leaving costs nothing that is not durable: a rejoin happens between
//! steps, after the last commit, and reading resumes from the commits.
//!
//! A processor that was itself held up (a long flush, the lake or the log
//! unreachable) cannot tell a stalled partition from one whose reader was
//! held up as well, so a gap between two looks restarts every clock.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The group's commits as this processor last saw them.
#[derive(Debug, Default)]
pub struct StallWatch {
    /// Per partition: the committed position last seen, and since when.
    commits: BTreeMap<i32, (i64, Instant)>,
    /// When the watch last looked.
    looked: Option<Instant>,
}

/// One partition as measured: the group's committed position and the
/// records after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionProgress {
    pub partition: i32,
    pub committed: i64,
    pub behind: i64,
}

impl StallWatch {
    /// Looks at the partitions measured at `now`; returns those whose
    /// commit has not moved for `after` while records waited.
    pub fn stalled(
        &mut self,
        now: Instant,
        partitions: &[PartitionProgress],
        after: Duration,
    ) -> Vec<i32> {
        // Looks come about once a second while the processor steps; a
        // quarter of `after` without one means it was held up itself.
        let held_up = self
            .looked
            .is_none_or(|t| now.saturating_duration_since(t) > after / 4);
        self.looked = Some(now);
        let mut stalled = Vec::new();
        for p in partitions {
            let (committed, since) = self
                .commits
                .entry(p.partition)
                .or_insert((p.committed, now));
            if held_up || *committed != p.committed || p.behind == 0 {
                (*committed, *since) = (p.committed, now);
            } else if now.saturating_duration_since(*since) >= after {
                stalled.push(p.partition);
            }
        }
        stalled
    }

    /// Forgets everything seen (after a rejoin: the clocks start again).
    pub fn reset(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AFTER: Duration = Duration::from_secs(60);

    fn at(committed: i64, behind: i64) -> [PartitionProgress; 2] {
        [
            PartitionProgress {
                partition: 0,
                committed: 100,
                behind: 0,
            },
            PartitionProgress {
                partition: 1,
                committed,
                behind,
            },
        ]
    }

    /// Looks once a second from `start` for `secs` seconds; the partitions
    /// reported stalled at the last look.
    fn watch(
        watch: &mut StallWatch,
        start: Instant,
        secs: u64,
        p: &[PartitionProgress],
    ) -> Vec<i32> {
        let mut stalled = Vec::new();
        for s in 0..=secs {
            stalled = watch.stalled(start + Duration::from_secs(s), p, AFTER);
        }
        stalled
    }

    #[test]
    fn a_partition_with_records_and_no_commit_for_the_whole_time_is_stalled() {
        let start = Instant::now();
        let mut w = StallWatch::default();
        assert!(watch(&mut w, start, 59, &at(5, 10)).is_empty());
        assert_eq!(
            w.stalled(start + Duration::from_secs(60), &at(5, 10), AFTER),
            [1]
        );
    }

    #[test]
    fn a_commit_or_nothing_waiting_restarts_the_clock() {
        let start = Instant::now();
        let mut w = StallWatch::default();
        assert!(watch(&mut w, start, 50, &at(5, 10)).is_empty());
        // The partition's reader commits: its clock starts again.
        assert!(
            w.stalled(start + Duration::from_secs(51), &at(6, 9), AFTER)
                .is_empty()
        );
        assert!(watch(&mut w, start + Duration::from_secs(52), 50, &at(6, 9)).is_empty());
        // Caught up, then records arrive: counted from when they waited.
        let later = start + Duration::from_secs(200);
        let mut w = StallWatch::default();
        assert!(watch(&mut w, later, 100, &at(7, 0)).is_empty());
        assert!(watch(&mut w, later + Duration::from_secs(101), 58, &at(7, 3)).is_empty());
    }

    #[test]
    fn a_processor_held_up_itself_starts_every_clock_again() {
        let start = Instant::now();
        let mut w = StallWatch::default();
        assert!(watch(&mut w, start, 40, &at(5, 10)).is_empty());
        // Nothing looked for 30 s (its own flush waited for the lake): the
        // partition's reader may have waited too.
        let back = start + Duration::from_secs(70);
        assert!(w.stalled(back, &at(5, 10), AFTER).is_empty());
        assert!(watch(&mut w, back, 59, &at(5, 10)).is_empty());
        assert_eq!(
            w.stalled(back + Duration::from_secs(60), &at(5, 10), AFTER),
            [1]
        );
    }
}
