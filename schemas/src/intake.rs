//! The whole path from request body to a validated batch, shared by ingest
//! (which answers agents) and the test vectors (which pin it to WIRE.md).

use std::cell::RefCell;
use std::io::Read;

use zstd::zstd_safe::{DCtx, DParameter, ResetDirective};

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

/// What a batch's zstd frame declares it inflates to; `None` when it does
/// not say, or the bytes are not exactly one frame. Decompression never
/// trusts it: the cap of [`decompress_bounded`] holds whatever it says.
pub fn declared_size(frame: &[u8]) -> Option<u64> {
    let one_frame = zstd::zstd_safe::find_frame_compressed_size(frame).ok() == Some(frame.len());
    one_frame
        .then(|| {
            zstd::zstd_safe::get_frame_content_size(frame)
                .ok()
                .flatten()
        })
        .flatten()
}

thread_local! {
    /// Each thread's zstd decompression context, reused from batch to
    /// batch: creating one (and its buffers) per batch costs more than
    /// inflating a 5-minute batch.
    static DECOMPRESSOR: RefCell<Option<DCtx<'static>>> = const { RefCell::new(None) };
}

/// Inflates a zstd frame, refusing output beyond `max` bytes.
pub fn decompress_bounded(frame: &[u8], max: usize) -> Result<Vec<u8>, Rejection> {
    let bad = |e: std::io::Error| Rejection::new(RejectReason::BadCompression, e.to_string());
    let zstd_error = |code| bad(std::io::Error::other(zstd::zstd_safe::get_error_name(code)));
    // The declared content size sizes the output once, up to the cap; the
    // cap still holds whatever the frame declares.
    let declared = zstd::zstd_safe::get_frame_content_size(frame)
        .ok()
        .flatten()
        .map_or(0, |size| size.min(max as u64 + 1) as usize);
    let mut out = Vec::with_capacity(declared);
    DECOMPRESSOR.with_borrow_mut(|context| {
        let context = context.get_or_insert_with(DCtx::create);
        // The previous frame may have stopped midway (cut, refused, over
        // the cap): end its session, which keeps the parameters, and set
        // the window cap again anyway, so no earlier use can have changed it.
        context
            .reset(ResetDirective::SessionOnly)
            .map_err(zstd_error)?;
        context
            .set_parameter(DParameter::WindowLogMax(ZSTD_WINDOW_LOG_MAX))
            .map_err(zstd_error)?;
        zstd::stream::read::Decoder::with_context(frame, context)
            .take(max as u64 + 1)
            .read_to_end(&mut out)
            .map_err(bad)
    })?;
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

    /// One context serves every batch of a thread: a cut frame, a bomb or
    /// a frame asking for a window past the cap leaves nothing behind for
    /// the next batch, and the cap holds every time.
    #[test]
    fn a_reused_context_forgets_each_frame_and_keeps_its_caps() {
        let text = b"a batch of telemetry ".repeat(100);
        // As agents compress: one shot, the content size declared.
        let good = zstd::bulk::compress(&text, 3).unwrap();
        let wide = {
            let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
            encoder.window_log(ZSTD_WINDOW_LOG_MAX + 1).unwrap();
            std::io::Write::write_all(&mut encoder, &text).unwrap();
            encoder.finish().unwrap()
        };
        let bomb = zstd::encode_all(&vec![0u8; 4 * 1024 * 1024][..], 19).unwrap();
        for _ in 0..2 {
            assert_eq!(decompress_bounded(&good, 1 << 20).unwrap(), text);
            let cut = decompress_bounded(&good[..good.len() / 2], 1 << 20).unwrap_err();
            assert_eq!(cut.reason, RejectReason::BadCompression);
            let too_wide = decompress_bounded(&wide, 1 << 20).unwrap_err();
            assert_eq!(
                too_wide.reason,
                RejectReason::BadCompression,
                "{}",
                too_wide.detail
            );
            let inflated = decompress_bounded(&bomb, 1 << 20).unwrap_err();
            assert_eq!(
                inflated.reason,
                RejectReason::DecompressedTooLarge,
                "{}",
                inflated.detail
            );
        }
        assert_eq!(declared_size(&good), Some(text.len() as u64));
        assert_eq!(declared_size(&wide), None, "a streamed frame does not say");
        // Two frames back to back are one batch, as before, of no one size.
        let twice = [good.clone(), good].concat();
        assert_eq!(declared_size(&twice), None);
        assert_eq!(
            decompress_bounded(&twice, 1 << 20).unwrap(),
            [&text[..], &text[..]].concat()
        );
    }

    #[test]
    fn garbage_is_bad_compression() {
        let err = decompress_bounded(b"definitely not zstd", 1024).unwrap_err();
        assert_eq!(err.reason, RejectReason::BadCompression);
    }
}
