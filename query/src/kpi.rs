//! KPI queries. Each is one SQL statement over the caller's scoped views
//! (the same path analysts' SQL takes), computed in the tenant's time zone.
//!
//! Slots are 15 minutes and every real UTC offset is a multiple of 15
//! minutes, so each slot lies wholly inside one local day and daily sums are
//! exact. Lake partitions are UTC dates; a local day touches at most the UTC
//! dates on either side of it, so only those partitions are read.
//!
//! Formulas:
//! - activity: tracked, active and idle seconds are the sums of the slots';
//!   activity % = 100 × active / tracked (0 when nothing was tracked);
//! - attendance: see [`AttendancePolicy`];
//! - apps: seconds per category, productive share = productive / all app
//!   seconds, top apps by seconds;
//! - GPS: points and distance summed over the slots (distance is computed
//!   by the processor from precise positions, before they are coarsened).

use std::collections::BTreeMap;
use std::str::FromStr;

use arrow::array::timezone::Tz;
use arrow::array::{Array, AsArray, RecordBatch};

use arrow::datatypes::{Float64Type, Int64Type, TimestampMillisecondType};
use candor_schemas::datasets::SLOT_MS;
use chrono::{Days, NaiveDate};
use serde::Serialize;

use crate::scope::Identities;
use crate::session::{Answer, ScopedSession};
use crate::{QueryError, utf8};

/// Longest span one KPI request may cover.
pub const MAX_SPAN_DAYS: u64 = 400;
/// Most rows in one page.
pub const MAX_PAGE: usize = 1000;

/// What KPI rows are grouped by, in the order given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GroupBy {
    Employee,
    Department,
    Day,
    /// The Monday that starts the ISO week, in the tenant's time zone.
    Week,
    /// The tenant's site (GPS only); null outside every site.
    Site,
}

impl FromStr for GroupBy {
    type Err = QueryError;
    fn from_str(s: &str) -> Result<Self, QueryError> {
        match s {
            "employee" => Ok(GroupBy::Employee),
            "department" => Ok(GroupBy::Department),
            "day" => Ok(GroupBy::Day),
            "week" => Ok(GroupBy::Week),
            "site" => Ok(GroupBy::Site),
            other => Err(QueryError::BadRequest(format!(
                "group_by {other:?}: use employee, department, day, week or (for gps) site"
            ))),
        }
    }
}

impl GroupBy {
    fn column(self) -> &'static str {
        match self {
            GroupBy::Employee => "subject",
            GroupBy::Department => "department",
            GroupBy::Day => "day",
            GroupBy::Week => "week",
            GroupBy::Site => "site",
        }
    }
}

/// One KPI request: a range of local days, a grouping and a page.
#[derive(Debug, Clone)]
pub struct KpiRequest {
    pub time_zone: String,
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub group_by: Vec<GroupBy>,
    pub limit: usize,
    pub offset: usize,
}

impl KpiRequest {
    fn validate(&self) -> Result<(), QueryError> {
        // Validating against the zone database also keeps the name safe to
        // place in a statement.
        if Tz::from_str(&self.time_zone).is_err() || self.time_zone.contains(['\'', '"']) {
            return Err(QueryError::BadTimeZone(self.time_zone.clone()));
        }
        if self.from > self.to {
            return Err(QueryError::BadRange {
                from: self.from,
                to: self.to,
            });
        }
        if self.to - Days::new(MAX_SPAN_DAYS) > self.from {
            return Err(QueryError::BadRequest(format!(
                "at most {MAX_SPAN_DAYS} days per request"
            )));
        }
        if self.limit == 0 || self.limit > MAX_PAGE {
            return Err(QueryError::BadRequest(format!(
                "limit must be 1 to {MAX_PAGE}"
            )));
        }
        let distinct: std::collections::HashSet<_> = self.group_by.iter().collect();
        if distinct.len() != self.group_by.len() || self.group_by.is_empty() {
            return Err(QueryError::BadRequest(
                "group_by must name one or more distinct keys".into(),
            ));
        }
        Ok(())
    }
}

/// One row of the activity KPI.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ActivityRow {
    #[serde(flatten)]
    pub key: GroupKey,
    pub tracked_s: i64,
    pub active_s: i64,
    pub idle_s: i64,
    pub activity_pct: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Page<T> {
    pub rows: Vec<T>,
    /// The offset of the next page, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_offset: Option<usize>,
}

