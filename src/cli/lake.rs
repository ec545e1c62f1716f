//! The operator's commands on the lake: KPIs read straight from it,
//! retention and erasure, compaction. They read the same `lake.url` and
//! `control.url` as the nodes (`--lake` and `--control` over them).

use anyhow::{Context, Result};
use candor::config::{Config, Role};
use candor::node::{self, maintenance};
use candor_control::AuditLog;
use candor_lake::Lakes;
use candor_query::TenantLake;
use candor_schemas::{EmployeeId, TenantId};
use chrono::NaiveDate;
use clap::{Args, Subcommand};

use super::{ControlFlag, LakeFlag, SettingsArgs, flag, print_json};

/// The configuration of a lake command, with its flags applied.
fn load(s: &SettingsArgs, control: ControlFlag, lake: LakeFlag) -> Result<Config> {
    s.load(
        Role::Operator,
        [
            flag("control.url", control.control),
            flag("lake.url", lake.lake),
        ]
        .into_iter()
        .flatten()
        .collect(),
    )
}

#[derive(Subcommand)]
pub enum KpiCommand {
    /// Activity % (active over tracked time) per employee per day.
    Activity(ActivityArgs),
}

#[derive(Args)]
pub struct ActivityArgs {
    #[command(flatten)]
    lake: LakeFlag,
    #[arg(long)]
    tenant: TenantId,
    /// The tenant's IANA time zone; days are counted in it.
    #[arg(long, default_value = "UTC")]
    tz: String,
    /// First day, YYYY-MM-DD.
    #[arg(long)]
    from: NaiveDate,
    /// Last day, YYYY-MM-DD (inclusive).
    #[arg(long)]
    to: NaiveDate,
}

#[derive(Args)]
pub struct CompactArgs {
    /// Where tenants are defined; a tenant with a `lake_url` is compacted
    /// in its own lake.
    #[command(flatten)]
    control: ControlFlag,
    #[command(flatten)]
    lake: LakeFlag,
}

#[derive(Subcommand)]
pub enum RetentionCommand {
    /// Apply retention once, now, to every tenant (tenants' own lakes too).
    Run {
        #[command(flatten)]
        control: ControlFlag,
        #[command(flatten)]
        lake: LakeFlag,
    },
    /// Erase one employee from the lake: every row of their pseudonym is
    /// removed (objects are rewritten without them), with audit entries
    /// before and after. Revoke their devices and take them out of the
    /// directory first.
    Erase {
        #[command(flatten)]
        control: ControlFlag,
        #[command(flatten)]
        lake: LakeFlag,
        #[arg(long)]
        tenant: TenantId,
        #[arg(long)]
        employee: EmployeeId,
    },
}

#[derive(Subcommand)]
pub enum LakeCommand {
    /// Convert a lake written by the release before Delta tables into
    /// Delta tables, in place (tenants' own lakes too). Stop that release's
    /// processors with `candor processor --drain` first, then pass
    /// --drained; see LAKE.md.
    Convert {
        #[command(flatten)]
        control: ControlFlag,
        #[command(flatten)]
        lake: LakeFlag,
        /// The previous release's processors were stopped after a drain:
        /// every object its flush intents name was committed.
        #[arg(long)]
        drained: bool,
    },
}

#[derive(Subcommand)]
pub enum ExtractCommand {
    /// Compute every released day of an AI extract's range again, from the
    /// table versions its release recorded, and compare it with the
    /// release ledger: an extract is made of those days only, so one whose
    /// days all compare `same` is what the lake held. Exits non-zero when
    /// a day differs or cannot be read any more.
    Verify {
        #[command(flatten)]
        control: ControlFlag,
        #[command(flatten)]
        lake: LakeFlag,
        #[arg(long)]
        tenant: TenantId,
        /// First day, YYYY-MM-DD (the tenant's zone).
        #[arg(long)]
        from: NaiveDate,
        /// Last day, YYYY-MM-DD (inclusive).
        #[arg(long)]
        to: NaiveDate,
    },
}

