//! Why a batch was refused: the machine-readable reason codes of the wire
//! contract and the HTTP status each one is answered with (WIRE.md,
//! "Answers"). Ingest maps these to responses in one place.

use std::fmt;

/// Every reason a batch can be refused before it reaches the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// The envelope is shorter than its header and tag, has a bad magic, or
    /// an id in its header breaks the id rules.
    MalformedEnvelope,
    /// The envelope's format version is not one this node speaks.
    UnsupportedVersion,
    /// The envelope names a compression other than zstd, or key version 0.
    UnsupportedEncoding,
    /// The tag did not verify: wrong key, altered header or ciphertext.
    BadTag,
    /// The request body is larger than the configured cap.
    BodyTooLarge,
    /// The decompressed batch would exceed the configured cap.
    DecompressedTooLarge,
    /// The opened payload is not a valid zstd frame.
    BadCompression,
    /// The decompressed payload is not valid JSON of the batch model.
    InvalidJson,
    /// The batch names a field the model does not have (including any field
    /// for content Candor never collects: keystrokes, screenshots, ...).
    UnknownField,
    /// An event value is out of its range or breaks a rule.
    InvalidEvent,
    /// An event lies more than the allowed skew in the future.
    TimestampInFuture,
    /// An event is older than the oldest data this tenant keeps.
    TimestampTooOld,
    /// The batch holds no event.
    EmptyBatch,
    /// The batch holds more events than allowed.
    TooManyEvents,
}

impl RejectReason {
    pub const ALL: [RejectReason; 14] = [
        Self::MalformedEnvelope,
        Self::UnsupportedVersion,
        Self::UnsupportedEncoding,
        Self::BadTag,
        Self::BodyTooLarge,
        Self::DecompressedTooLarge,
        Self::BadCompression,
        Self::InvalidJson,
        Self::UnknownField,
        Self::InvalidEvent,
        Self::TimestampInFuture,
        Self::TimestampTooOld,
        Self::EmptyBatch,
        Self::TooManyEvents,
    ];

    /// The stable, machine-readable code sent in the answer's `reason` field.
    pub fn code(self) -> &'static str {
        match self {
            Self::MalformedEnvelope => "malformed_envelope",
            Self::UnsupportedVersion => "unsupported_version",
            Self::UnsupportedEncoding => "unsupported_encoding",
            Self::BadTag => "bad_tag",
            Self::BodyTooLarge => "body_too_large",
            Self::DecompressedTooLarge => "decompressed_too_large",
            Self::BadCompression => "bad_compression",
            Self::InvalidJson => "invalid_json",
            Self::UnknownField => "unknown_field",
            Self::InvalidEvent => "invalid_event",
            Self::TimestampInFuture => "timestamp_in_future",
            Self::TimestampTooOld => "timestamp_too_old",
            Self::EmptyBatch => "empty_batch",
            Self::TooManyEvents => "too_many_events",
        }
    }

    /// The HTTP status the reason is answered with.
    pub fn http_status(self) -> u16 {
        match self {
            Self::BadTag => 401,
            Self::BodyTooLarge | Self::DecompressedTooLarge => 413,
            _ => 400,
        }
    }

    pub fn from_code(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.code() == code)
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// A refusal: the reason code plus a human-readable detail for the agent's
/// logs. The detail never echoes payload content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {detail}")]
pub struct Rejection {
    pub reason: RejectReason,
    pub detail: String,
    /// Events the refused batch held, when it got far enough to count them.
    pub events: Option<usize>,
}

impl Rejection {
    pub fn new(reason: RejectReason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
            events: None,
        }
    }

    pub fn with_events(self, events: usize) -> Self {
        Self {
            events: Some(events),
            ..self
        }
    }
}