/// The grouping keys of one KPI row; those not grouped by are absent.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct GroupKey {
    /// The employee id, for roles that may see identities and employees in
    /// the directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub employee: Option<String>,
    /// The pseudonym, for everyone else (and employees no longer in the
    /// directory).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub department: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub day: Option<String>,
    /// The Monday that starts the ISO week, in the tenant's time zone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub week: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
}

impl GroupKey {
    /// The key of a row whose grouping values are `values`, in the order of
    /// `group_by`; the subject is re-identified where `identities` allows.
    fn new(
        group_by: &[GroupBy],
        values: &[Option<String>],
        identities: Option<&Identities>,
    ) -> Self {
        let value = |g: GroupBy| {
            let i = group_by.iter().position(|k| *k == g)?;
            values[i].clone()
        };
        let subject = value(GroupBy::Employee);
        let employee = subject
            .as_deref()
            .and_then(|s| identities?.employee(s))
            .map(|e| e.to_string());
        GroupKey {
            subject: if employee.is_some() { None } else { subject },
            employee,
            department: value(GroupBy::Department),
            day: value(GroupBy::Day),
            week: value(GroupBy::Week),
            site: value(GroupBy::Site),
        }
    }
}

/// A row of a KPI answer: its grouping keys and its figures.
pub trait KpiRow {
    fn key(&self) -> &GroupKey;
}

macro_rules! kpi_rows {
    ($($row:ty),*) => {
        $(impl KpiRow for $row {
            fn key(&self) -> &GroupKey {
                &self.key
            }
        })*
    };
}

kpi_rows!(ActivityRow, GpsRow, AttendanceRow, AppsRow);

/// How rows are ordered: by their grouping keys in `group_by` order, as the
/// caller sees them (the employee id where the row was re-identified, else
/// the pseudonym), a missing key after every present one (as SQL's `ASC`).
fn display_order(
    group_by: &[GroupBy],
    key: &[Option<String>],
    identities: Option<&Identities>,
) -> Vec<(bool, String)> {
    group_by
        .iter()
        .zip(key)
        .map(|(g, value)| {
            let shown = match (g, value, identities) {
                (GroupBy::Employee, Some(subject), Some(ids)) => ids
                    .employee(subject)
                    .map_or_else(|| subject.clone(), |e| e.to_string()),
                (_, value, _) => value.clone().unwrap_or_default(),
            };
            (value.is_none(), shown)
        })
        .collect()
}

/// Whether re-identification changes the order of rows grouped by
/// `group_by`, so they must be ordered after it rather than by SQL.
fn reordered_by_identities(group_by: &[GroupBy], identities: Option<&Identities>) -> bool {
    identities.is_some() && group_by.contains(&GroupBy::Employee)
}

/// The rows of `answer`, all of them: a KPI over more than the answer may
/// hold is refused rather than summed over a part.
pub(crate) fn complete(answer: Answer) -> Result<Vec<RecordBatch>, QueryError> {
    if answer.truncated {
        return Err(QueryError::TooLarge(
            "the KPI has more groups than one answer may hold; narrow the days or the grouping"
                .into(),
        ));
    }
    Ok(answer.batches)
}

impl<T> Page<T> {
    fn map<U>(self, f: impl FnMut(T) -> U) -> Page<U> {
        Page {
            rows: self.rows.into_iter().map(f).collect(),
            next_offset: self.next_offset,
        }
    }
}

/// Cuts `rows` (fetched with one row more than the page) to the page.
pub(crate) fn page<T>(mut rows: Vec<T>, request: &KpiRequest) -> Page<T> {
    let next_offset = (rows.len() > request.limit).then(|| {
        rows.truncate(request.limit);
        request.offset + request.limit
    });
    Page { rows, next_offset }
}

