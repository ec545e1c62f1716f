//! Delivering an extract to the tenant's AI receiver: an HTTPS POST signed
//! with HMAC-SHA256 under the tenant's extract signing key (derived from the
//! master secret; the receiver is given it out of band), retried with
//! backoff while the receiver is unreachable or answers 5xx or 429.
//!
//! Headers: `Candor-Extract-Id` (the content's SHA-256), `Candor-Timestamp`
//! (Unix seconds) and `Candor-Signature: v1=<hex HMAC(key, "<timestamp>.<body>")>`.
//! A receiver checks the signature and refuses stale timestamps.

use std::time::Duration;

use candor_schemas::keys::hmac_sha256;

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub first_backoff: Duration,
    pub max_backoff: Duration,
    pub timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 5,
            first_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
            timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Delivered {
    pub status: u16,
    pub attempts: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("the receiver refused the extract with {status} after {attempts} attempt(s)")]
    Refused { status: u16, attempts: u32 },
    #[error("the receiver could not be reached in {attempts} attempt(s): {last}")]
    Unreachable { attempts: u32, last: String },
}

/// The signature header's value for `body` sent at `timestamp`.
pub fn signature(key: &[u8; 32], timestamp: i64, body: &[u8]) -> String {
    let mut message = format!("{timestamp}.").into_bytes();
    message.extend_from_slice(body);
    format!("v1={}", hex::encode(hmac_sha256(key, &message)))
}

pub async fn post_signed(
    http: &reqwest::Client,
    url: &str,
    key: &[u8; 32],
    extract_id: &str,
    body: &[u8],
    policy: &RetryPolicy,
) -> Result<Delivered, DeliveryError> {
    let mut backoff = policy.first_backoff;
    let mut last = String::new();
    for attempt in 1..=policy.attempts {
        let timestamp = chrono::Utc::now().timestamp();
        let sent = http
            .post(url)
            .timeout(policy.timeout)
            .header("content-type", "application/json")
            .header("candor-extract-id", extract_id)
            .header("candor-timestamp", timestamp.to_string())
            .header("candor-signature", signature(key, timestamp, body))
            .body(body.to_vec())
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => {
                return Ok(Delivered {
                    status: r.status().as_u16(),
                    attempts: attempt,
                });
            }
            Ok(r) if r.status().is_server_error() || r.status().as_u16() == 429 => {
                last = format!("status {}", r.status());
            }
            Ok(r) => {
                return Err(DeliveryError::Refused {
                    status: r.status().as_u16(),
                    attempts: attempt,
                });
            }
            Err(e) => last = e.to_string(),
        }
        if attempt < policy.attempts {
            tracing::warn!(url, attempt, error = %last, "extract delivery failed; retrying");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(policy.max_backoff);
        }
    }
    Err(DeliveryError::Unreachable {
        attempts: policy.attempts,
        last,
    })
}
