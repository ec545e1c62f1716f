//! `candor-agents`: simulated agents that post sealed workdays to an ingest
//! node. Used by `scripts/demo` and by benchmarks.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result, bail};
use candor_benchmarks::agents::{Outcome, SimulatedAgent, post_batch};
use candor_schemas::TenantId;
use candor_schemas::keys::MasterSecret;
use chrono::{Days, NaiveDate, Utc};
use clap::Parser;
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::sync::Semaphore;

#[derive(Parser)]
#[command(about = "Simulated workforce agents posting sealed batches to a Candor ingest node")]
struct Args {
    /// Base URL of the ingest node.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    ingest: String,
    #[arg(long, default_value = "demo")]
    tenant: TenantId,
    /// Number of employees (one device each).
    #[arg(long, default_value_t = 20)]
    employees: usize,
    /// Workdays simulated: the N days before today (UTC), weekends skipped.
    #[arg(long, default_value_t = 5)]
    days: u64,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Seed for reproducible runs.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let master = MasterSecret::from_hex(
        &std::env::var("CANDOR_MASTER_SECRET").context("CANDOR_MASTER_SECRET (hex) must be set")?,
    )?;
    let today = Utc::now().date_naive();
    let days: Vec<NaiveDate> = (1..=args.days)
        .rev()
        .map(|d| today - Days::new(d))
        .collect();
    let url = format!("{}{}", args.ingest.trim_end_matches('/'), "/v1/batches");
    let client = reqwest::Client::new();
    let gate = Arc::new(Semaphore::new(args.concurrency));
    let (accepted, rejected) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut events_sent = 0u64;
    let mut tasks = tokio::task::JoinSet::new();
    let mut rng = StdRng::seed_from_u64(args.seed);
    for (i, day) in days.iter().enumerate() {
        for e in 0..args.employees {
            let agent = SimulatedAgent::new(&args.tenant, e);
            let seed = args.seed ^ ((e as u64) << 20) ^ i as u64;
            for batch in agent.workday(*day, seed) {
                events_sent += batch.event_count() as u64;
                let body = agent.seal(&master, &batch, &mut rng);
                let permit = gate.clone().acquire_owned().await?;
                let (client, url) = (client.clone(), url.clone());
                let (accepted, rejected) = (accepted.clone(), rejected.clone());
                tasks.spawn(async move {
                    let outcome = post_batch(&client, &url, body, 10).await;
                    drop(permit);
                    match outcome {
                        Ok(Outcome::Accepted) => accepted.fetch_add(1, Ordering::Relaxed),
                        Ok(Outcome::Rejected(_)) | Err(_) => {
                            rejected.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                });
            }
        }
        eprintln!(
            "agents: day {day} queued ({} accepted so far)",
            accepted.load(Ordering::Relaxed)
        );
    }
    while tasks.join_next().await.is_some() {}
    let (ok, bad) = (
        accepted.load(Ordering::Relaxed),
        rejected.load(Ordering::Relaxed),
    );
    println!("agents: {ok} batches accepted, {bad} refused, {events_sent} events sent");
    if bad > 0 {
        bail!("{bad} batches were refused");
    }
    Ok(())
}
