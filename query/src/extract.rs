//! Anonymized extracts for AI summarization jobs: group-level figures per
//! department and day (or ISO week), never a row about one person.
//!
//! What an extract may show, per day:
//! - one row for the whole tenant and one per department, each with its
//!   number of distinct subjects, tracked/active/idle hours, activity % and
//!   the share of app time per category;
//! - in department rows only, the top apps used by at least k subjects of
//!   that department (totals carry no apps, so no app figure of a small
//!   remainder can be had by subtraction).
//!
//! Suppression, with k from the tenant (default 5), per day:
//! - a department with fewer than k subjects is suppressed (primary);
//! - the tenant row minus the published departments equals the suppressed
//!   ones, so while the suppressed departments hold fewer than k subjects
//!   together, the smallest published department is suppressed too
//!   (complementary); if none is left, the whole day is suppressed;
//! - a day with fewer than k subjects in all is suppressed whole.
//!
//! **Across extracts.** A figure is computed from the lake once only: the
//! first extract that covers a day (which must have ended in the tenant's
//! zone) writes that day's published rows, noise included, to the tenant's
//! release ledger (`extracts/tenant=<id>/released/<day>.json`, created only
//! if absent), and every later extract publishes exactly those rows for
//! that day. A week row is computed from its days' released rows only
//! (sums of hours, the most subjects of any one day), and only when its
//! department was published on every released day of that week in the
//! range. So every number ever published is a function of the released
//! day rows, each of which covers at least k subjects and passed
//! complementary suppression: no difference of two published figures,
//! whichever extracts they come from (week minus day, overlapping ranges,
//! an earlier and a later request after late data), isolates a group under
//! k. The price: data that arrives after a day was released is not in
//! that day's extracts.
//!
//! With `extract_epsilon` set, each published number gets Laplace noise of
//! scale sensitivity/ε: 1 for subject counts, and for time sums the most
//! one subject can add, since each subject's day is clipped to
//! [`MAX_SECONDS_PER_SUBJECT_DAY`] first. The noise is drawn from a
//! generator keyed by a secret only the nodes hold (the tenant's extract
//! noise key, never the signing key a receiver has), the value's place and
//! ε, and it is frozen in the ledger with the value: asking again, or at
//! another ε, returns the same noisy figure, so repeated or differing
//! requests cannot average or solve it away. ε is spent once per published
//! value; it is not a budget across values.

use std::collections::BTreeMap;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::Int64Type;
use candor_control::Tenant;
use candor_schemas::TenantId;
use chrono::{Datelike, Days, NaiveDate};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::kpi::local_days_sql;
use crate::lake::QueryLake;
use crate::session::ScopedSession;
use crate::suppression::suppress;
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
    /// The Delta table version each dataset was read at by this extract,
    /// by dataset (one with no table yet has none). Days taken from the
    /// release ledger keep the figures of their release, whose versions
    /// that ledger entry records.
    #[serde(default)]
    pub table_versions: BTreeMap<String, u64>,
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
    /// Week rows only: the released days summed (a week at the edge of the
    /// range, or with days that published nothing, has fewer than 7).
    /// Their `subjects` is the most subjects of any one of those days, and
    /// their top apps the hours of the days on which the app was listed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub days: Option<u32>,
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

/// Where the release ledger keeps a day's published rows.
pub fn released_location(tenant: &TenantId, day: NaiveDate) -> String {
    format!("extracts/tenant={tenant}/released/{day}.json")
}

/// A day's published rows as the release ledger keeps them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReleasedDay {
    pub day: NaiveDate,
    pub k: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epsilon: Option<f64>,
    pub released_at_ms: i64,
    pub groups: Vec<ReleasedGroup>,
    pub suppressed_groups: usize,
    /// The Delta table version each dataset was read at when the day was
    /// computed (absent in days released before tables had versions).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub table_versions: BTreeMap<String, u64>,
}

/// A published row with the hours per app category its shares came from,
/// so a week can be summed from its days.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReleasedGroup {
    #[serde(flatten)]
    pub group: Group,
    pub category_hours: BTreeMap<String, f64>,
}