/// The rows of `table` (its `columns`) whose slots fall on the local days
/// `from..=to` of `time_zone`, with each slot's local `day` and `week` (the
/// Monday that starts it) as `DATE`s. Only the UTC date partitions that can
/// hold those days are read.
///
/// No time zone arithmetic runs per row, which was most of a KPI's time: a
/// zone's UTC offset is constant between its transitions, so the offsets of
/// every slot of the partitions read are looked up here (one lookup per 15
/// minutes, the step every slot starts on) and the statement adds the right
/// one with a `CASE` on `slot_start`. The local day is then integer
/// arithmetic (days since 1970-01-01, a Thursday, so the week's Monday is
/// `day - (day + 3) % 7`), and becomes a `DATE` by reinterpretation.
pub(crate) fn local_days_sql(
    table: &str,
    columns: &str,
    time_zone: &str,
    from: NaiveDate,
    to: NaiveDate,
) -> Result<String, QueryError> {
    use chrono::{Offset, TimeZone};
    let tz = Tz::from_str(time_zone).map_err(|_| QueryError::BadTimeZone(time_zone.into()))?;
    let (first, last) = (from - Days::new(1), to + Days::new(1));
    let epoch_days = |day: NaiveDate| (day - NaiveDate::default()).num_days();
    // (first slot, offset in ms) of each run of slots with one offset.
    let mut runs: Vec<(i64, i64)> = Vec::new();
    let end = (epoch_days(last) + 1) * MS_PER_DAY;
    let mut at = epoch_days(first) * MS_PER_DAY;
    while at < end {
        let utc = chrono::DateTime::from_timestamp_millis(at)
            .ok_or_else(|| QueryError::BadRequest(format!("{from}..{to} is out of range")))?
            .naive_utc();
        let offset = i64::from(tz.offset_from_utc_datetime(&utc).fix().local_minus_utc()) * 1000;
        if runs.last().is_none_or(|run| run.1 != offset) {
            runs.push((at, offset));
        }
        at += SLOT_MS;
    }
    let ms = "CAST(slot_start AS BIGINT)";
    let mut offset = String::from("CASE");
    for pair in runs.windows(2) {
        offset += &format!(" WHEN {ms} < {} THEN {}", pair[1].0, pair[0].1);
    }
    let last_offset = runs.last().map_or(0, |run| run.1);
    let offset = if runs.len() > 1 {
        format!("{offset} ELSE {last_offset} END")
    } else {
        last_offset.to_string()
    };
    Ok(format!(
        r#"SELECT {columns}, slot_start,
                  arrow_cast(day, 'Date32') AS day,
                  arrow_cast(day - (day + 3) % 7, 'Date32') AS week
           FROM (
             SELECT {columns}, slot_start,
                    CAST(({ms} + {offset}) / {MS_PER_DAY} AS INT) AS day
             FROM {table}
             WHERE date >= '{first}' AND date <= '{last}'
           )
           WHERE day >= {from} AND day <= {to}"#,
        from = epoch_days(from),
        to = epoch_days(to),
    ))
}

const MS_PER_DAY: i64 = 86_400_000;

/// Sums of `sums` (SQL expressions over `columns` of `table`) per group of
/// `request`, one page, ordered by the keys. Each sum comes back as f64
/// (exact for whole numbers below 2^53).
async fn grouped_sums(
    session: &ScopedSession,
    request: &KpiRequest,
    table: &str,
    columns: &str,
    sums: &[&str],
    identities: Option<&Identities>,
) -> Result<Page<(GroupKey, Vec<f64>)>, QueryError> {
    request.validate()?;
    let n = request.group_by.len();
    let keys: Vec<&str> = request.group_by.iter().map(|g| g.column()).collect();
    let keys = keys.join(", ");
    let sums_sql: Vec<String> = sums
        .iter()
        .map(|e| format!("CAST(sum({e}) AS DOUBLE)"))
        .collect();
    let rows = local_days_sql(table, columns, &request.time_zone, request.from, request.to)?;
    // SQL orders and pages, unless re-identified ids order the rows.
    let in_rust = reordered_by_identities(&request.group_by, identities);
    let page_sql = if in_rust {
        String::new()
    } else {
        format!("LIMIT {} OFFSET {}", request.limit + 1, request.offset)
    };
    let sql = format!(
        r#"SELECT {keys}, {}
           FROM ({rows})
           GROUP BY {keys}
           ORDER BY {keys}
           {page_sql}"#,
        sums_sql.join(", "),
    );
    let mut out = Vec::new();
    for batch in &complete(session.query(&sql).await?)? {
        let keys: Vec<_> = (0..n).map(|i| utf8(batch.column(i))).collect();
        let values: Vec<_> = (0..sums.len())
            .map(|j| batch.column(n + j).as_primitive::<Float64Type>())
            .collect();
        for i in 0..batch.num_rows() {
            let key: Vec<Option<String>> = keys
                .iter()
                .map(|k| k.is_valid(i).then(|| k.value(i).to_string()))
                .collect();
            let sums = values
                .iter()
                .map(|v| if v.is_valid(i) { v.value(i) } else { 0.0 })
                .collect();
            out.push((key, sums));
        }
    }
    if in_rust {
        out.sort_by_cached_key(|(key, _)| display_order(&request.group_by, key, identities));
        out = out
            .into_iter()
            .skip(request.offset)
            .take(request.limit + 1)
            .collect();
    }
    let out = out
        .into_iter()
        .map(|(key, sums)| (GroupKey::new(&request.group_by, &key, identities), sums))
        .collect();
    Ok(page(out, request))
}

