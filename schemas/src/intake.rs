//! The whole path from request body to a validated batch, shared by ingest
//! (which answers agents) and the test vectors (which pin it to WIRE.md).

use std::io::Read;

use crate::batch::Limits;
use crate::columns::{DecodedBatch, decode_json};
use crate::envelope::{self, EnvelopeHeader};
use crate::keys::MasterSecret;
use crate::reason::{RejectReason, Rejection};

/// Largest zstd window accepted, as a power of two (16 MiB). A frame that
/// asks for more is refused before the decoder allocates it.
pub const ZSTD_WINDOW_LOG_MAX: u32 = 24;

/// A batch that opened, decompressed and validated, as Arrow columns.
#[derive(Debug, Clone)]
pub struct OpenedBatch {
    pub header: EnvelopeHeader,
    pub batch: DecodedBatch,
    pub received_at_ms: i64,
}

/// An envelope whose tag verified: its header is authentic, its payload not
/// yet decompressed.
#[derive(Debug)]
pub struct AuthenticBatch {
    pub header: EnvelopeHeader,
    /// The zstd frame of the batch JSON.
    pub frame: Vec<u8>,
}

/// Opens and validates one envelope: [`authenticate`], then [`decode`].
/// Ingest runs the two steps apart, so that tenant checks, quotas and the
/// replay window sit between them and cost no decompression.
pub fn open_batch(
    body: &[u8],
    master: &MasterSecret,
    limits: &Limits,
    received_at_ms: i64,
) -> Result<OpenedBatch, Rejection> {
    let authentic = authenticate(body, master, limits)?;
    let batch = decode(&authentic.frame, limits, received_at_ms)?;
    Ok(OpenedBatch {
        header: authentic.header,
        batch,
        received_at_ms,
    })
}

/// Checks the envelope's size and tag.
///
/// Order matters: the size is checked before anything allocates, and the
/// tag is verified before anything is decompressed, so an unauthenticated
/// sender cannot make the node inflate anything.
pub fn authenticate(
    body: &[u8],
    master: &MasterSecret,
    limits: &Limits,
) -> Result<AuthenticBatch, Rejection> {
    if body.len() > limits.max_body_bytes {
        return Err(Rejection::new(
            RejectReason::BodyTooLarge,
            format!(
                "body is {} bytes; at most {}",
                body.len(),
                limits.max_body_bytes
            ),
        ));
    }
    let parsed = envelope::parse(body)?;
    let h = &parsed.header;
    let key = master.device_key(&h.tenant, &h.employee, &h.device, h.key_version);
    let frame = parsed.open(&key)?;
    Ok(AuthenticBatch {
        header: parsed.header,
        frame,
    })
}

/// Inflates an authentic frame (stopping one byte past the cap, so a
/// decompression bomb costs at most the cap), then parses and validates it
/// into Arrow columns. `limits.max_age_ms` is the oldest event accepted:
/// ingest sets it to the tenant's retention.
pub fn decode(
    frame: &[u8],
    limits: &Limits,
    received_at_ms: i64,
) -> Result<DecodedBatch, Rejection> {
    let json = decompress_bounded(frame, limits.max_decompressed_bytes)?;
    decode_json(&json, limits, received_at_ms)
}

/// Inflates a zstd frame, refusing output beyond `max` bytes.
pub fn decompress_bounded(frame: &[u8], max: usize) -> Result<Vec<u8>, Rejection> {
    let bad = |e: std::io::Error| Rejection::new(RejectReason::BadCompression, e.to_string());
    let mut decoder = zstd::stream::read::Decoder::with_buffer(frame).map_err(bad)?;
    decoder.window_log_max(ZSTD_WINDOW_LOG_MAX).map_err(bad)?;
    let mut out = Vec::new();
    decoder
        .take(max as u64 + 1)
        .read_to_end(&mut out)
        .map_err(bad)?;
    if out.len() > max {
        return Err(Rejection::new(
            RejectReason::DecompressedTooLarge,
            format!("batch inflates past {max} bytes"),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bomb_costs_at_most_the_cap() {
        let zeros = vec![0u8; 64 * 1024 * 1024];
        let frame = zstd::encode_all(&zeros[..], 19).unwrap();
        assert!(frame.len() < 64 * 1024, "a bomb is small on the wire");
        let err = decompress_bounded(&frame, 1024 * 1024).unwrap_err();
        assert_eq!(err.reason, RejectReason::DecompressedTooLarge);
    }

    #[test]
    fn garbage_is_bad_compression() {
        let err = decompress_bounded(b"definitely not zstd", 1024).unwrap_err();
        assert_eq!(err.reason, RejectReason::BadCompression);
    }
}