/// Builds the extract of `tenant` from a whole-tenant session: days the
/// ledger has are taken from it, the others are computed, suppressed,
/// noised and released to it first. `today` is the tenant's current day;
/// only days before it can be extracted.
pub async fn build(
    session: &ScopedSession,
    lake: &QueryLake,
    tenant: &Tenant,
    request: &ExtractRequest,
    noise_key: &[u8; 32],
    today: NaiveDate,
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
    if to >= today {
        return Err(QueryError::BadRequest(format!(
            "only days that have ended in the tenant's time zone can be extracted; the last is {}",
            today - Days::new(1)
        )));
    }
    let days: Vec<NaiveDate> = from.iter_days().take_while(|d| *d <= to).collect();
    let ledger = futures::future::try_join_all(days.iter().map(|day| async move {
        let bytes = lake
            .get(tenant, &released_location(&tenant.id, *day))
            .await?;
        bytes.map(|b| parse_released(&b)).transpose()
    }))
    .await?;
    let mut released: BTreeMap<NaiveDate, ReleasedDay> =
        ledger.into_iter().flatten().map(|r| (r.day, r)).collect();
    // Days with nothing published stay out of the ledger: a later release
    // of them, once enough data is in, differs from "nothing" only by itself.
    let mut unpublished: BTreeMap<NaiveDate, usize> = BTreeMap::new();
    let missing: Vec<NaiveDate> = days
        .iter()
        .copied()
        .filter(|d| !released.contains_key(d))
        .collect();
    if let (Some(first), Some(last)) = (missing.first(), missing.last()) {
        for day in compute_days(session, tenant, *first, *last, noise_key).await? {
            if released.contains_key(&day.day) || !missing.contains(&day.day) {
                continue;
            }
            if day.groups.is_empty() {
                unpublished.insert(day.day, day.suppressed_groups);
                continue;
            }
            let location = released_location(&tenant.id, day.day);
            let bytes = serde_json::to_vec(&day).map_err(|e| QueryError::Lake(e.to_string()))?;
            let day = if lake.create(tenant, &location, bytes).await? {
                day
            } else {
                // Another node released this day first: its rows are the ones.
                let theirs = lake.get(tenant, &location).await?.ok_or_else(|| {
                    QueryError::Lake(format!("{location} vanished after it was created"))
                })?;
                parse_released(&theirs)?
            };
            released.insert(day.day, day);
        }
    }
    let released_suppressed: usize = released
        .values()
        .map(|d| d.suppressed_groups)
        .sum::<usize>()
        + unpublished.values().sum::<usize>();
    let (groups, suppressed_groups) = match period {
        Period::Day => (
            released
                .into_values()
                .flat_map(|d| d.groups.into_iter().map(|g| g.group))
                .collect(),
            released_suppressed,
        ),
        Period::Week => weeks(&released),
    };
    Ok(Extract {
        tenant: tenant.id.to_string(),
        time_zone: tenant.time_zone.clone(),
        from,
        to,
        period,
        k: tenant.extract_k,
        epsilon: tenant.extract_epsilon,
        groups,
        suppressed_groups,
        table_versions: owned_versions(session),
    })
}

/// The versions `session` reads, as extracts record them.
fn owned_versions(session: &ScopedSession) -> BTreeMap<String, u64> {
    session
        .table_versions()
        .iter()
        .map(|(dataset, version)| (dataset.to_string(), *version))
        .collect()
}

/// How a released day compares with the same day computed again from the
/// table versions its release read (`candor extract verify`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DayCheck {
    pub day: NaiveDate,
    pub table_versions: BTreeMap<String, u64>,
    #[serde(flatten)]
    pub verdict: Verdict,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "verdict", content = "detail")]
pub enum Verdict {
    /// Computed again, the day's published rows are the ledger's.
    Same,
    /// They are not: what differs.
    Differs(String),
    /// Released before tables had versions: nothing to compute it from.
    Unversioned,
    /// The versions cannot be read any more (VACUUM deleted their files
    /// after a retention or erasure run): why.
    Unreadable(String),
}

