//! Privacy mode `team_only`: what managers and HR see when their tenant
//! chose it (the scope's [`crate::scope::Scope::groups_only`]).
//!
//! They see group figures only, by the extracts' suppression rules
//! ([`crate::suppression`]) with the tenant's k:
//! - KPIs grouped by department, day or week, always by day or week, never
//!   by employee or site; a week only as a whole (Monday to Sunday);
//! - per day, the caller's whole scope and each of its departments (those
//!   without one form a group of their own) are cells counted by their
//!   distinct subjects in the KPI's table; a cell under k is suppressed,
//!   and complementary suppression keeps the whole minus the published
//!   departments from showing a group under k;
//! - a week row is shown only when its group was shown on every day of the
//!   week it had anyone, so a week minus its days reveals nothing either;
//! - apps rows list top apps on department-day rows only, and only apps
//!   used by at least k people of that group;
//! - no SQL, since a statement over rows cannot be held to groups.
//!
//! Suppressed rows are left out of the answer and counted in it. Figures of
//! a day still change while its data arrives; unlike an extract's, a KPI's
//! day is not frozen.

use std::collections::{BTreeMap, BTreeSet};

use arrow::array::{Array, AsArray};
use arrow::datatypes::Int64Type;
use chrono::{Datelike, Days, NaiveDate, Weekday};

use crate::kpi::{self, GroupBy, GroupKey, KpiRequest, KpiRow, MAX_PAGE, Page};
use crate::session::ScopedSession;
use crate::suppression::suppress;
use crate::{QueryError, utf8};

/// A group of the caller's scope: `None` is the whole scope, `Some(d)` the
/// department `d` (`Some(None)`: employees without a department).
type Group = Option<Option<String>>;

/// Refuses a request that would show anything but group figures.
pub fn check(request: &KpiRequest) -> Result<(), QueryError> {
    let by = &request.group_by;
    let refuse = |why: &str| Err(QueryError::TeamOnly(why.to_string()));
    if by.contains(&GroupBy::Employee) {
        return refuse(
            "this tenant shows managers and HR no figures per employee; group by department, day or week",
        );
    }
    if by.contains(&GroupBy::Site) {
        return refuse("this tenant shows managers and HR no figures per site");
    }
    if !by.contains(&GroupBy::Day) && !by.contains(&GroupBy::Week) {
        return refuse("group by day or week as well, so each figure is one period's group");
    }
    if by.contains(&GroupBy::Week)
        && !by.contains(&GroupBy::Day)
        && (request.from.weekday() != Weekday::Mon || request.to.weekday() != Weekday::Sun)
    {
        return refuse("weeks are shown whole: from must be a Monday and to a Sunday");
    }
    Ok(())
}

/// Which groups of which days may be shown.
#[derive(Debug, Default)]
pub struct Published {
    /// (day, group) cells that had anyone.
    present: BTreeSet<(NaiveDate, Group)>,
    /// Those that passed suppression.
    shown: BTreeSet<(NaiveDate, Group)>,
}

impl Published {
    /// The cells of `table` on the days of `request` in `session`'s scope,
    /// suppressed with `k`.
    pub async fn of(
        session: &ScopedSession,
        table: &str,
        request: &KpiRequest,
        k: u32,
    ) -> Result<Published, QueryError> {
        let rows = kpi::local_days_sql(
            table,
            "subject, department",
            &request.time_zone,
            request.from,
            request.to,
        )?;
        let by_department = format!(
            "SELECT day, department, count(DISTINCT subject) AS subjects
             FROM ({rows}) GROUP BY day, department"
        );
        let whole =
            format!("SELECT day, count(DISTINCT subject) AS subjects FROM ({rows}) GROUP BY day");
        let mut counts: BTreeMap<(NaiveDate, Group), i64> = BTreeMap::new();
        for (sql, grouped) in [(by_department, true), (whole, false)] {
            for batch in &kpi::complete(session.query(&sql).await?)? {
                let day = utf8(batch.column(0));
                let department = grouped.then(|| utf8(batch.column(1)));
                let subjects = batch
                    .column(batch.num_columns() - 1)
                    .as_primitive::<Int64Type>();
                for i in 0..batch.num_rows() {
                    let day: NaiveDate = day.value(i).parse().map_err(|e| {
                        QueryError::BadRequest(format!("a day the engine gave back: {e}"))
                    })?;
                    let group = department
                        .as_ref()
                        .map(|d| d.is_valid(i).then(|| d.value(i).to_string()));
                    counts.insert((day, group), subjects.value(i));
                }
            }
        }
        Ok(Self::from_counts(counts, k))
    }