/// Activity per group.
pub async fn activity(
    session: &ScopedSession,
    request: &KpiRequest,
    identities: Option<&Identities>,
) -> Result<Page<ActivityRow>, QueryError> {
    let sums = grouped_sums(
        session,
        request,
        "activity",
        "subject, department, tracked_s, active_s, idle_s",
        &["tracked_s", "active_s", "idle_s"],
        identities,
    )
    .await?;
    Ok(sums.map(|(key, v)| {
        let (tracked_s, active_s, idle_s) = (v[0] as i64, v[1] as i64, v[2] as i64);
        ActivityRow {
            key,
            tracked_s,
            active_s,
            idle_s,
            activity_pct: if tracked_s > 0 {
                100.0 * active_s as f64 / tracked_s as f64
            } else {
                0.0
            },
        }
    }))
}

/// One row of the GPS KPI.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GpsRow {
    #[serde(flatten)]
    pub key: GroupKey,
    /// Positions the agents reported.
    pub points: i64,
    /// Distance along each slot's precise positions (haversine), summed.
    pub distance_km: f64,
    /// Time of segments faster than 1 m/s (consecutive positions at most 10
    /// minutes apart), and of slower ones.
    pub moving_s: i64,
    pub stopped_s: i64,
    /// Changes from moving to stopped.
    pub stops: i64,
    /// Time (moving or stopped) inside any of the tenant's sites.
    pub on_site_s: i64,
}

/// Distance, movement and time on sites per group.
pub async fn gps(
    session: &ScopedSession,
    request: &KpiRequest,
    identities: Option<&Identities>,
) -> Result<Page<GpsRow>, QueryError> {
    let sums = grouped_sums(
        session,
        request,
        "gps",
        "subject, department, site, points, distance_m, moving_s, stopped_s, stops",
        &[
            "points",
            "distance_m",
            "coalesce(moving_s, 0)",
            "coalesce(stopped_s, 0)",
            "coalesce(stops, 0)",
            "CASE WHEN site IS NULL THEN 0 ELSE coalesce(moving_s, 0) + coalesce(stopped_s, 0) END",
        ],
        identities,
    )
    .await?;
    Ok(sums.map(|(key, v)| GpsRow {
        key,
        points: v[0] as i64,
        distance_km: v[1] / 1000.0,
        moving_s: v[2] as i64,
        stopped_s: v[3] as i64,
        stops: v[4] as i64,
        on_site_s: v[5] as i64,
    }))
}