/// Computes every released day of `tenant` in `from..=to` again, from the
/// table versions its release recorded, with the k and ε it was released
/// under, and compares the rows with the ledger's. Every extract's figures
/// come from released days (see the module's notes), so an extract whose
/// days are all `Same` can be rebuilt from the ledger, byte for byte.
pub async fn verify(
    lake: &QueryLake,
    tenant: &Tenant,
    from: NaiveDate,
    to: NaiveDate,
    noise_key: &[u8; 32],
) -> Result<Vec<DayCheck>, QueryError> {
    use crate::scope::Scope;
    use crate::session::Limits;
    let mut checks = Vec::new();
    for day in from.iter_days().take_while(|d| *d <= to) {
        let Some(bytes) = lake
            .get(tenant, &released_location(&tenant.id, day))
            .await?
        else {
            continue;
        };
        let released = parse_released(&bytes)?;
        let versions = released.table_versions.clone();
        let check = |verdict| DayCheck {
            day,
            table_versions: versions.clone(),
            verdict,
        };
        if versions.is_empty() {
            checks.push(check(Verdict::Unversioned));
            continue;
        }
        let at = |dataset: candor_schemas::datasets::Dataset| {
            versions
                .get(dataset.name())
                .map(|v| candor_lake::AsOf::Version(*v))
        };
        let tables = lake.tables_as_of(tenant, at).await?;
        let session = ScopedSession::new(lake, &tables, &Scope::whole_tenant(), Limits::default())?;
        let as_released = Tenant {
            extract_k: released.k,
            extract_epsilon: released.epsilon,
            ..tenant.clone()
        };
        let verdict = match compute_days(&session, &as_released, day, day, noise_key).await {
            Err(e) => Verdict::Unreadable(e.to_string()),
            Ok(days) => {
                let again = days.into_iter().find(|d| d.day == day);
                match again {
                    Some(a)
                        if a.groups == released.groups
                            && a.suppressed_groups == released.suppressed_groups =>
                    {
                        Verdict::Same
                    }
                    Some(a) => Verdict::Differs(format!(
                        "computed again: {} groups ({} suppressed); released: {} groups ({} suppressed){}",
                        a.groups.len(),
                        a.suppressed_groups,
                        released.groups.len(),
                        released.suppressed_groups,
                        first_difference(&a.groups, &released.groups)
                    )),
                    None => Verdict::Differs("computed again, the day publishes nothing".into()),
                }
            }
        };
        checks.push(check(verdict));
    }
    Ok(checks)
}

/// The first group that differs, for a reader of a verdict.
fn first_difference(again: &[ReleasedGroup], released: &[ReleasedGroup]) -> String {
    again
        .iter()
        .zip(released)
        .find(|(a, r)| a != r)
        .map(|(a, r)| {
            format!(
                "; first difference in {} {}: {:?} against {:?}",
                a.group.period,
                a.group.department.as_deref().unwrap_or("(tenant)"),
                a.group,
                r.group
            )
        })
        .unwrap_or_default()
}

fn parse_released(bytes: &[u8]) -> Result<ReleasedDay, QueryError> {
    serde_json::from_slice(bytes)
        .map_err(|e| QueryError::Lake(format!("a released extract day does not parse: {e}")))
}

