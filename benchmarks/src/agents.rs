//! Simulated workforce agents: realistic workdays turned into sealed
//! batches exactly as WIRE.md describes, and a sender that posts them over
//! HTTP with the retry rules an agent must follow.

use std::time::Duration;

use candor_schemas::batch::{ActivitySample, AppUsage, AttendanceEvent, AttendanceKind, Batch};
use candor_schemas::envelope::{self, EnvelopeHeader};
use candor_schemas::keys::MasterSecret;
use candor_schemas::{DeviceId, EmployeeId, TenantId};
use chrono::{Datelike, NaiveDate, Weekday};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// An agent posts one batch per this many minutes of work.
pub const BATCH_MINUTES: i64 = 5;
/// Each activity sample covers one minute.
pub const SAMPLE_S: u32 = 60;

const APPS: &[(&str, Option<&str>)] = &[
    ("Excel", None),
    ("Outlook", None),
    ("Slack", None),
    ("Visual Studio Code", None),
    ("Firefox", Some("docs.example.com")),
    ("Firefox", Some("crm.example.com")),
    ("Chrome", Some("news.example.org")),
];

/// One simulated employee with one device.
#[derive(Debug, Clone)]
pub struct SimulatedAgent {
    pub tenant: TenantId,
    pub employee: EmployeeId,
    pub device: DeviceId,
    pub key_version: u32,
}

impl SimulatedAgent {
    pub fn new(tenant: &TenantId, index: usize) -> Self {
        Self {
            tenant: tenant.clone(),
            employee: EmployeeId::new(format!("emp-{index:05}")).expect("valid id"),
            device: DeviceId::new(format!("dev-{index:05}-laptop")).expect("valid id"),
            key_version: 1,
        }
    }

    /// The batches of one workday (UTC), or none on weekends. Deterministic
    /// for a given seed, so runs can be compared.
    pub fn workday(&self, day: NaiveDate, seed: u64) -> Vec<Batch> {
        if matches!(day.weekday(), Weekday::Sat | Weekday::Sun) {
            return Vec::new();
        }
        let mut rng = StdRng::seed_from_u64(seed);
        let midnight_ms = day
            .and_hms_opt(0, 0, 0)
            .expect("midnight exists")
            .and_utc()
            .timestamp_millis();
        // Arrive between 07:30 and 09:30, work 7 to 9 hours.
        let start_min = rng.random_range(450..570_i64);
        let minutes = rng.random_range(420..540_i64);
        let diligence: f64 = rng.random_range(0.55..0.95);
        let mut batches = Vec::new();
        let mut minute = 0;
        while minute < minutes {
            let batch_start = midnight_ms + (start_min + minute) * 60_000;
            let mut batch = Batch {
                v: 1,
                sent_at_ms: batch_start + BATCH_MINUTES * 60_000,
                activity: Vec::new(),
                app_usage: Vec::new(),
                gps: Vec::new(),
                attendance: Vec::new(),
            };
            if minute == 0 {
                batch.attendance.push(AttendanceEvent {
                    at_ms: batch_start,
                    kind: AttendanceKind::ClockIn,
                });
            }
            for m in 0..BATCH_MINUTES.min(minutes - minute) {
                let at = batch_start + m * 60_000;
                let active = if rng.random_bool(diligence) {
                    rng.random_range(40..=SAMPLE_S)
                } else {
                    rng.random_range(0..20)
                };
                batch.activity.push(ActivitySample {
                    start_ms: at,
                    active_s: active,
                    idle_s: SAMPLE_S - active,
                });
                let (app, host) = APPS[rng.random_range(0..APPS.len())];
                batch.app_usage.push(AppUsage {
                    start_ms: at,
                    duration_s: SAMPLE_S,
                    app: app.to_string(),
                    host: host.map(str::to_string),
                });
            }
            minute += BATCH_MINUTES;
            if minute >= minutes {
                let end = midnight_ms + (start_min + minutes) * 60_000;
                batch.attendance.push(AttendanceEvent {
                    at_ms: end,
                    kind: AttendanceKind::ClockOut,
                });
            }
            batches.push(batch);
        }
        batches
    }

    /// Seals a batch as the agent would (fresh batch id and nonce).
    pub fn seal(&self, master: &MasterSecret, batch: &Batch, rng: &mut impl Rng) -> Vec<u8> {
        let header = EnvelopeHeader {
            key_version: self.key_version,
            batch_id: rng.random(),
            tenant: self.tenant.clone(),
            employee: self.employee.clone(),
            device: self.device.clone(),
        };
        let key = master.device_key(&self.tenant, &self.employee, &self.device, self.key_version);
        let json = serde_json::to_vec(batch).expect("batches serialize");
        envelope::seal_json(&header, &key, &rng.random(), &json)
    }
}

/// What happened to one post.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Accepted,
    Rejected(u16),
}

/// Posts a sealed batch the way agents must: a 409, 429 or 503 is retried
/// after its Retry-After (up to `max_attempts`); any other answer is final.
pub async fn post_batch(
    client: &reqwest::Client,
    url: &str,
    body: Vec<u8>,
    max_attempts: u32,
) -> anyhow::Result<Outcome> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let response = client
            .post(url)
            .header("content-type", "application/vnd.candor.batch")
            .body(body.clone())
            .send()
            .await?;
        let status = response.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(Outcome::Accepted);
        }
        if !matches!(status, 409 | 429 | 503) || attempt >= max_attempts {
            return Ok(Outcome::Rejected(status));
        }
        let wait_s = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(1);
        tokio::time::sleep(Duration::from_secs(wait_s.min(30))).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candor_schemas::{Limits, decode_json};

    #[test]
    fn simulated_workdays_pass_validation() {
        let agent = SimulatedAgent::new(&TenantId::new("acme").unwrap(), 7);
        let day = NaiveDate::from_ymd_opt(2026, 11, 18).unwrap(); // a Wednesday
        let batches = agent.workday(day, 1);
        assert!(batches.len() > 80);
        let end_of_day = day
            .succ_opt()
            .unwrap()
            .and_hms_opt(0, 0, 0)
            .unwrap()
            .and_utc()
            .timestamp_millis();
        for b in &batches {
            let json = serde_json::to_vec(b).unwrap();
            decode_json(&json, &Limits::default(), end_of_day).unwrap();
        }
        assert!(
            agent
                .workday(NaiveDate::from_ymd_opt(2026, 11, 21).unwrap(), 1)
                .is_empty()
        );
    }
}
