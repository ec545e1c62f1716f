//! XChaCha20-Poly1305 (IETF), the one AEAD Candor uses: agent envelopes are
//! sealed with it under device keys, log records under tenant at-rest keys.
//! It is the construction libsodium exposes as
//! `crypto_aead_xchacha20poly1305_ietf`, so every agent platform has it.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};

pub const KEY_LEN: usize = 32;
pub const NONCE_LEN: usize = 24;
pub const TAG_LEN: usize = 16;

/// The tag did not verify: wrong key, altered associated data or ciphertext.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("authentication failed")]
pub struct AuthenticationFailed;

/// Returns `ciphertext || tag`.
pub fn seal(key: &[u8; KEY_LEN], nonce: &[u8; NONCE_LEN], aad: &[u8], msg: &[u8]) -> Vec<u8> {
    let cipher = XChaCha20Poly1305::new(&Key::from(*key));
    cipher
        .encrypt(&XNonce::from(*nonce), Payload { msg, aad })
        // Only fails for messages beyond 256 GiB, which no caller can build.
        .expect("message within XChaCha20-Poly1305 limits")
}

/// Opens `ciphertext || tag`.
pub fn open(
    key: &[u8; KEY_LEN],
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    sealed: &[u8],
) -> Result<Vec<u8>, AuthenticationFailed> {
    let cipher = XChaCha20Poly1305::new(&Key::from(*key));
    cipher
        .decrypt(&XNonce::from(*nonce), Payload { msg: sealed, aad })
        .map_err(|_| AuthenticationFailed)
}
