//! Anonymized extracts for AI summarization jobs: group-level figures per
//! department and day (or ISO week), never a row about one person.
//!
//! What an extract may show, per period:
//! - one row for the whole tenant and one per department, each with its
//!   number of distinct subjects, tracked/active/idle hours, activity % and
//!   the share of app time per category;
//! - in department rows only, the top apps used by at least k subjects of
//!   that department (totals carry no apps, so no app figure of a small
//!   remainder can be had by subtraction).
//!
//! Suppression, with k from the tenant (default 5):
//! - a department with fewer than k subjects is suppressed (primary);
//! - the tenant row minus the published departments equals the suppressed
//!   ones, so while the suppressed departments hold fewer than k subjects
//!   together, the smallest published department is suppressed too
//!   (complementary); if none is left, the whole period is suppressed;
//! - a period with fewer than k subjects in all is suppressed whole.
//!
//! With `extract_epsilon` set, each published number gets Laplace noise of
//! scale sensitivity/ε: 1 for subject counts, and for time sums the most
//! one subject can add, since each subject's day is clipped to
//! [`MAX_SECONDS_PER_SUBJECT_DAY`] first. The noise is drawn from a
//! generator keyed by the tenant's extract key and the value's place in
//! the extract, so asking again for the same extract returns the same
//! noise and averaging repeated requests does not remove it. ε is spent
//! per published value; it is not a budget across values or extracts.

use std::collections::BTreeMap;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::Int64Type;
use candor_control::Tenant;
use chrono::{Days, NaiveDate};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::kpi::local_days_sql;
use crate::session::ScopedSession;
use crate::{QueryError, utf8};

/// A subject's tracked time counted per day, at most (16 hours).
pub const MAX_SECONDS_PER_SUBJECT_DAY: i64 = 16 * 3600;
/// Apps listed per department row.
pub const TOP_APPS: usize = 5;
/// Longest span of one extract.
pub const MAX_EXTRACT_DAYS: u64 = 93;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Period {
    #[default]
    Day,
    Week,
}