pub async fn extract(s: &SettingsArgs, cmd: ExtractCommand) -> Result<()> {
    use candor_query::extract::Verdict;
    let ExtractCommand::Verify {
        control,
        lake,
        tenant,
        from,
        to,
    } = cmd;
    let config = load(s, control, lake)?;
    let master = node::master_secret(&config)?;
    let docs = node::control_store(&config)?.documents;
    let doc = docs
        .get::<candor_control::Tenant>(candor_control::Kind::Tenant, tenant.as_str())
        .await?
        .with_context(|| format!("no tenant {tenant}"))?
        .doc;
    let lake =
        candor_query::lake::QueryLake::new(candor_query::lake::LakeConfig::new(config.lake_url()))?;
    let noise = master.extract_noise_key(&tenant);
    let checks = candor_query::extract::verify(&lake, &doc, from, to, noise.as_bytes()).await?;
    print_json(&checks)?;
    let bad = checks
        .iter()
        .filter(|c| matches!(c.verdict, Verdict::Differs(_) | Verdict::Unreadable(_)))
        .count();
    if bad > 0 {
        anyhow::bail!(
            "{bad} of {} released days do not compute again to what was released",
            checks.len()
        );
    }
    Ok(())
}

pub async fn lake(s: &SettingsArgs, cmd: LakeCommand) -> Result<()> {
    let LakeCommand::Convert {
        control,
        lake,
        drained,
    } = cmd;
    let config = load(s, control, lake)?;
    let docs = node::control_store(&config)?.documents;
    let done =
        candor_lake::jobs::convert::convert_all(&Lakes::open(&config.lake_url())?, &docs, drained)
            .await?;
    print_json(&done)
}

pub async fn kpi(s: &SettingsArgs, cmd: KpiCommand) -> Result<()> {
    let KpiCommand::Activity(args) = cmd;
    let config = load(s, ControlFlag::default(), args.lake)?;
    let lake = TenantLake::open(&config.lake_url(), &args.tenant).await?;
    let rows = lake
        .activity_by_subject_day(&args.tz, args.from, args.to)
        .await?;
    println!(
        "{:<18} {:<10} {:>9} {:>9} {:>10}",
        "subject", "day", "tracked h", "active h", "activity %"
    );
    for r in &rows {
        println!(
            "{:<18} {:<10} {:>9.2} {:>9.2} {:>10.1}",
            format!("{}…", &r.subject[..16]),
            r.day,
            r.tracked_s as f64 / 3600.0,
            r.active_s as f64 / 3600.0,
            r.activity_pct
        );
    }
    if rows.is_empty() {
        println!(
            "(no activity in {}..={} for tenant {})",
            args.from, args.to, args.tenant
        );
    }
    Ok(())
}

pub async fn compact(s: &SettingsArgs, args: CompactArgs) -> Result<()> {
    let config = load(s, args.control, args.lake)?;
    let done = maintenance::compact_once(&Lakes::open(&config.lake_url())?, &config).await?;
    println!(
        "compaction: {} objects merged into {} in {} partitions; {} objects vacuumed",
        done.objects_merged, done.objects_written, done.partitions, done.objects_vacuumed
    );
    maintenance::command_outcome(done.lakes_failed)
}

pub async fn retention(s: &SettingsArgs, cmd: RetentionCommand) -> Result<()> {
    match cmd {
        RetentionCommand::Run { control, lake } => {
            let config = load(s, control, lake)?;
            let done = maintenance::retention_once(
                &Lakes::open(&config.lake_url())?,
                &config,
                &node::master_secret(&config)?,
            )
            .await?;
            println!("retention: {} partitions deleted", done.deleted.len());
            maintenance::command_outcome(done.skipped)
        }
        RetentionCommand::Erase {
            control,
            lake,
            tenant,
            employee,
        } => {
            let config = load(s, control, lake)?;
            let master = node::master_secret(&config)?;
            let c = node::control_store(&config)?;
            // Without keys (destroyed), the tenant's lake is already
            // unreadable and is purged whole; there is no subject to find.
            let keys = candor_control::keyring::load(&c.documents, &master, &tenant)
                .await?
                .with_context(|| format!("tenant {tenant} has no keys"))?;
            let request = candor_lake::jobs::erasure::ErasureRequest {
                subject: keys.pseudonym().subject(&employee),
                tenant,
                actor: "operator".into(),
                source: "cli".into(),
            };
            let audit = AuditLog::new(c.store, &c.prefix, master.clone());
            let now_ms = chrono::Utc::now().timestamp_millis();
            // Every lake in use: the tenant's own, and the deployment's.
            let erased = candor_lake::jobs::erasure::erase_subject(
                &Lakes::open(&config.lake_url())?,
                &c.documents,
                &audit,
                &request,
                now_ms,
            )
            .await?;
            print_json(&erased)
        }
    }
}
