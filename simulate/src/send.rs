//! Posting sealed batches the way WIRE.md tells agents to.

use std::time::Duration;

/// What happened to one post.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// 202: durable in the log (or a replay of a batch that is), after
    /// `waited` answers 409, 429 or 503 that were waited out.
    Accepted { waited: u32 },
    /// A final refusal, or a retryable one after the last attempt, with
    /// the answer's `reason` (or the transport error).
    Rejected { status: u16, reason: String },
}

/// Posts a sealed batch the way agents must: a 409, 429 or 503 is retried
/// after its `Retry-After` (at most 30 s) on the same node, and a
/// connection that fails is retried at once on the next of `urls` (an
/// agent configured with several ingest addresses fails over), after a
/// second once all have failed, up to
/// `max_attempts` in all, always with the same bytes (same batch id, so
/// ingest stores it once); any other answer is final.
pub async fn post_batch(
    client: &reqwest::Client,
    urls: &[String],
    body: Vec<u8>,
    max_attempts: u32,
) -> anyhow::Result<Outcome> {
    anyhow::ensure!(!urls.is_empty(), "no ingest address to post to");
    let mut attempt = 0;
    let mut node = 0;
    let mut waited = 0;
    loop {
        attempt += 1;
        let sent = client
            .post(&urls[node % urls.len()])
            .header("content-type", "application/vnd.candor.batch")
            .body(body.clone())
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            // A connection that failed (reset, refused): what agents on
            // real networks meet; the last error is returned if it lasts.
            Err(_) if attempt < max_attempts => {
                // The next node at once; a second's pause only once every
                // node has failed in a row.
                node += 1;
                if node % urls.len() == 0 {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let status = response.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(Outcome::Accepted { waited });
        }
        if !matches!(status, 409 | 429 | 503) || attempt >= max_attempts {
            let reason = response
                .json::<serde_json::Value>()
                .await
                .ok()
                .and_then(|v| v["reason"].as_str().map(str::to_string))
                .unwrap_or_else(|| format!("http_{status}"));
            return Ok(Outcome::Rejected { status, reason });
        }
        let wait_s = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(1);
        waited += 1;
        tokio::time::sleep(Duration::from_secs(wait_s.clamp(1, 30))).await;
    }
}
