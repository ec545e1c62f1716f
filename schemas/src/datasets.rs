//! The four datasets and their Arrow schemas: as log records (one row per
//! event, raw ids kept in sealed record metadata) and as lake tables (one row
//! per pseudonymous subject and 15-minute slot, additive, so late data adds
//! rows and sums stay exact).
//!
//! Lake tables live under `<dataset>/tenant=<id>/date=<YYYY-MM-DD>/`; the
//! `tenant` and `date` columns come from those paths, not from the files.
//! `date` is the UTC date of `slot_start`.

use std::sync::{Arc, OnceLock};

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

/// The file name prefix of an object that compaction merged from smaller
/// ones of its folder.
pub const MERGED_PREFIX: &str = "compact-";
/// `<folder>/<merged>.members.json` names the objects `<merged>.parquet`
/// replaces while both are in the folder: a reader that sees the merged
/// object skips them (see `candor_processor::compaction`).
pub const MEMBERS_SUFFIX: &str = ".members.json";

/// The content of a members file: the merged objects' file names in the
/// same folder.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MergedMembers {
    pub objects: Vec<String>,
}

/// Length of an aggregation slot. Every real time-zone offset is a multiple
/// of 15 minutes, so daily KPIs in any tenant's zone are exact sums of slots.
pub const SLOT_MS: i64 = 15 * 60 * 1000;

/// The start of the 15-minute slot holding `ts_ms`.
pub fn slot_start(ts_ms: i64) -> i64 {
    ts_ms.div_euclid(SLOT_MS) * SLOT_MS
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Dataset {
    Activity = 1,
    AppUsage = 2,
    Gps = 3,
    Attendance = 4,
}

fn ts_ms() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
}

fn field(name: &str, ty: DataType, nullable: bool) -> Field {
    Field::new(name, ty, nullable)
}

impl Dataset {
    pub const ALL: [Dataset; 4] = [Self::Activity, Self::AppUsage, Self::Gps, Self::Attendance];

    /// The dataset's name: the lake's top-level folder and the SQL table name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Activity => "activity",
            Self::AppUsage => "app_usage",
            Self::Gps => "gps",
            Self::Attendance => "attendance",
        }
    }

    pub fn from_tag(tag: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|d| *d as u8 == tag)
    }

    /// Rows of a log record: the events of one batch, as the agent sent them.
    /// Built once per process: ingest and the processor ask per batch and per
    /// record.
    pub fn log_schema(self) -> SchemaRef {
        static SCHEMAS: OnceLock<[SchemaRef; 4]> = OnceLock::new();
        let schemas = SCHEMAS.get_or_init(|| Self::ALL.map(Self::build_log_schema));
        let index = Self::ALL
            .iter()
            .position(|d| *d == self)
            .expect("every dataset is in ALL");
        schemas[index].clone()
    }

    fn build_log_schema(self) -> SchemaRef {
        let fields = match self {
            Self::Activity => vec![
                field("start_ms", ts_ms(), false),
                field("active_s", DataType::UInt32, false),
                field("idle_s", DataType::UInt32, false),
            ],
            Self::AppUsage => vec![
                field("start_ms", ts_ms(), false),
                field("duration_s", DataType::UInt32, false),
                field("app", DataType::Utf8, false),
                field("host", DataType::Utf8, true),
            ],
            Self::Gps => vec![
                field("at_ms", ts_ms(), false),
                field("lat", DataType::Float64, false),
                field("lon", DataType::Float64, false),
                field("accuracy_m", DataType::Float64, false),
            ],
            Self::Attendance => vec![
                field("at_ms", ts_ms(), false),
                field("kind", DataType::Utf8, false),
            ],
        };
        Arc::new(Schema::new(fields))
    }

    /// Rows of the lake table: one per subject, slot (and key columns).
    /// `subject` is hex HMAC-SHA256 of the employee id under the tenant's
    /// pseudonym key; `department` comes from the directory at processing time.
    pub fn lake_schema(self) -> SchemaRef {
        let mut fields = vec![
            field("subject", DataType::Utf8, false),
            field("department", DataType::Utf8, true),
            field("slot_start", ts_ms(), false),
        ];
        fields.extend(match self {
            Self::Activity => vec![
                field("tracked_s", DataType::Int64, false),
                field("active_s", DataType::Int64, false),
                field("idle_s", DataType::Int64, false),
                field("samples", DataType::Int64, false),
            ],
            Self::AppUsage => vec![
                field("app", DataType::Utf8, false),
                field("host", DataType::Utf8, true),
                // The tenant's rating at processing time: productive, neutral
                // or unproductive.
                field("category", DataType::Utf8, false),
                field("seconds", DataType::Int64, false),
            ],
            Self::Gps => vec![
                field("points", DataType::Int64, false),
                field("distance_m", DataType::Float64, false),
                // Centroid of the slot's points, rounded to 0.01 degrees (about 1 km).
                field("cell", DataType::Utf8, false),
                // The tenant's site the points lie in (the first that
                // matches), or null outside every site: a subject's slot has
                // one row per site it was in, so sums over rows stay exact.
                field("site", DataType::Utf8, true),
                // Time of segments (consecutive points at most 10 minutes
                // apart) faster than 1 m/s, and slower; stops: changes from
                // moving to stopped. Null in rows written before they existed.
                field("moving_s", DataType::Int64, true),
                field("stopped_s", DataType::Int64, true),
                field("stops", DataType::Int64, true),
            ],
            Self::Attendance => vec![
                field("kind", DataType::Utf8, false),
                field("events", DataType::Int64, false),
                field("first_at", ts_ms(), false),
                field("last_at", ts_ms(), false),
            ],
        });
        Arc::new(Schema::new(fields))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_fifteen_minutes_and_floor_negative_times() {
        assert_eq!(slot_start(SLOT_MS + 1), SLOT_MS);
        assert_eq!(slot_start(SLOT_MS - 1), 0);
        assert_eq!(slot_start(-1), -SLOT_MS);
    }

    #[test]
    fn tags_round_trip() {
        for d in Dataset::ALL {
            assert_eq!(Dataset::from_tag(d as u8), Some(d));
        }
        assert_eq!(Dataset::from_tag(0), None);
    }
}