    /// The cells of `counts` (distinct subjects per day and group) that
    /// suppression with `k` leaves.
    fn from_counts(mut counts: BTreeMap<(NaiveDate, Group), i64>, k: u32) -> Published {
        let present = counts.keys().cloned().collect();
        suppress(&mut counts, i64::from(k), |n| *n);
        Published {
            present,
            shown: counts.into_keys().collect(),
        }
    }

    /// Whether the row keyed `key` (grouped by `group_by`, which [`check`]
    /// passed) may be shown.
    pub fn shows(&self, group_by: &[GroupBy], key: &GroupKey) -> bool {
        let group: Group = group_by
            .contains(&GroupBy::Department)
            .then(|| key.department.clone());
        let day = |s: &Option<String>| s.as_deref().and_then(|d| d.parse::<NaiveDate>().ok());
        if group_by.contains(&GroupBy::Day) {
            return day(&key.day).is_some_and(|d| self.shown.contains(&(d, group)));
        }
        let Some(monday) = day(&key.week) else {
            return false;
        };
        let days: Vec<(NaiveDate, Group)> = (0..7)
            .map(|i| (monday + Days::new(i), group.clone()))
            .collect();
        days.iter().any(|cell| self.present.contains(cell))
            && days
                .iter()
                .all(|cell| !self.present.contains(cell) || self.shown.contains(cell))
    }
}

/// A team_only answer: every row `fetch` gives for `request` (page after
/// page), those `published` may not show left out and counted, then
/// `request`'s page of the rest.
///
/// `fetch` takes its request by value, so its future borrows nothing of
/// this function's and stays `Send` (an async closure's would not).
pub async fn answer<T, F, Fut>(
    request: &KpiRequest,
    published: &Published,
    mut fetch: F,
) -> Result<(Page<T>, usize), QueryError>
where
    T: KpiRow,
    F: FnMut(KpiRequest) -> Fut,
    Fut: Future<Output = Result<Page<T>, QueryError>>,
{
    let mut all = KpiRequest {
        limit: MAX_PAGE,
        offset: 0,
        ..request.clone()
    };
    let (mut rows, mut suppressed) = (Vec::new(), 0);
    loop {
        let page = fetch(all.clone()).await?;
        for row in page.rows {
            if published.shows(&request.group_by, row.key()) {
                rows.push(row);
            } else {
                suppressed += 1;
            }
        }
        match page.next_offset {
            Some(next) => all.offset = next,
            None => break,
        }
    }
    let rows = rows
        .into_iter()
        .skip(request.offset)
        .take(request.limit + 1)
        .collect();
    Ok((kpi::page(rows, request), suppressed))
}

#[cfg(test)]
mod tests {
    use super::*;

    impl KpiRow for GroupKey {
        fn key(&self) -> &GroupKey {
            self
        }
    }

    fn d(day: &str) -> NaiveDate {
        day.parse().unwrap()
    }

    fn request(group_by: Vec<GroupBy>, from: &str, to: &str) -> KpiRequest {
        KpiRequest {
            time_zone: "UTC".into(),
            from: d(from),
            to: d(to),
            group_by,
            limit: 100,
            offset: 0,
        }
    }

    fn key(department: Option<&str>, day: Option<&str>, week: Option<&str>) -> GroupKey {
        GroupKey {
            department: department.map(str::to_string),
            day: day.map(str::to_string),
            week: week.map(str::to_string),
            ..GroupKey::default()
        }
    }

    /// Counts per (day, department) with each day's whole as their sum.
    fn published(cells: &[(&str, Option<&str>, i64)], k: u32) -> Published {
        let mut counts = BTreeMap::new();
        for (day, department, n) in cells {
            counts.insert((d(day), Some(department.map(str::to_string))), *n);
            *counts.entry((d(day), None)).or_insert(0) += n;
        }
        Published::from_counts(counts, k)
    }

    #[test]
    fn only_period_groupings_of_whole_weeks_pass() {
        use GroupBy::*;
        let refused = |g: Vec<GroupBy>, from, to| {
            matches!(check(&request(g, from, to)), Err(QueryError::TeamOnly(_)))
        };
        // 2026-11-30 is a Monday, 2026-12-06 a Sunday.
        assert!(refused(vec![Employee, Day], "2026-11-30", "2026-12-06"));
        assert!(refused(vec![Site, Day], "2026-11-30", "2026-12-06"));
        assert!(refused(vec![Department], "2026-11-30", "2026-12-06"));
        assert!(refused(vec![Week], "2026-12-01", "2026-12-06"));
        assert!(refused(vec![Department, Week], "2026-11-30", "2026-12-05"));
        for ok in [
            vec![Day],
            vec![Department, Day],
            vec![Week],
            vec![Week, Department],
        ] {
            assert!(check(&request(ok, "2026-11-30", "2026-12-06")).is_ok());
        }
        assert!(check(&request(vec![Day], "2026-12-01", "2026-12-02")).is_ok());
    }