impl Period {
    fn days(self) -> i64 {
        match self {
            Period::Day => 1,
            Period::Week => 7,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtractRequest {
    pub from: NaiveDate,
    pub to: NaiveDate,
    #[serde(default)]
    pub period: Period,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Extract {
    pub tenant: String,
    pub time_zone: String,
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub period: Period,
    pub k: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epsilon: Option<f64>,
    pub groups: Vec<Group>,
    /// Groups left out by primary and complementary suppression.
    pub suppressed_groups: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Group {
    /// The day, or the Monday that starts the week, in the tenant's zone.
    pub period: String,
    /// The department; absent on the row for the whole tenant.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub department: Option<String>,
    pub subjects: f64,
    pub tracked_hours: f64,
    pub active_hours: f64,
    pub idle_hours: f64,
    pub activity_pct: f64,
    /// Share of app time per category (productive, neutral, unproductive).
    pub app_time_share: BTreeMap<String, f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub top_apps: Vec<AppLine>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppLine {
    pub app: String,
    pub category: String,
    pub hours: f64,
}

/// Figures of one (period, department) cell before suppression; `None`
/// department is the whole tenant.
#[derive(Debug, Clone, Default)]
struct Cell {
    subjects: i64,
    tracked_s: i64,
    active_s: i64,
    idle_s: i64,
    category_s: BTreeMap<String, i64>,
    /// (app, category) → (subjects, seconds).
    apps: BTreeMap<(String, String), (i64, i64)>,
}

type CellKey = (String, Option<String>);

/// Builds the extract of `tenant` from a whole-tenant session.
pub async fn build(
    session: &ScopedSession,
    tenant: &Tenant,
    request: &ExtractRequest,
    noise_key: &[u8; 32],
) -> Result<Extract, QueryError> {
    let ExtractRequest { from, to, period } = *request;
    if from > to {
        return Err(QueryError::BadRange { from, to });
    }
    if to - Days::new(MAX_EXTRACT_DAYS) > from {
        return Err(QueryError::BadRequest(format!(
            "at most {MAX_EXTRACT_DAYS} days per extract"
        )));
    }
    let tz = &tenant.time_zone;
    if tz.contains(['\'', '"']) {
        return Err(QueryError::BadTimeZone(tz.clone()));
    }
    let key = match period {
        Period::Day => "day",
        Period::Week => "week",
    };
    let activity = local_days_sql(
        "activity",
        "subject, department, tracked_s, active_s, idle_s",
        tz,
        from,
        to,
    )?;
    let apps = local_days_sql(
        "app_usage",
        "subject, department, app, category, seconds",
        tz,
        from,
        to,
    )?;
    let mut cells: BTreeMap<CellKey, Cell> = BTreeMap::new();
    // Time per subject and day is clipped before it is summed, which bounds
    // what one person can add to any figure.
    let clip = MAX_SECONDS_PER_SUBJECT_DAY;
    for by_department in [true, false] {
        let dep = if by_department {
            "coalesce(department, '(none)')"
        } else {
            "CAST(NULL AS VARCHAR)"
        };
        let sql = format!(
            r#"SELECT p, dep, count(DISTINCT subject) AS subjects,
                      sum(least(tracked_s, {clip})) AS tracked_s,
                      sum(least(active_s, {clip})) AS active_s,
                      sum(least(idle_s, {clip})) AS idle_s
               FROM (
                 SELECT {key} AS p, {dep} AS dep, subject, day,
                        sum(tracked_s) AS tracked_s, sum(active_s) AS active_s, sum(idle_s) AS idle_s
                 FROM ({activity})
                 GROUP BY 1, 2, subject, day
               )
               GROUP BY p, dep"#
        );
        for batch in &session.query(&sql).await?.batches {
            for (cell_key, row) in keyed_rows(batch, 0, 4) {
                let cell = cells.entry(cell_key).or_default();
                (cell.subjects, cell.tracked_s, cell.active_s, cell.idle_s) =
                    (row[0], row[1], row[2], row[3]);
            }
        }
        let sql = format!(
            r#"SELECT {key} AS p, {dep} AS dep, category, app,
                      count(DISTINCT subject) AS subjects, sum(seconds) AS seconds
               FROM ({apps})
               GROUP BY 1, 2, category, app"#
        );
        for batch in &session.query(&sql).await?.batches {
            let (category, app) = (utf8(batch.column(2)), utf8(batch.column(3)));
            for (i, (cell_key, row)) in keyed_rows(batch, 2, 2).into_iter().enumerate() {
                let cell = cells.entry(cell_key).or_default();
                let (category, app) = (category.value(i).to_string(), app.value(i).to_string());
                *cell.category_s.entry(category.clone()).or_default() += row[1];
                if by_department {
                    cell.apps.insert((app, category), (row[0], row[1]));
                }
            }
        }
    }

    let k = i64::from(tenant.extract_k);
    let suppressed = suppress(&mut cells, k);
    let noise = Noise::new(noise_key, tenant.extract_epsilon);
    let time_sensitivity = (clip * period.days()) as f64 / 3600.0;
    let groups = cells
        .into_iter()
        .map(|((p, department), cell)| {
            let at = format!("{p}/{}", department.as_deref().unwrap_or("*"));
            let hours = |s: i64, what: &str| {
                noise
                    .add(s as f64 / 3600.0, time_sensitivity, &format!("{at}/{what}"))
                    .max(0.0)
            };
            let (tracked, active, idle) = (
                hours(cell.tracked_s, "tracked"),
                hours(cell.active_s, "active"),
                hours(cell.idle_s, "idle"),
            );
            let category_h: BTreeMap<String, f64> = cell
                .category_s
                .iter()
                .map(|(c, s)| (c.clone(), hours(*s, &format!("category/{c}"))))
                .collect();
            let app_total: f64 = category_h.values().sum();
            let mut top_apps: Vec<AppLine> = cell
                .apps
                .iter()
                .filter(|(_, (subjects, _))| *subjects >= k)
                .map(|((app, category), (_, s))| AppLine {
                    app: app.clone(),
                    category: category.clone(),
                    hours: hours(*s, &format!("app/{app}")),
                })
                .collect();
            top_apps.sort_by(|a, b| b.hours.total_cmp(&a.hours).then(a.app.cmp(&b.app)));
            top_apps.truncate(TOP_APPS);
            Group {
                period: p,
                subjects: noise
                    .add(cell.subjects as f64, 1.0, &format!("{at}/subjects"))
                    .max(0.0)
                    .round(),
                department,
                tracked_hours: tracked,
                active_hours: active,
                idle_hours: idle,
                activity_pct: if tracked > 0.0 {
                    (100.0 * active / tracked).min(100.0)
                } else {
                    0.0
                },
                app_time_share: category_h
                    .into_iter()
                    .map(|(c, h)| (c, if app_total > 0.0 { h / app_total } else { 0.0 }))
                    .collect(),
                top_apps,
            }
        })
        .collect();
    Ok(Extract {
        tenant: tenant.id.to_string(),
        time_zone: tz.clone(),
        from,
        to,
        period,
        k: tenant.extract_k,
        epsilon: tenant.extract_epsilon,
        groups,
        suppressed_groups: suppressed,
    })
}

/// Rows of `(p, dep, <skip columns>, <n integers>)`: the cell key and the
/// integers.
fn keyed_rows(batch: &RecordBatch, skip: usize, n: usize) -> Vec<(CellKey, Vec<i64>)> {
    let (p, dep) = (utf8(batch.column(0)), utf8(batch.column(1)));
    (0..batch.num_rows())
        .map(|i| {
            let key = (
                p.value(i).to_string(),
                dep.is_valid(i).then(|| dep.value(i).to_string()),
            );
            let ints = (0..n)
                .map(|c| {
                    batch
                        .column(2 + skip + c)
                        .as_primitive::<Int64Type>()
                        .value(i)
                })
                .collect();
            (key, ints)
        })
        .collect()
}

/// Removes the cells that may not be published; returns how many.
fn suppress(cells: &mut BTreeMap<CellKey, Cell>, k: i64) -> usize {
    let periods: std::collections::BTreeSet<String> =
        cells.keys().map(|(p, _)| p.clone()).collect();
    let mut removed = 0;
    for p in periods {
        let total = cells.get(&(p.clone(), None)).map_or(0, |c| c.subjects);
        let mut departments: Vec<(i64, CellKey)> = cells
            .iter()
            .filter(|((q, d), _)| *q == p && d.is_some())
            .map(|(key, c)| (c.subjects, key.clone()))
            .collect();
        departments.sort();
        let mut hidden: Vec<CellKey> = Vec::new();
        let mut hidden_subjects = 0;
        let mut published: Vec<(i64, CellKey)> = Vec::new();
        for (subjects, key) in departments {
            if subjects < k {
                hidden_subjects += subjects;
                hidden.push(key);
            } else {
                published.push((subjects, key));
            }
        }
        // Complementary: what the total minus the published rows reveals
        // must itself be a group of at least k.
        let mut whole_period = total < k;
        published.reverse(); // largest first; pop takes the smallest
        while !hidden.is_empty() && hidden_subjects < k && !whole_period {
            match published.pop() {
                Some((subjects, key)) => {
                    hidden_subjects += subjects;
                    hidden.push(key);
                }
                None => whole_period = true,
            }
        }
        if whole_period {
            hidden.extend(published.into_iter().map(|(_, key)| key));
            hidden.push((p.clone(), None));
        }
        for key in hidden {
            removed += usize::from(cells.remove(&key).is_some());
        }
    }
    removed
}

/// Laplace noise from a generator seeded per value, or none.
struct Noise<'a> {
    key: &'a [u8; 32],
    epsilon: Option<f64>,
}

impl<'a> Noise<'a> {
    fn new(key: &'a [u8; 32], epsilon: Option<f64>) -> Self {
        Self { key, epsilon }
    }

    fn add(&self, value: f64, sensitivity: f64, place: &str) -> f64 {
        let Some(epsilon) = self.epsilon else {
            return value;
        };
        let seed = candor_schemas::keys::hmac_sha256(self.key, place.as_bytes());
        let mut rng = rand::rngs::StdRng::from_seed(seed);
        // Inverse CDF of the Laplace distribution with scale b.
        let b = sensitivity / epsilon;
        let u: f64 = rng.random_range(-0.5..0.5);
        value - b * u.signum() * (1.0 - 2.0 * u.abs()).ln()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cells(spec: &[(&str, Option<&str>, i64)]) -> BTreeMap<CellKey, Cell> {
        spec.iter()
            .map(|(p, d, n)| {
                (
                    (p.to_string(), d.map(str::to_string)),
                    Cell {
                        subjects: *n,
                        ..Cell::default()
                    },
                )
            })
            .collect()
    }

    fn kept(cells: &BTreeMap<CellKey, Cell>) -> Vec<(String, Option<String>)> {
        cells.keys().cloned().collect()
    }

    #[test]
    fn a_small_department_and_its_complement_are_suppressed() {
        // Field (2) is under k; total - Sales - Ops would reveal it, so the
        // smallest other department (Ops, 6) goes too.
        let mut c = cells(&[
            ("d", None, 20),
            ("d", Some("Sales"), 12),
            ("d", Some("Ops"), 6),
            ("d", Some("Field"), 2),
        ]);
        assert_eq!(suppress(&mut c, 5), 2);
        assert_eq!(
            kept(&c),
            [("d".into(), None), ("d".into(), Some("Sales".into()))]
        );
    }

    #[test]
    fn two_small_departments_together_past_k_need_no_complement() {
        let mut c = cells(&[
            ("d", None, 20),
            ("d", Some("Sales"), 14),
            ("d", Some("Ops"), 3),
            ("d", Some("Field"), 3),
        ]);
        assert_eq!(suppress(&mut c, 5), 2);
        assert_eq!(kept(&c).len(), 2);
    }

    #[test]
    fn when_nothing_is_left_to_hide_behind_the_period_goes() {
        // Field (2) under k and only one other department: hiding Sales too
        // leaves the total equal to Field + Sales, so the total goes as well.
        let mut c = cells(&[
            ("d", None, 9),
            ("d", Some("Sales"), 7),
            ("d", Some("Field"), 2),
        ]);
        suppress(&mut c, 5);
        let mut small = cells(&[("e", None, 4), ("e", Some("Sales"), 4)]);
        suppress(&mut small, 5);
        assert!(small.is_empty());
        assert_eq!(
            kept(&c),
            [("d".into(), None)],
            "total of 9 stays; its parts do not"
        );
    }

    #[test]
    fn noise_is_the_same_for_the_same_place_and_differs_between_places() {
        let key = [3u8; 32];
        let noise = Noise::new(&key, Some(1.0));
        let a = noise.add(100.0, 1.0, "d/Sales/subjects");
        assert_eq!(a, noise.add(100.0, 1.0, "d/Sales/subjects"));
        assert_ne!(a, noise.add(100.0, 1.0, "d/Ops/subjects"));
        assert_eq!(Noise::new(&key, None).add(100.0, 1.0, "x"), 100.0);
    }
}