/// Computes, suppresses and noises the rows of every day `from..=to`.
async fn compute_days(
    session: &ScopedSession,
    tenant: &Tenant,
    from: NaiveDate,
    to: NaiveDate,
    noise_key: &[u8; 32],
) -> Result<Vec<ReleasedDay>, QueryError> {
    let tz = &tenant.time_zone;
    if tz.contains(['\'', '"']) {
        return Err(QueryError::BadTimeZone(tz.clone()));
    }
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
                 SELECT day AS p, {dep} AS dep, subject, day,
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
            r#"SELECT day AS p, {dep} AS dep, category, app,
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
    let days: std::collections::BTreeSet<String> = cells.keys().map(|(p, _)| p.clone()).collect();
    let suppressed = suppress(&mut cells, k, |c| c.subjects);
    let noise = Noise::new(noise_key, tenant.extract_epsilon);
    let time_sensitivity = clip as f64 / 3600.0;
    let mut out: BTreeMap<String, ReleasedDay> = BTreeMap::new();
    for day in &days {
        let parsed = NaiveDate::parse_from_str(day, "%Y-%m-%d")
            .map_err(|e| QueryError::Lake(format!("day {day:?}: {e}")))?;
        out.insert(
            day.clone(),
            ReleasedDay {
                day: parsed,
                k: tenant.extract_k,
                epsilon: tenant.extract_epsilon,
                released_at_ms: chrono::Utc::now().timestamp_millis(),
                groups: Vec::new(),
                suppressed_groups: suppressed.get(day).copied().unwrap_or(0),
                table_versions: owned_versions(session),
            },
        );
    }
    for ((p, department), cell) in cells {
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
        let category_hours: BTreeMap<String, f64> = cell
            .category_s
            .iter()
            .map(|(c, s)| (c.clone(), hours(*s, &format!("category/{c}"))))
            .collect();
        let top_apps = top(cell
            .apps
            .iter()
            .filter(|(_, (subjects, _))| *subjects >= k)
            .map(|((app, category), (_, s))| AppLine {
                app: app.clone(),
                category: category.clone(),
                hours: hours(*s, &format!("app/{app}")),
            })
            .collect());
        let subjects = noise
            .add(cell.subjects as f64, 1.0, &format!("{at}/subjects"))
            .max(0.0)
            .round();
        let group = Group::new(
            p.clone(),
            department,
            subjects,
            tracked,
            active,
            idle,
            &category_hours,
            top_apps,
        );
        if let Some(day) = out.get_mut(&p) {
            day.groups.push(ReleasedGroup {
                group,
                category_hours,
            });
        }
    }
    Ok(out.into_values().collect())
}

impl Group {
    #[allow(clippy::too_many_arguments)]
    fn new(
        period: String,
        department: Option<String>,
        subjects: f64,
        tracked: f64,
        active: f64,
        idle: f64,
        category_hours: &BTreeMap<String, f64>,
        top_apps: Vec<AppLine>,
    ) -> Self {
        let app_total: f64 = category_hours.values().sum();
        Group {
            period,
            department,
            subjects,
            tracked_hours: tracked,
            active_hours: active,
            idle_hours: idle,
            activity_pct: if tracked > 0.0 {
                (100.0 * active / tracked).min(100.0)
            } else {
                0.0
            },
            app_time_share: category_hours
                .iter()
                .map(|(c, h)| (c.clone(), if app_total > 0.0 { h / app_total } else { 0.0 }))
                .collect(),
            days: None,
            top_apps,
        }
    }
}

/// The [`TOP_APPS`] apps with the most hours.
fn top(mut apps: Vec<AppLine>) -> Vec<AppLine> {
    apps.sort_by(|a, b| b.hours.total_cmp(&a.hours).then(a.app.cmp(&b.app)));
    apps.truncate(TOP_APPS);
    apps
}

