//! What Candor records about a person, and what it never records, in plain
//! words: the list the portal shows each employee. It is held to the batch
//! model by a test: every field an agent can send is described here, and
//! nothing here describes a field the model does not have.

use serde::Serialize;

/// One field of the batch model, as the person it is about would read it.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Recorded {
    /// The field's place in the batch (`activity[].active_s`).
    pub field: &'static str,
    pub meaning: &'static str,
}

/// Every field of [`crate::Batch`], described.
pub const RECORDED: &[Recorded] = &[
    Recorded {
        field: "v",
        meaning: "the version of the agent's data format",
    },
    Recorded {
        field: "sent_at_ms",
        meaning: "when the agent sent a batch",
    },
    Recorded {
        field: "activity[].start_ms",
        meaning: "when a stretch of tracked time began",
    },
    Recorded {
        field: "activity[].active_s",
        meaning: "seconds with keyboard or mouse activity in it (that there was input, never what)",
    },
    Recorded {
        field: "activity[].idle_s",
        meaning: "seconds without input in it",
    },
    Recorded {
        field: "app_usage[].start_ms",
        meaning: "when an application came to the foreground",
    },
    Recorded {
        field: "app_usage[].duration_s",
        meaning: "how long it stayed there",
    },
    Recorded {
        field: "app_usage[].app",
        meaning: "the application's name",
    },
    Recorded {
        field: "app_usage[].host",
        meaning: "for a browser, the website's host name only (never the page or its address)",
    },
    Recorded {
        field: "gps[].at_ms",
        meaning: "field staff only: when a position was taken",
    },
    Recorded {
        field: "gps[].lat",
        meaning: "its latitude; kept coarsened to about 1 km, after distances are computed",
    },
    Recorded {
        field: "gps[].lon",
        meaning: "its longitude; kept coarsened likewise",
    },
    Recorded {
        field: "gps[].accuracy_m",
        meaning: "how precise the device said the position was",
    },
    Recorded {
        field: "attendance[].at_ms",
        meaning: "when you clocked in or out or took a break",
    },
    Recorded {
        field: "attendance[].kind",
        meaning: "which of those it was",
    },
];

/// What no agent can send: the batch model has no field for any of it, and
/// a batch with an unknown field is refused whole.
pub const NEVER_RECORDED: &[&str] = &[
    "keystrokes or anything you type",
    "clipboard contents",
    "screenshots or screen recordings",
    "webcam or microphone",
    "the content of messages, e-mails, chats or documents",
    "window titles",
    "web addresses beyond the host name",
    "files",
    "your position when you are not field staff",
];

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::Batch;
    use crate::batch::{ActivitySample, AppUsage, AttendanceEvent, AttendanceKind, GpsPoint};

    /// The field paths of `value`, arrays as `[]`.
    fn paths(prefix: &str, value: &serde_json::Value, out: &mut BTreeSet<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, v) in map {
                    let path = if prefix.is_empty() {
                        key.clone()
                    } else {
                        format!("{prefix}.{key}")
                    };
                    paths(&path, v, out);
                }
            }
            serde_json::Value::Array(items) => {
                for item in items {
                    paths(&format!("{prefix}[]"), item, out);
                }
            }
            _ => {
                out.insert(prefix.to_string());
            }
        }
    }

    #[test]
    fn every_field_of_the_batch_model_is_described_and_nothing_else() {
        // Every optional field set, so every field is serialized.
        let batch = Batch {
            v: 1,
            sent_at_ms: 1,
            activity: vec![ActivitySample {
                start_ms: 1,
                active_s: 1,
                idle_s: 1,
            }],
            app_usage: vec![AppUsage {
                start_ms: 1,
                duration_s: 1,
                app: "a".into(),
                host: Some("h".into()),
            }],
            gps: vec![GpsPoint {
                at_ms: 1,
                lat: 1.0,
                lon: 1.0,
                accuracy_m: 1.0,
            }],
            attendance: vec![AttendanceEvent {
                at_ms: 1,
                kind: AttendanceKind::ClockIn,
            }],
        };
        let mut sent = BTreeSet::new();
        paths("", &serde_json::to_value(&batch).unwrap(), &mut sent);
        let described: BTreeSet<String> = RECORDED.iter().map(|r| r.field.to_string()).collect();
        assert_eq!(sent, described);
    }
}
