//! KPI queries. Each is one SQL statement over the caller's scoped views
//! (the same path analysts' SQL takes), computed in the tenant's time zone.
//!
//! Slots are 15 minutes and every real UTC offset is a multiple of 15
//! minutes, so each slot lies wholly inside one local day and daily sums are
//! exact. Lake partitions are UTC dates; a local day touches at most the UTC
//! dates on either side of it, so only those partitions are read.
//!
//! Formulas (activity):
//! - tracked, active, idle hours: the sums of the slots' seconds / 3600;
//! - activity % = 100 × active / tracked (0 when nothing was tracked).

use std::str::FromStr;

use arrow::array::timezone::Tz;
use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::Int64Type;
use chrono::{Days, NaiveDate};
use serde::Serialize;

use crate::scope::Identities;
use crate::session::ScopedSession;
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
}

impl FromStr for GroupBy {
    type Err = QueryError;
    fn from_str(s: &str) -> Result<Self, QueryError> {
        match s {
            "employee" => Ok(GroupBy::Employee),
            "department" => Ok(GroupBy::Department),
            "day" => Ok(GroupBy::Day),
            "week" => Ok(GroupBy::Week),
            other => Err(QueryError::BadRequest(format!(
                "group_by {other:?}: use employee, department, day or week"
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

/// One row of the activity KPI. Keys not grouped by are absent.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ActivityRow {
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
    #[serde(skip_serializing_if = "Option::is_none")]
    pub week: Option<String>,
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

/// Activity per group.
pub async fn activity(
    session: &ScopedSession,
    request: &KpiRequest,
    identities: Option<&Identities>,
) -> Result<Page<ActivityRow>, QueryError> {
    request.validate()?;
    let KpiRequest {
        time_zone: tz,
        from,
        to,
        ..
    } = request;
    let keys: Vec<&str> = request.group_by.iter().map(|g| g.column()).collect();
    let keys = keys.join(", ");
    let (first_partition, last_partition) = (*from - Days::new(1), *to + Days::new(1));
    let sql = format!(
        r#"SELECT {keys}, sum(tracked_s) AS tracked_s, sum(active_s) AS active_s, sum(idle_s) AS idle_s
           FROM (
             SELECT subject, department, tracked_s, active_s, idle_s, day,
                    to_char(date_trunc('week', CAST(day AS DATE)), '%Y-%m-%d') AS week
             FROM (
               SELECT subject, department, tracked_s, active_s, idle_s,
                      to_char(arrow_cast(slot_start, 'Timestamp(Millisecond, Some("{tz}"))'), '%Y-%m-%d') AS day
               FROM activity
               WHERE date >= '{first_partition}' AND date <= '{last_partition}'
             )
             WHERE day >= '{from}' AND day <= '{to}'
           )
           GROUP BY {keys}
           ORDER BY {keys}
           LIMIT {} OFFSET {}"#,
        request.limit + 1,
        request.offset
    );
    let answer = session.query(&sql).await?;
    let mut rows: Vec<ActivityRow> = answer
        .batches
        .iter()
        .flat_map(|b| activity_rows(b, &request.group_by, identities))
        .collect();
    let next_offset = (rows.len() > request.limit).then(|| {
        rows.truncate(request.limit);
        request.offset + request.limit
    });
    Ok(Page { rows, next_offset })
}

fn activity_rows(
    batch: &RecordBatch,
    group_by: &[GroupBy],
    identities: Option<&Identities>,
) -> Vec<ActivityRow> {
    let n = group_by.len();
    let int = |i: usize| batch.column(n + i).as_primitive::<Int64Type>();
    let (tracked, active, idle) = (int(0), int(1), int(2));
    let keys: Vec<_> = (0..n).map(|i| utf8(batch.column(i))).collect();
    let key = |g: GroupBy, row: usize| -> Option<String> {
        let column = &keys[group_by.iter().position(|k| *k == g)?];
        column.is_valid(row).then(|| column.value(row).to_string())
    };
    (0..batch.num_rows())
        .map(|i| {
            let subject = key(GroupBy::Employee, i);
            let employee = subject
                .as_deref()
                .and_then(|s| identities?.employee(s))
                .map(|e| e.to_string());
            let (tracked_s, active_s) = (tracked.value(i), active.value(i));
            ActivityRow {
                subject: if employee.is_some() { None } else { subject },
                employee,
                department: key(GroupBy::Department, i),
                day: key(GroupBy::Day, i),
                week: key(GroupBy::Week, i),
                tracked_s,
                active_s,
                idle_s: idle.value(i),
                activity_pct: if tracked_s > 0 {
                    100.0 * active_s as f64 / tracked_s as f64
                } else {
                    0.0
                },
            }
        })
        .collect()
}
