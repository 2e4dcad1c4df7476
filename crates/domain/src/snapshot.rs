//! The keep policy of scheduled snapshots and its pruning decision: a pure
//! function of the snapshots' times, tested with a table on a fake clock.
//!
//! The rules are restic's `forget --keep-*`: snapshots are taken newest
//! first; `last` keeps the newest n; `hourly`, `daily` and `weekly` keep the
//! newest snapshot of each of the n most recent hours, days (UTC) and ISO
//! weeks (Monday to Sunday, UTC) that have one. A snapshot kept by any rule
//! is kept.

use crate::Millis;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// `compute.snapshots.keep`. Absent counts are 0.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Keep {
    #[serde(default, skip_serializing_if = "is_zero")]
    pub last: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub hourly: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub daily: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub weekly: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl Keep {
    pub fn total(&self) -> u64 {
        u64::from(self.last)
            + u64::from(self.hourly)
            + u64::from(self.daily)
            + u64::from(self.weekly)
    }
}

const HOUR: Millis = 3_600_000;
const DAY: Millis = 24 * HOUR;

/// The ISO week of a UTC day number (days since 1970-01-01, a Thursday).
fn week(day: Millis) -> Millis {
    (day + 3).div_euclid(7)
}

/// Which of `snapshots` (`(id, taken at)`) the policy keeps; the others are
/// pruned. Ties in time are broken by id, so the answer never depends on the
/// order of the input.
pub fn kept<T: Ord + Clone>(snapshots: &[(T, Millis)], keep: &Keep) -> BTreeSet<T> {
    let mut newest_first: Vec<&(T, Millis)> = snapshots.iter().collect();
    newest_first.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| b.0.cmp(&a.0)));
    let mut out = BTreeSet::new();
    for s in newest_first.iter().take(keep.last as usize) {
        out.insert(s.0.clone());
    }
    let mut bucketed = |n: u32, bucket: &dyn Fn(Millis) -> Millis| {
        let mut last_bucket = None;
        let mut taken = 0;
        for s in &newest_first {
            if taken == n {
                break;
            }
            let b = bucket(s.1);
            if last_bucket != Some(b) {
                last_bucket = Some(b);
                taken += 1;
                out.insert(s.0.clone());
            }
        }
    };
    bucketed(keep.hourly, &|t| t.div_euclid(HOUR));
    bucketed(keep.daily, &|t| t.div_euclid(DAY));
    bucketed(keep.weekly, &|t| week(t.div_euclid(DAY)));
    out
}

/// Whether a scheduled snapshot is due at `now`, given when the newest one
/// was taken.
pub fn due(newest: Option<Millis>, every_ms: Millis, now: Millis) -> bool {
    newest.is_none_or(|t| now.saturating_sub(t) >= every_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::{Expect, expect};

    /// 2024-01-01T00:00:00Z, a Monday.
    const T0: Millis = 1_704_067_200_000;
    const MIN: Millis = 60_000;

    /// Snapshots named by their offset from T0, checked against a policy:
    /// the expectation lists what is kept.
    fn check(times: &[Millis], keep: Keep, expect: Expect) {
        let snaps: Vec<(String, Millis)> = times
            .iter()
            .map(|t| (format!("{:>5}m", (t - T0) / MIN), *t))
            .collect();
        let kept = kept(&snaps, &keep);
        let kept: Vec<&str> = kept.iter().map(|s| s.trim()).collect();
        expect.assert_eq(&kept.join(" "));
    }

    fn every(step: Millis, n: i64) -> Vec<Millis> {
        (0..n).map(|i| T0 + i * step).collect()
    }

    #[test]
    fn keep_last_keeps_the_newest() {
        check(
            &every(10 * MIN, 6),
            Keep {
                last: 2,
                ..Keep::default()
            },
            expect!["40m 50m"],
        );
    }

    #[test]
    fn keep_last_more_than_there_are_keeps_all() {
        check(
            &every(10 * MIN, 3),
            Keep {
                last: 5,
                ..Keep::default()
            },
            expect!["0m 10m 20m"],
        );
    }

    #[test]
    fn hourly_keeps_the_newest_of_each_recent_hour() {
        // Every 20 minutes for 3 hours: the newest of hours 2 and 1.
        check(
            &every(20 * MIN, 9),
            Keep {
                hourly: 2,
                ..Keep::default()
            },
            expect!["100m 160m"],
        );
    }

    #[test]
    fn hours_without_snapshots_are_not_counted() {
        // Hours 0 and 5 only: both kept with hourly 2.
        check(
            &[T0 + 5 * MIN, T0 + 300 * MIN + 1],
            Keep {
                hourly: 2,
                ..Keep::default()
            },
            expect!["5m 300m"],
        );
    }

    #[test]
    fn daily_and_weekly_use_utc_days_and_monday_weeks() {
        // One a day at noon for 15 days from Monday 2024-01-01 (days 0-14):
        // daily 2 keeps days 13 and 14; weekly 3 the newest of each ISO
        // week: day 14 (a Monday, alone in its week), day 13 (a Sunday) and
        // day 6 (the first Sunday).
        let times: Vec<Millis> = (0..15).map(|d| T0 + d * DAY + 12 * HOUR).collect();
        check(
            &times,
            Keep {
                daily: 2,
                weekly: 3,
                ..Keep::default()
            },
            expect!["9360m 19440m 20880m"],
        );
    }

    #[test]
    fn rules_add_up_and_overlap() {
        check(
            &every(30 * MIN, 8),
            Keep {
                last: 1,
                hourly: 2,
                ..Keep::default()
            },
            expect!["150m 210m"],
        );
    }

    #[test]
    fn ties_break_by_id_whatever_the_input_order() {
        let a = [("a".to_owned(), T0), ("b".to_owned(), T0)];
        let b = [("b".to_owned(), T0), ("a".to_owned(), T0)];
        let keep = Keep {
            last: 1,
            ..Keep::default()
        };
        assert_eq!(kept(&a, &keep), kept(&b, &keep));
    }

    #[test]
    fn due_after_every() {
        assert!(due(None, 1000, T0));
        assert!(!due(Some(T0), 1000, T0 + 999));
        assert!(due(Some(T0), 1000, T0 + 1000));
    }
}
