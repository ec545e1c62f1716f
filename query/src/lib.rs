//! Candor's query side: DataFusion over the lake, one tenant and one scope
//! at a time.
//!
//! - [`lake`]: where each tenant's tables live (the deployment's lake or the
//!   tenant's own): each dataset's Delta table, as of a version refreshed
//!   every few seconds, with shared metadata caches.
//! - [`scope`]: what a token may see, from its role and the directory.
//! - [`session`]: a per-request session whose only tables are views already
//!   filtered to the tenant and scope; one `SELECT` at a time, bounded.
//! - [`kpi`]: the KPI queries, run through such a session.
//! - [`team_only`]: the group figures managers and HR see instead, in a
//!   tenant whose privacy mode is `team_only`.
//! - [`api`]: the HTTP API.
//! - [`portal`]: the web portal served at `/`, and its sign-in sessions.
//!
//! The lake holds pseudonymous subjects only; the service re-identifies them
//! from the directory for roles allowed to see identities.

pub mod api;
pub mod bounded_functions;
pub mod bounds;
pub mod delivery;
pub mod engine;
pub mod extract;
pub mod format;
pub mod guard;
pub mod kpi;
pub mod lake;
pub mod portal;
pub mod scope;
pub mod session;
pub(crate) mod suppression;
pub mod team_only;

use std::path::Path;
use std::time::Duration;

use candor_schemas::ids::TenantId;
use chrono::NaiveDate;
use datafusion::error::DataFusionError;

use crate::kpi::{GroupBy, KpiRequest};
use crate::lake::{LakeConfig, QueryLake};
use crate::scope::Scope;
use crate::session::{Limits, ScopedSession};

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("query engine: {0}")]
    Engine(DataFusionError),
    #[error("the query needs more than its memory budget: {0}")]
    TooLarge(String),
    #[error("statement refused: {0}")]
    Refused(String),
    #[error("SQL: {0}")]
    BadSql(String),
    /// The tenant's privacy mode shows this caller group figures only.
    #[error("privacy mode team_only: {0}")]
    TeamOnly(String),
    #[error("the statement is {bytes} bytes; at most {max} are accepted")]
    TooLong { bytes: usize, max: usize },
    #[error("{0}")]
    BadRequest(String),
    #[error("the query ran past its limit of {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    TooComplex(#[from] crate::bounds::TooComplex),
    #[error("too many statements are running; try again shortly")]
    Busy,
    #[error("unknown time zone {0:?}; use an IANA name such as Europe/Berlin")]
    BadTimeZone(String),
    #[error("empty date range: {from} is after {to}")]
    BadRange { from: NaiveDate, to: NaiveDate },
    #[error("lake: {0}")]
    Lake(String),
    /// An object the table version named was gone when it was read.
    #[error("lake: an object changed while it was read: {0}")]
    Vanished(String),
    /// One dataset's table cannot be read (its log does not load); the
    /// other datasets can.
    #[error(transparent)]
    TableUnavailable(crate::lake::TableUnavailable),
    #[error("lake {url}: {reason}")]
    BadLake { url: String, reason: String },
}

impl From<DataFusionError> for QueryError {
    fn from(e: DataFusionError) -> Self {
        if let Some(table) = cause::<crate::lake::TableUnavailable>(&e) {
            return if table.transient {
                QueryError::Lake(table.to_string())
            } else {
                QueryError::TableUnavailable(table.clone())
            };
        }
        match e.find_root() {
            DataFusionError::ResourcesExhausted(m) => QueryError::TooLarge(m.clone()),
            // A cast or an arithmetic step that the data makes impossible is
            // the statement's fault, not the engine's.
            DataFusionError::ArrowError(error, _)
                if matches!(
                    **error,
                    arrow::error::ArrowError::CastError(_)
                        | arrow::error::ArrowError::ParseError(_)
                        | arrow::error::ArrowError::DivideByZero
                        | arrow::error::ArrowError::ArithmeticOverflow(_)
                        | arrow::error::ArrowError::InvalidArgumentError(_)
                ) =>
            {
                QueryError::BadSql(format!("the statement failed on the data: {error}"))
            }
            _ => match store_error(&e) {
                Some(object_store::Error::NotFound { .. }) => QueryError::Vanished(e.to_string()),
                Some(_) => QueryError::Lake(e.to_string()),
                None => QueryError::Engine(e),
            },
        }
    }
}