/// Attendance formulas, per employee and local day:
/// - present: some slot of the day has active time; first activity is the
///   start of the first such slot, last activity the end of the last one
///   (15-minute precision, the lake's slot);
/// - late: present on a work day, with first activity after the schedule's
///   start plus `grace_minutes`;
/// - absent: a work day before today with no active slot, for an employee
///   of the caller's scope in the directory now.
#[derive(Debug, Clone)]
pub struct AttendancePolicy {
    pub work_hours: candor_control::WorkHours,
    pub grace_minutes: u32,
    /// The tenant's today: it and later days are not counted as absences.
    pub today: NaiveDate,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AttendanceRow {
    #[serde(flatten)]
    pub key: GroupKey,
    /// Local `HH:MM`, on rows of one employee and one day.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_activity: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_activity: Option<String>,
    pub present_days: u32,
    pub late_days: u32,
    pub absent_days: u32,
}

/// The (subject, department) of the directory's employees a caller may
/// see: who can be absent.
pub type Roster = Vec<(String, Option<String>)>;

/// One employee-day before grouping.
struct Attended {
    subject: String,
    department: Option<String>,
    day: NaiveDate,
    /// First and last active slot starts, local; `None` when absent.
    span: Option<(chrono::NaiveTime, chrono::NaiveTime)>,
    late: bool,
}

/// Attendance per group. `in_scope` lists the (subject, department) of the
/// directory's employees the caller may see, for absences.
pub async fn attendance(
    session: &ScopedSession,
    request: &KpiRequest,
    policy: &AttendancePolicy,
    in_scope: &[(String, Option<String>)],
    identities: Option<&Identities>,
) -> Result<Page<AttendanceRow>, QueryError> {
    use chrono::{Datelike, TimeZone, Timelike};
    request.validate()?;
    let tz: chrono_tz::Tz = request
        .time_zone
        .parse()
        .map_err(|_| QueryError::BadTimeZone(request.time_zone.clone()))?;
    let rows = local_days_sql(
        "activity",
        "subject, department, active_s",
        &request.time_zone,
        request.from,
        request.to,
    )?;
    let sql = format!(
        r#"SELECT subject, max(department) AS department, day,
                  min(slot_start) AS first_ms, max(slot_start) AS last_ms
           FROM ({rows})
           WHERE active_s > 0
           GROUP BY subject, day"#
    );
    let local = |ms: i64| {
        tz.timestamp_millis_opt(ms)
            .single()
            .map(|t| t.time())
            .unwrap_or_default()
    };
    let start = policy.work_hours.start_minutes() + policy.grace_minutes;
    let mut days: BTreeMap<(String, NaiveDate), Attended> = BTreeMap::new();
    for batch in &complete(session.query(&sql).await?)? {
        let (subject, department, day) = (
            utf8(batch.column(0)),
            utf8(batch.column(1)),
            utf8(batch.column(2)),
        );
        let first = batch.column(3).as_primitive::<TimestampMillisecondType>();
        let last = batch.column(4).as_primitive::<TimestampMillisecondType>();
        for i in 0..batch.num_rows() {
            let Ok(date) = day.value(i).parse::<NaiveDate>() else {
                continue;
            };
            let (first, last) = (local(first.value(i)), local(last.value(i)));
            let minute = first.hour() * 60 + first.minute();
            days.insert(
                (subject.value(i).to_string(), date),
                Attended {
                    subject: subject.value(i).to_string(),
                    department: department
                        .is_valid(i)
                        .then(|| department.value(i).to_string()),
                    day: date,
                    span: Some((first, last)),
                    late: policy.work_hours.is_work_day(date.weekday()) && minute > start,
                },
            );
        }
    }
    for date in request.from.iter_days().take_while(|d| *d <= request.to) {
        if date >= policy.today || !policy.work_hours.is_work_day(date.weekday()) {
            continue;
        }
        for (subject, department) in in_scope {
            days.entry((subject.clone(), date))
                .or_insert_with(|| Attended {
                    subject: subject.clone(),
                    department: department.clone(),
                    day: date,
                    span: None,
                    late: false,
                });
        }
    }

    let by = &request.group_by;
    let per_employee_day = by.contains(&GroupBy::Employee) && by.contains(&GroupBy::Day);
    let mut groups: BTreeMap<Vec<Option<String>>, AttendanceRow> = BTreeMap::new();
    for a in days.into_values() {
        let week = a.day - Days::new(u64::from(a.day.weekday().num_days_from_monday()));
        let key_of = |g: &GroupBy| match g {
            GroupBy::Employee => Some(a.subject.clone()),
            GroupBy::Department => a.department.clone(),
            GroupBy::Day => Some(a.day.to_string()),
            GroupBy::Week => Some(week.to_string()),
            GroupBy::Site => None,
        };
        let key: Vec<Option<String>> = by.iter().map(key_of).collect();
        let row = groups.entry(key.clone()).or_insert_with(|| AttendanceRow {
            key: GroupKey::new(by, &key, identities),
            first_activity: None,
            last_activity: None,
            present_days: 0,
            late_days: 0,
            absent_days: 0,
        });
        match a.span {
            Some((first, last)) => {
                row.present_days += 1;
                row.late_days += u32::from(a.late);
                if per_employee_day {
                    let end = last + chrono::Duration::minutes(15);
                    row.first_activity = Some(first.format("%H:%M").to_string());
                    row.last_activity = Some(end.format("%H:%M").to_string());
                }
            }
            None => row.absent_days += 1,
        }
    }
    let mut groups: Vec<_> = groups.into_iter().collect();
    groups.sort_by_cached_key(|(key, _)| display_order(by, key, identities));
    let rows: Vec<AttendanceRow> = groups
        .into_iter()
        .skip(request.offset)
        .take(request.limit + 1)
        .map(|(_, row)| row)
        .collect();
    Ok(page(rows, request))
}

/// Apps listed per row of the apps KPI.
pub const TOP_APPS: usize = 5;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AppsRow {
    #[serde(flatten)]
    pub key: GroupKey,
    /// Seconds of app time per category: productive, neutral, unproductive.
    pub seconds_by_category: BTreeMap<String, i64>,
    /// productive seconds / all app seconds (0 without app time).
    pub productive_share: f64,
    /// The group's most used apps (with host, when the agent gave one).
    pub top_apps: Vec<TopApp>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TopApp {
    pub app: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    pub category: String,
    pub seconds: i64,
}

/// App time per group: the productive share by the tenant's categories (as
/// rated when the processor wrote the rows) and the top apps.
///
/// With `min_app_users` (k, for group-only scopes) the top apps are listed
/// on rows grouped by department and day only, and only apps at least k
/// people of the row's group used: a total or a week minus its parts would
/// otherwise give one person's app time.
pub async fn apps(
    session: &ScopedSession,
    request: &KpiRequest,
    identities: Option<&Identities>,
    min_app_users: Option<u32>,
) -> Result<Page<AppsRow>, QueryError> {
    request.validate()?;
    let keys: Vec<&str> = request.group_by.iter().map(|g| g.column()).collect();
    let keys = keys.join(", ");
    let n = request.group_by.len();
    let rows = local_days_sql(
        "app_usage",
        "subject, department, app, host, category, seconds",
        &request.time_zone,
        request.from,
        request.to,
    )?;
    let users = if min_app_users.is_some() {
        "count(DISTINCT subject)"
    } else {
        "CAST(0 AS BIGINT)"
    };
    let sql = format!(
        r#"SELECT {keys}, app, host, category, sum(seconds) AS seconds, {users} AS users
           FROM ({rows})
           GROUP BY {keys}, app, host, category"#
    );
    let by = &request.group_by;
    let listed_apps = match min_app_users {
        None => Some(0),
        Some(k) if by.contains(&GroupBy::Department) && by.contains(&GroupBy::Day) => {
            Some(i64::from(k))
        }
        Some(_) => None,
    };
    // Per group: every (app, users) for the categories' sums.
    let mut groups: BTreeMap<Vec<Option<String>>, Vec<(TopApp, i64)>> = BTreeMap::new();
    for batch in &complete(session.query(&sql).await?)? {
        let keys: Vec<_> = (0..n).map(|i| utf8(batch.column(i))).collect();
        let (app, host, category) = (
            utf8(batch.column(n)),
            utf8(batch.column(n + 1)),
            utf8(batch.column(n + 2)),
        );
        let seconds = batch.column(n + 3).as_primitive::<Int64Type>();
        let users = batch.column(n + 4).as_primitive::<Int64Type>();
        for i in 0..batch.num_rows() {
            let key = keys
                .iter()
                .map(|k| k.is_valid(i).then(|| k.value(i).to_string()))
                .collect();
            let app = TopApp {
                app: app.value(i).to_string(),
                host: host.is_valid(i).then(|| host.value(i).to_string()),
                category: category.value(i).to_string(),
                seconds: seconds.value(i),
            };
            groups.entry(key).or_default().push((app, users.value(i)));
        }
    }
    let mut groups: Vec<_> = groups.into_iter().collect();
    groups.sort_by_cached_key(|(key, _)| display_order(&request.group_by, key, identities));
    let rows: Vec<AppsRow> = groups
        .into_iter()
        .skip(request.offset)
        .take(request.limit + 1)
        .map(|(key, apps)| {
            let mut seconds_by_category = BTreeMap::new();
            for (a, _) in &apps {
                *seconds_by_category.entry(a.category.clone()).or_insert(0) += a.seconds;
            }
            let total: i64 = seconds_by_category.values().sum();
            let productive = seconds_by_category.get("productive").copied().unwrap_or(0);
            let mut apps: Vec<TopApp> = match listed_apps {
                Some(min) => apps
                    .into_iter()
                    .filter(|(_, users)| *users >= min)
                    .map(|(a, _)| a)
                    .collect(),
                None => Vec::new(),
            };
            apps.sort_by(|a, b| b.seconds.cmp(&a.seconds).then(a.app.cmp(&b.app)));
            apps.truncate(TOP_APPS);
            AppsRow {
                key: GroupKey::new(&request.group_by, &key, identities),
                seconds_by_category,
                productive_share: if total > 0 {
                    productive as f64 / total as f64
                } else {
                    0.0
                },
                top_apps: apps,
            }
        })
        .collect();
    Ok(page(rows, request))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{StringArray, TimestampMillisecondArray};
    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    use chrono::{TimeZone, Utc};
    use datafusion::prelude::SessionContext;
    use std::sync::Arc;

    /// The local (day, week) of each slot (UTC `YYYY-MM-DDTHH:MM:SS`) that
    /// falls on 2026-03-28..=2026-03-30 in `time_zone`, in slot order.
    async fn local_days(time_zone: &str, slots: &[&str]) -> Vec<(String, String)> {
        let ms: Vec<i64> = slots
            .iter()
            .map(|s| {
                Utc.from_utc_datetime(&s.parse::<chrono::NaiveDateTime>().unwrap())
                    .timestamp_millis()
            })
            .collect();
        let dates: Vec<String> = slots.iter().map(|s| s[..10].to_string()).collect();
        let schema = Arc::new(Schema::new(vec![
            Field::new(
                "slot_start",
                DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
                false,
            ),
            Field::new("date", DataType::Utf8, false),
        ]));
        let batch = arrow::record_batch::RecordBatch::try_new(
            schema,
            vec![
                Arc::new(TimestampMillisecondArray::from(ms).with_timezone("UTC")),
                Arc::new(StringArray::from(dates)),
            ],
        )
        .unwrap();
        let ctx = SessionContext::new();
        ctx.register_batch("activity", batch).unwrap();
        let from = NaiveDate::from_ymd_opt(2026, 3, 28).unwrap();
        let to = NaiveDate::from_ymd_opt(2026, 3, 30).unwrap();
        let rows = local_days_sql("activity", "date", time_zone, from, to).unwrap();
        let sql = format!("SELECT day, week FROM ({rows}) ORDER BY slot_start");
        let mut out = Vec::new();
        for batch in ctx.sql(&sql).await.unwrap().collect().await.unwrap() {
            let (day, week) = (utf8(batch.column(0)), utf8(batch.column(1)));
            for i in 0..batch.num_rows() {
                out.push((day.value(i).to_string(), week.value(i).to_string()));
            }
        }
        out
    }

    fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
        expected
            .iter()
            .map(|(d, w)| (d.to_string(), w.to_string()))
            .collect()
    }

    /// Slots around local midnight and across Berlin's 2026-03-29 change
    /// to summer time: days and weeks are the tenant's, not UTC's.
    #[tokio::test]
    async fn slots_fall_on_the_local_day_and_week_across_a_dst_change() {
        let slots = [
            "2026-03-27T22:45:00", // Fri 23:45 CET: before `from`, left out
            "2026-03-27T23:00:00", // Sat 00:00 CET
            "2026-03-29T21:45:00", // Sun 23:45 CEST, after the change
            "2026-03-29T22:00:00", // Mon 00:00 CEST: a new week
            "2026-03-30T22:00:00", // Tue 00:00 CEST: after `to`, left out
        ];
        assert_eq!(
            local_days("Europe/Berlin", &slots).await,
            pairs(&[
                ("2026-03-28", "2026-03-23"),
                ("2026-03-29", "2026-03-23"),
                ("2026-03-30", "2026-03-30"),
            ])
        );
    }

    /// A zone 5:45 ahead of UTC: a slot's day turns on a quarter hour.
    #[tokio::test]
    async fn slots_fall_on_the_local_day_in_a_quarter_hour_zone() {
        let slots = [
            "2026-03-27T18:00:00", // Fri 23:45
            "2026-03-27T18:15:00", // Sat 00:00
            "2026-03-30T18:00:00", // Mon 23:45
            "2026-03-30T18:15:00", // Tue 00:00
        ];
        assert_eq!(
            local_days("Asia/Kathmandu", &slots).await,
            pairs(&[("2026-03-28", "2026-03-23"), ("2026-03-30", "2026-03-30")])
        );
    }
}