/// Week rows from released day rows only; returns them and how many
/// (week, department) rows were left out because the department was not
/// published on every released day of its week.
fn weeks(released: &BTreeMap<NaiveDate, ReleasedDay>) -> (Vec<Group>, usize) {
    let monday = |d: NaiveDate| d - Days::new(u64::from(d.weekday().num_days_from_monday()));
    let mut by_week: BTreeMap<NaiveDate, Vec<&ReleasedDay>> = BTreeMap::new();
    for day in released.values() {
        by_week.entry(monday(day.day)).or_default().push(day);
    }
    let (mut groups, mut suppressed) = (Vec::new(), 0);
    for (week, days) in by_week {
        let mut rows: BTreeMap<Option<String>, Vec<&ReleasedGroup>> = BTreeMap::new();
        for day in &days {
            for g in &day.groups {
                rows.entry(g.group.department.clone()).or_default().push(g);
            }
        }
        for (department, parts) in rows {
            if parts.len() < days.len() {
                suppressed += 1;
                continue;
            }
            let sum = |f: fn(&Group) -> f64| parts.iter().map(|g| f(&g.group)).sum::<f64>();
            let mut category_hours: BTreeMap<String, f64> = BTreeMap::new();
            let mut app_hours: BTreeMap<(String, String), f64> = BTreeMap::new();
            for part in &parts {
                for (c, h) in &part.category_hours {
                    *category_hours.entry(c.clone()).or_default() += h;
                }
                for a in &part.group.top_apps {
                    *app_hours
                        .entry((a.app.clone(), a.category.clone()))
                        .or_default() += a.hours;
                }
            }
            let top_apps = top(app_hours
                .into_iter()
                .map(|((app, category), hours)| AppLine {
                    app,
                    category,
                    hours,
                })
                .collect());
            let mut group = Group::new(
                week.to_string(),
                department,
                parts.iter().map(|g| g.group.subjects).fold(0.0, f64::max),
                sum(|g| g.tracked_hours),
                sum(|g| g.active_hours),
                sum(|g| g.idle_hours),
                &category_hours,
                top_apps,
            );
            group.days = Some(days.len() as u32);
            groups.push(group);
        }
    }
    (groups, suppressed)
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
        // ε is part of the place: a value released at two ε is two
        // independent draws, never one draw scaled twice.
        let place = format!("{place}/eps={epsilon}");
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
        assert_eq!(
            suppress(&mut c, 5, |c| c.subjects).values().sum::<usize>(),
            2
        );
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
        assert_eq!(
            suppress(&mut c, 5, |c| c.subjects).values().sum::<usize>(),
            2
        );
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
        suppress(&mut c, 5, |c| c.subjects);
        let mut small = cells(&[("e", None, 4), ("e", Some("Sales"), 4)]);
        suppress(&mut small, 5, |c| c.subjects);
        assert!(small.is_empty());
        assert_eq!(
            kept(&c),
            [("d".into(), None)],
            "total of 9 stays; its parts do not"
        );
    }

    fn released(day: &str, rows: &[(Option<&str>, f64, f64)]) -> ReleasedDay {
        let day: NaiveDate = day.parse().unwrap();
        ReleasedDay {
            day,
            k: 5,
            epsilon: None,
            released_at_ms: 0,
            groups: rows
                .iter()
                .map(|(department, subjects, active)| ReleasedGroup {
                    group: Group::new(
                        day.to_string(),
                        department.map(str::to_string),
                        *subjects,
                        *active,
                        *active,
                        0.0,
                        &BTreeMap::new(),
                        Vec::new(),
                    ),
                    category_hours: BTreeMap::new(),
                })
                .collect(),
            suppressed_groups: 0,
            table_versions: BTreeMap::new(),
        }
    }

    #[test]
    fn a_week_is_published_only_from_days_that_published_the_same_group() {
        // Monday: Sales (5) published; Tuesday: Sales (4) was suppressed.
        // A week row for Sales would be Monday + Tuesday, and week minus
        // Monday's row would give Tuesday's suppressed figure: it goes.
        let days: BTreeMap<NaiveDate, ReleasedDay> = [
            released(
                "2026-11-23",
                &[(None, 9.0, 40.0), (Some("Sales"), 5.0, 20.0)],
            ),
            released("2026-11-24", &[(None, 8.0, 30.0)]),
        ]
        .into_iter()
        .map(|d| (d.day, d))
        .collect();
        let (groups, suppressed) = weeks(&days);
        assert_eq!(suppressed, 1);
        assert_eq!(groups.len(), 1);
        let total = &groups[0];
        assert_eq!(
            (total.department.as_deref(), total.period.as_str()),
            (None, "2026-11-23")
        );
        // Every figure is a sum of published ones.
        assert_eq!(
            (total.active_hours, total.subjects, total.days),
            (70.0, 9.0, Some(2))
        );
    }

    #[test]
    fn noise_depends_on_epsilon_and_a_secret_key() {
        let key = [3u8; 32];
        let a = Noise::new(&key, Some(1.0)).add(100.0, 1.0, "d/Sales/subjects");
        let b = Noise::new(&key, Some(0.5)).add(100.0, 1.0, "d/Sales/subjects");
        // Independent draws: b - 100 is not twice a - 100.
        assert!(((b - 100.0) - 2.0 * (a - 100.0)).abs() > 1e-9);
        let other = Noise::new(&[4u8; 32], Some(1.0)).add(100.0, 1.0, "d/Sales/subjects");
        assert_ne!(a, other);
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