/// The object store's error underneath, if it failed.
fn store_error(e: &DataFusionError) -> Option<&object_store::Error> {
    cause(e)
}

/// The first error of type `T` in `e`'s chain: the engine wraps errors (in
/// Parquet's, in Arrow's, in context, in external ones), so it is walked.
fn cause<T: std::error::Error + 'static>(e: &DataFusionError) -> Option<&T> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(error) = cause {
        if let Some(found) = error.downcast_ref::<T>() {
            return Some(found);
        }
        cause = error.source();
    }
    None
}

impl QueryError {
    /// An error while turning a statement into a plan is the statement's
    /// fault (unknown table or column, bad types), not the engine's.
    fn from_planning(e: DataFusionError) -> Self {
        match e.find_root() {
            DataFusionError::ResourcesExhausted(_) => e.into(),
            _ if store_error(&e).is_some() => e.into(),
            _ if cause::<crate::lake::TableUnavailable>(&e).is_some() => e.into(),
            _ => QueryError::BadSql(e.to_string()),
        }
    }
}

/// A string column as `Utf8`, whatever string type the engine chose for it
/// (`VARCHAR` may plan as `Utf8View`).
pub(crate) fn utf8(column: &arrow::array::ArrayRef) -> arrow::array::StringArray {
    use arrow::array::AsArray;
    let cast = arrow::compute::cast(column, &arrow::datatypes::DataType::Utf8)
        .expect("string columns cast to Utf8");
    cast.as_string::<i32>().clone()
}

/// Activity of one subject on one day of the tenant's calendar.
#[derive(Debug, Clone, PartialEq)]
pub struct ActivityDay {
    /// The pseudonymous subject (hex HMAC of the employee id).
    pub subject: String,
    /// The day in the tenant's time zone, `YYYY-MM-DD`.
    pub day: String,
    pub tracked_s: i64,
    pub active_s: i64,
    pub idle_s: i64,
    /// `100 * active_s / tracked_s`.
    pub activity_pct: f64,
}

/// One tenant's whole lake, pseudonymous, for operators' tools and tests.
pub struct TenantLake {
    session: ScopedSession,
}

impl TenantLake {
    /// Opens `tenant`'s part of a lake kept in a local directory.
    pub async fn open_local(root: &Path, tenant: &TenantId) -> Result<Self, QueryError> {
        let url = root.to_str().ok_or_else(|| QueryError::BadLake {
            url: root.display().to_string(),
            reason: "not valid UTF-8".into(),
        })?;
        Self::open(url, tenant).await
    }

    /// Opens `tenant`'s part of the lake at `url`: a directory,
    /// `file:///path` or `s3://bucket/prefix`.
    pub async fn open(url: &str, tenant: &TenantId) -> Result<Self, QueryError> {
        let lake = QueryLake::new(LakeConfig::new(url))?;
        let tables = lake.tables_at(tenant, None).await?;
        let session =
            ScopedSession::new(&lake, &tables, &Scope::whole_tenant(), Limits::default())?;
        Ok(Self { session })
    }

    pub fn session(&self) -> &ScopedSession {
        &self.session
    }

    /// Activity % per subject per day of `time_zone`, for days `from..=to`.
    pub async fn activity_by_subject_day(
        &self,
        time_zone: &str,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Vec<ActivityDay>, QueryError> {
        let mut request = KpiRequest {
            time_zone: time_zone.to_string(),
            from,
            to,
            group_by: vec![GroupBy::Employee, GroupBy::Day],
            limit: kpi::MAX_PAGE,
            offset: 0,
        };
        let mut out = Vec::new();
        loop {
            let page = kpi::activity(&self.session, &request, None).await?;
            out.extend(page.rows.into_iter().map(|r| ActivityDay {
                subject: r.key.subject.unwrap_or_default(),
                day: r.key.day.unwrap_or_default(),
                tracked_s: r.tracked_s,
                active_s: r.active_s,
                idle_s: r.idle_s,
                activity_pct: r.activity_pct,
            }));
            match page.next_offset {
                Some(next) => request.offset = next,
                None => return Ok(out),
            }
        }
    }
}
