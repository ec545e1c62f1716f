//! The node commands (`standalone`, `ingest`, `processor`, `query`) and
//! `config`. Each loads its role's configuration and starts the node
//! through [`candor::node`], as tests and benchmarks do.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Result;
use candor::config::{self, Config, Role};
use candor::node::{self, Node};
use clap::{Args, Subcommand};

use super::{LakeFlag, SettingsArgs, flag};

#[derive(Args)]
pub struct StandaloneArgs {
    /// Data directory (`data_dir`): master secret, embedded log, lake and
    /// control plane.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Where agents post (`ingest.listen`).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Where the query API listens (`query.listen`).
    #[arg(long)]
    query_listen: Option<SocketAddr>,
}

#[derive(Args)]
pub struct ListenArgs {
    /// Address to listen on (`ingest.listen`).
    #[arg(long)]
    listen: Option<SocketAddr>,
}

#[derive(Args)]
pub struct ProcessorArgs {
    #[command(flatten)]
    lake: LakeFlag,
    /// Address of `/metrics` and `/healthz` (`processor.listen`).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Process everything already in the log, then exit.
    #[arg(long)]
    drain: bool,
}

#[derive(Args)]
pub struct QueryArgs {
    #[command(flatten)]
    lake: LakeFlag,
    /// Address to listen on (`query.listen`).
    #[arg(long)]
    listen: Option<SocketAddr>,
}

#[derive(Subcommand)]
pub enum ConfigCommand {
    /// Print the effective configuration of a role as TOML (secrets
    /// redacted): defaults, the file, the environment and flags applied.
    /// The output is a valid configuration file.
    Print {
        #[arg(long, value_enum, default_value = "standalone")]
        role: Role,
    },
    /// Check a configuration file alone (without the environment): an
    /// unknown key, a wrong type or contradicting settings are named, with
    /// exit status 1.
    Check {
        file: PathBuf,
        #[arg(long, value_enum, default_value = "standalone")]
        role: Role,
    },
}

pub fn config_command(settings: &SettingsArgs, cmd: ConfigCommand) -> Result<()> {
    match cmd {
        ConfigCommand::Print { role } => {
            let config = settings.load(role, Vec::new())?;
            print!("{}", config.to_toml()?);
            config.validate(role)
        }
        ConfigCommand::Check { file, role } => {
            config::check_file(&file, role)?;
            println!(
                "{}: a valid configuration for {}",
                file.display(),
                role.name()
            );
            Ok(())
        }
    }
}

/// Prints where a node of a deployment serves, one `name url` line each
/// (as standalone does), for operators and for tests that start it.
fn print_addresses(node: &Node) {
    println!("candor {}", node.role.name());
    if let Some(addr) = node.ingest {
        println!(
            "  ingest   {}://{addr}{}",
            node.scheme,
            candor_ingest::BATCH_ROUTE
        );
    }
    if let Some(addr) = node.query {
        println!("  query    {}://{addr}", node.scheme);
    }
    if let Some(addr) = node.metrics {
        println!("  metrics  http://{addr}/metrics   health: /healthz");
    }
}

/// Runs a started node until SIGINT or SIGTERM, then stops it and waits.
async fn run_until_signal(node: Node) -> Result<()> {
    let stop = node.stopper();
    tokio::spawn(async move {
        shutdown_signal().await;
        stop.stop();
    });
    let role = node.role;
    if let Some(stats) = node.wait().await? {
        tracing::info!(
            records = stats.records,
            events = stats.events,
            undecodable = stats.records_undecodable,
            files = stats.files_written,
            rows = stats.rows_written,
            "{} stopped",
            role.name()
        );
    } else {
        tracing::info!("{} stopped", role.name());
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => {},
        _ = term.recv() => {},
    }
}

pub async fn standalone(settings: &SettingsArgs, args: StandaloneArgs) -> Result<()> {
    let config = settings.load(
        Role::Standalone,
        [
            flag("data_dir", args.data_dir.map(|d| d.display().to_string())),
            flag("ingest.listen", args.listen),
            flag("query.listen", args.query_listen),
        ]
        .into_iter()
        .flatten()
        .collect(),
    )?;
    let node = node::start(config.clone(), Role::Standalone).await?;
    print_standalone(&config, &node);
    run_until_signal(node).await
}

fn print_standalone(config: &Config, node: &Node) {
    let scheme = node.scheme;
    let (ingest, query) = (node.ingest.expect("bound"), node.query.expect("bound"));
    let data = &config.data_dir;
    println!("candor standalone");
    println!(
        "  ingest   {scheme}://{ingest}{}",
        candor_ingest::BATCH_ROUTE
    );
    println!("  metrics  {scheme}://{ingest}/metrics   health: /healthz /readyz");
    println!(
        "  query    {scheme}://{query}   /v1/kpi/... /v1/sql /v1/extracts /v1/admin/ (bearer tokens)"
    );
    println!(
        "  control  {} (tenants, devices, tokens, keys)",
        config.control_url()
    );
    println!(
        "  log      {} (embedded, fsynced before 202)",
        data.join("spool").display()
    );
    println!("  lake     {}", config.lake_url());
    println!(
        "  dead     {} (records the processor could not open)",
        data.join("dead-letters").display()
    );
}

pub async fn ingest(settings: &SettingsArgs, args: ListenArgs) -> Result<()> {
    let config = settings.load(
        Role::Ingest,
        flag("ingest.listen", args.listen).into_iter().collect(),
    )?;
    let node = node::start(config, Role::Ingest).await?;
    print_addresses(&node);
    run_until_signal(node).await
}

pub async fn processor(settings: &SettingsArgs, args: ProcessorArgs) -> Result<()> {
    let config = settings.load(
        Role::Processor,
        [
            flag("lake.url", args.lake.lake),
            flag("processor.listen", args.listen),
        ]
        .into_iter()
        .flatten()
        .collect(),
    )?;
    if args.drain {
        let s = node::drain_processor(&config).await?;
        tracing::info!(
            records = s.records,
            events = s.events,
            undecodable = s.records_undecodable,
            files = s.files_written,
            rows = s.rows_written,
            "processor drained the log"
        );
        return Ok(());
    }
    let node = node::start(config, Role::Processor).await?;
    print_addresses(&node);
    run_until_signal(node).await
}

pub async fn query(settings: &SettingsArgs, args: QueryArgs) -> Result<()> {
    let config = settings.load(
        Role::Query,
        [
            flag("lake.url", args.lake.lake),
            flag("query.listen", args.listen),
        ]
        .into_iter()
        .flatten()
        .collect(),
    )?;
    let node = node::start(config, Role::Query).await?;
    print_addresses(&node);
    run_until_signal(node).await
}
