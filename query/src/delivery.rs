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
    /// Hosts a receiver may be on although they resolve to a loopback,
    /// private or link-local address (an operator's own receiver inside
    /// its network). Every other such address is refused, so a tenant's
    /// admin cannot make the node post to its own or its neighbours' ports.
    pub allowed_internal_hosts: Vec<String>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 5,
            first_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
            timeout: Duration::from_secs(30),
            allowed_internal_hosts: Vec::new(),
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
    #[error("the receiver's address is not allowed: {0}")]
    Forbidden(String),
}

/// Refuses a receiver URL that is not http(s), or whose host resolves to
/// an address inside the node's networks (loopback, private, link-local,
/// shared, unspecified or multicast ranges), unless the host is allowed
/// by name. The name is resolved at each attempt.
pub async fn check_receiver(url: &str, allowed: &[String]) -> Result<(), DeliveryError> {
    let forbidden = |why: &str| DeliveryError::Forbidden(why.to_string());
    let parsed = url::Url::parse(url).map_err(|_| forbidden("not a URL"))?;
    if !matches!(parsed.scheme(), "https" | "http") {
        return Err(forbidden("only http and https receivers"));
    }
    let host = parsed.host_str().ok_or_else(|| forbidden("no host"))?;
    if allowed.iter().any(|a| a.eq_ignore_ascii_case(host)) {
        return Ok(());
    }
    let port = parsed.port_or_known_default().unwrap_or(443);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let addresses = tokio::net::lookup_host((host, port))
        .await
        .map_err(|_| forbidden("the host does not resolve"))?;
    for address in addresses {
        if is_internal(address.ip()) {
            return Err(forbidden("the host resolves to an internal address"));
        }
    }
    Ok(())
}

fn is_internal(ip: std::net::IpAddr) -> bool {
    use std::net::IpAddr;
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_internal(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
        }
    }
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
        check_receiver(url, &policy.allowed_internal_hosts).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn receivers_inside_the_node_network_are_refused_in_every_spelling() {
        for url in [
            "http://localhost:9/hook",
            "http://127.1:9/hook",
            "http://[::1]:9/hook",
            "http://2130706433:9/hook",
            "http://0x7f000001:9/hook",
            "http://10.0.0.1/hook",
            "http://169.254.169.254/latest",
            "http://[::ffff:127.0.0.1]/hook",
            "http://0.0.0.0/hook",
            "file:///etc/passwd",
        ] {
            assert!(
                matches!(
                    check_receiver(url, &[]).await,
                    Err(DeliveryError::Forbidden(_))
                ),
                "{url}"
            );
        }
        check_receiver("http://127.0.0.1:9/hook", &["127.0.0.1".into()])
            .await
            .expect("allowed by name");
        check_receiver("https://93.184.215.14/hook", &[])
            .await
            .expect("a public address");
    }
}
