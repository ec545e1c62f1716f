//! The batch an agent sends, once opened and decompressed: JSON, one
//! employee and one device (named in the envelope header), many events.
//!
//! The model is closed: unknown fields are refused, and there is no field
//! for keystroke content, clipboard, screenshots, webcam, microphone or
//! message content, so such data cannot be sent by mistake. App usage
//! carries an application name and a host only, never window titles or URLs.
//! Every unit and range is documented in WIRE.md.
//!
//! These types are what an agent (or a test) writes. A node never builds
//! them: it reads the JSON straight into Arrow columns with
//! [`crate::columns::decode_json`], which is the one validator of this model.

use serde::{Deserialize, Serialize};

/// The only `v` this node accepts.
pub const BATCH_MODEL_VERSION: u32 = 1;
/// Longest activity sample or app-usage interval: one 15-minute slot.
pub const MAX_INTERVAL_S: u32 = 900;
pub const MAX_APP_NAME_LEN: usize = 128;
pub const MAX_HOST_LEN: usize = 253;
pub const MAX_ACCURACY_M: f64 = 100_000.0;
/// Earliest timestamp any batch may carry: 2020-01-01T00:00:00Z.
pub const EPOCH_FLOOR_MS: i64 = 1_577_836_800_000;

/// Caps applied before and while a batch is opened (bounded before it
/// allocates: the body cap before reading, the decompressed cap while
/// inflating, the event cap before encoding).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub max_decompressed_bytes: usize,
    pub max_events: usize,
    /// How far in the future an event may lie (agent clock skew).
    pub max_future_ms: i64,
    /// How far in the past an event may lie (the tenant's retention).
    pub max_age_ms: i64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 1024 * 1024,
            max_decompressed_bytes: 8 * 1024 * 1024,
            max_events: 10_000,
            max_future_ms: 5 * 60 * 1000,
            max_age_ms: 365 * 24 * 3600 * 1000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Batch {
    /// Model version; must be 1.
    pub v: u32,
    /// When the agent sealed the batch (Unix ms, agent clock); informative.
    pub sent_at_ms: i64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub activity: Vec<ActivitySample>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub app_usage: Vec<AppUsage>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gps: Vec<GpsPoint>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attendance: Vec<AttendanceEvent>,
}

/// An interval of tracked time split into active and idle seconds. The
/// interval is `[start_ms, start_ms + (active_s + idle_s) * 1000)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActivitySample {
    pub start_ms: i64,
    pub active_s: u32,
    pub idle_s: u32,
}

/// Foreground time of one application, and for browsers the host only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppUsage {
    pub start_ms: i64,
    pub duration_s: u32,
    pub app: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

/// A precise position. Precise positions never reach the lake: the
/// processor computes distances from them, then coarsens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpsPoint {
    pub at_ms: i64,
    pub lat: f64,
    pub lon: f64,
    pub accuracy_m: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttendanceKind {
    ClockIn,
    ClockOut,
    BreakStart,
    BreakEnd,
}

impl AttendanceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClockIn => "clock_in",
            Self::ClockOut => "clock_out",
            Self::BreakStart => "break_start",
            Self::BreakEnd => "break_end",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttendanceEvent {
    pub at_ms: i64,
    pub kind: AttendanceKind,
}

impl Batch {
    pub fn event_count(&self) -> usize {
        self.activity.len() + self.app_usage.len() + self.gps.len() + self.attendance.len()
    }
}

/// Great-circle distance in metres between two (lat, lon) points in
/// degrees (haversine on the mean Earth radius): what the processor counts
/// as distance travelled and geofences are measured with.
pub fn haversine_m(a: (f64, f64), b: (f64, f64)) -> f64 {
    const EARTH_RADIUS_M: f64 = 6_371_008.8;
    let (lat1, lat2) = (a.0.to_radians(), b.0.to_radians());
    let dlat = lat2 - lat1;
    let dlon = (b.1 - a.1).to_radians();
    let h = (dlat / 2.0).sin().powi(2) + lat1.cos() * lat2.cos() * (dlon / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_M * h.sqrt().asin()
}
