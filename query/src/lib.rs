//! Candor's query side: DataFusion over the lake, one tenant at a time.
//!
//! A [`TenantLake`] is a DataFusion session whose only tables are the
//! tenant's own partitions: each table lists `<dataset>/tenant=<id>/` and
//! nothing above it, so no query through it can reach another tenant's files.
//! The lake holds pseudonymous subjects only; raw identities never appear here.
//!
//! [`api`] is the service's HTTP API: bearer-token authentication and the
//! control plane's admin routes.

pub mod api;

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use arrow::array::timezone::Tz;
use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Int64Type};
use candor_schemas::datasets::Dataset;
use candor_schemas::ids::TenantId;
use chrono::{Days, NaiveDate};
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::error::DataFusionError;
use datafusion::prelude::SessionContext;

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("query engine: {0}")]
    Engine(#[from] DataFusionError),
    #[error("unknown time zone {0:?}; use an IANA name such as Europe/Berlin")]
    BadTimeZone(String),
    #[error("empty date range: {from} is after {to}")]
    BadRange { from: NaiveDate, to: NaiveDate },
    #[error("lake path {0} is not valid UTF-8")]
    BadPath(String),
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

pub struct TenantLake {
    ctx: SessionContext,
}

impl TenantLake {
    /// Opens `tenant`'s part of a lake kept in a local directory.
    pub async fn open_local(root: &Path, tenant: &TenantId) -> Result<Self, QueryError> {
        let root = root
            .to_str()
            .ok_or_else(|| QueryError::BadPath(root.display().to_string()))?
            .trim_end_matches('/');
        let ctx = SessionContext::new();
        for dataset in Dataset::ALL {
            let dir = format!("{root}/{}/tenant={tenant}/", dataset.name());
            // The table's root is the tenant's own folder; `date` is the only
            // partition column it sees.
            let url = ListingTableUrl::parse(&dir)?;
            let options = ListingOptions::new(Arc::new(ParquetFormat::default()))
                .with_file_extension(".parquet")
                .with_table_partition_cols(vec![("date".to_string(), DataType::Utf8)]);
            let config = ListingTableConfig::new(url)
                .with_listing_options(options)
                .with_schema(dataset.lake_schema());
            ctx.register_table(dataset.name(), Arc::new(ListingTable::try_new(config)?))?;
        }
        Ok(Self { ctx })
    }

    pub fn session(&self) -> &SessionContext {
        &self.ctx
    }

    /// Activity % per subject per day of `time_zone`, for days `from..=to`.
    ///
    /// Slots are 15 minutes and every real UTC offset is a multiple of 15
    /// minutes, so each slot falls wholly inside one local day and the daily
    /// sums are exact.
    pub async fn activity_by_subject_day(
        &self,
        time_zone: &str,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Vec<ActivityDay>, QueryError> {
        // Validating against the zone database also keeps the name safe to
        // place in the statement below.
        Tz::from_str(time_zone).map_err(|_| QueryError::BadTimeZone(time_zone.to_string()))?;
        if time_zone.contains(['\'', '"']) {
            return Err(QueryError::BadTimeZone(time_zone.to_string()));
        }
        if from > to {
            return Err(QueryError::BadRange { from, to });
        }
        // Partitions are UTC dates: a local day touches at most the UTC
        // dates on either side of it.
        let first_partition = from - Days::new(1);
        let last_partition = to + Days::new(1);
        let sql = format!(
            r#"SELECT subject, day,
                      sum(tracked_s) AS tracked_s, sum(active_s) AS active_s, sum(idle_s) AS idle_s
               FROM (
                 SELECT subject, tracked_s, active_s, idle_s,
                        to_char(arrow_cast(slot_start, 'Timestamp(Millisecond, Some("{time_zone}"))'), '%Y-%m-%d') AS day
                 FROM activity
                 WHERE date >= '{first_partition}' AND date <= '{last_partition}'
               )
               WHERE day >= '{from}' AND day <= '{to}'
               GROUP BY subject, day
               ORDER BY subject, day"#
        );
        let batches = self.ctx.sql(&sql).await?.collect().await?;
        Ok(batches.iter().flat_map(activity_rows).collect())
    }
}

fn activity_rows(batch: &RecordBatch) -> Vec<ActivityDay> {
    let subject = batch.column(0).as_string::<i32>();
    let day = batch.column(1).as_string::<i32>();
    let int = |i: usize| batch.column(i).as_primitive::<Int64Type>();
    let (tracked, active, idle) = (int(2), int(3), int(4));
    (0..batch.num_rows())
        .filter(|&i| subject.is_valid(i))
        .map(|i| ActivityDay {
            subject: subject.value(i).to_string(),
            day: day.value(i).to_string(),
            tracked_s: tracked.value(i),
            active_s: active.value(i),
            idle_s: idle.value(i),
            activity_pct: if tracked.value(i) > 0 {
                100.0 * active.value(i) as f64 / tracked.value(i) as f64
            } else {
                0.0
            },
        })
        .collect()
}