    #[test]
    fn a_small_department_and_its_complement_are_hidden_and_the_whole_shown() {
        // Sales 6, Ops 5, Field 2, k 5: Field is under k; Field alone would
        // follow from the whole minus Sales and Ops, so Ops (the smallest
        // shown) goes too; Field + Ops = 7 may be had by subtraction.
        let p = published(
            &[
                ("2026-12-01", Some("Sales"), 6),
                ("2026-12-01", Some("Ops"), 5),
                ("2026-12-01", Some("Field"), 2),
            ],
            5,
        );
        let by = [GroupBy::Department, GroupBy::Day];
        let shown = |dep| p.shows(&by, &key(Some(dep), Some("2026-12-01"), None));
        assert!(shown("Sales"));
        assert!(!shown("Ops"));
        assert!(!shown("Field"));
        assert!(p.shows(&[GroupBy::Day], &key(None, Some("2026-12-01"), None)));
        // A day nobody worked, and a department that was not there.
        assert!(!p.shows(&[GroupBy::Day], &key(None, Some("2026-12-02"), None)));
        assert!(!p.shows(&by, &key(Some("Legal"), Some("2026-12-01"), None)));
    }

    #[test]
    fn a_day_of_fewer_than_k_in_all_is_hidden_whole() {
        let p = published(&[("2026-12-01", Some("Sales"), 4)], 5);
        assert!(!p.shows(&[GroupBy::Day], &key(None, Some("2026-12-01"), None)));
    }

    #[test]
    fn employees_without_a_department_are_a_group_of_their_own() {
        let p = published(
            &[("2026-12-01", Some("Sales"), 7), ("2026-12-01", None, 2)],
            5,
        );
        let by = [GroupBy::Department, GroupBy::Day];
        assert!(!p.shows(&by, &key(None, Some("2026-12-01"), None)));
        // The whole minus Sales would be the two: Sales goes as well.
        assert!(!p.shows(&by, &key(Some("Sales"), Some("2026-12-01"), None)));
        assert!(p.shows(&[GroupBy::Day], &key(None, Some("2026-12-01"), None)));
    }

    #[test]
    fn a_week_is_shown_only_if_its_group_was_shown_every_day_it_had_anyone() {
        // Monday Sales 6 and Ops 6; Tuesday Ops 3 only, so Tuesday's Ops is
        // hidden (and with it the whole of Tuesday, under k).
        let p = published(
            &[
                ("2026-11-30", Some("Sales"), 6),
                ("2026-11-30", Some("Ops"), 6),
                ("2026-12-01", Some("Ops"), 3),
            ],
            5,
        );
        let by = [GroupBy::Department, GroupBy::Week];
        let week = |dep: Option<&str>| key(dep, None, Some("2026-11-30"));
        assert!(p.shows(&by, &week(Some("Sales"))));
        // Ops' week minus its Monday would be its Tuesday.
        assert!(!p.shows(&by, &week(Some("Ops"))));
        assert!(!p.shows(&[GroupBy::Week], &week(None)));
        assert!(!p.shows(&by, &key(Some("Sales"), None, Some("2026-12-07"))));
    }

    #[tokio::test]
    async fn an_answer_pages_over_the_rows_left_and_counts_the_rest() {
        let p = published(
            &[
                ("2026-12-01", Some("Sales"), 6),
                ("2026-12-02", Some("Sales"), 6),
                ("2026-12-03", Some("Sales"), 2),
                ("2026-12-04", Some("Sales"), 6),
            ],
            5,
        );
        let rows: Vec<GroupKey> = ["2026-12-01", "2026-12-02", "2026-12-03", "2026-12-04"]
            .iter()
            .map(|day| key(None, Some(day), None))
            .collect();
        // The source gives two rows a page.
        let fetch = |r: KpiRequest| {
            let page: Vec<GroupKey> = rows.iter().skip(r.offset).take(3).cloned().collect();
            let page = kpi::page(page, &KpiRequest { limit: 2, ..r });
            async move { Ok::<_, QueryError>(page) }
        };
        let mut r = request(vec![GroupBy::Day], "2026-12-01", "2026-12-04");
        r.limit = 2;
        let (page, suppressed) = answer(&r, &p, fetch).await.unwrap();
        let days: Vec<_> = page.rows.iter().map(|k| k.day.clone().unwrap()).collect();
        assert_eq!(days, ["2026-12-01", "2026-12-02"]);
        assert_eq!((page.next_offset, suppressed), (Some(2), 1));
        r.offset = 2;
        let (page, _) = answer(&r, &p, fetch).await.unwrap();
        let days: Vec<_> = page.rows.iter().map(|k| k.day.clone().unwrap()).collect();
        assert_eq!(
            (days, page.next_offset),
            (vec!["2026-12-04".to_string()], None)
        );
    }
}
