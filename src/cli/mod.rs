//! The command line: one subcommand per node or operator task. Settings
//! come from [`candor::config`] (file, `CANDOR_*` variables, `--set`); a
//! command declares only the few flags a person types, each of which is a
//! setting too.

mod admin;
mod lake;
mod nodes;
pub mod simulate;

use std::path::PathBuf;

use anyhow::Result;
use candor::config::{self, Config, Role, Sources};
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "candor",
    version,
    about = "Candor: a privacy-first telemetry pipeline for workforce agents",
    long_about = "Candor takes sealed activity and GPS batches from workforce agents, keeps raw \
                  identities out of its data lake, and answers productivity KPIs.\n\n\
                  Settings: defaults, then a TOML file (--config or CANDOR_CONFIG), then \
                  CANDOR_SECTION__KEY variables (CANDOR_KAFKA__BROKERS), then flags and \
                  --set section.key=value. `candor config print --role R` shows every \
                  setting with its effective value.\n\n\
                  Secrets: the master secret is read from the file named by master_secret_file \
                  (CANDOR_MASTER_SECRET_FILE), or as hex from CANDOR_MASTER_SECRET (64+ hex \
                  digits). It is never accepted as a command-line argument, so it cannot leak \
                  into process listings or shell history."
)]
pub struct Cli {
    #[command(flatten)]
    settings: SettingsArgs,
    #[command(subcommand)]
    command: Command,
}

/// Where settings come from, for every command.
#[derive(Args, Clone)]
struct SettingsArgs {
    /// A TOML configuration file (`candor config print` writes one).
    #[arg(long, global = true, env = "CANDOR_CONFIG")]
    config: Option<PathBuf>,
    /// One setting, as section.key=value (`--set ingest.max_in_flight=64`),
    /// applied after the file and the environment; repeat for more.
    #[arg(long = "set", global = true, value_name = "KEY=VALUE", value_parser = config::parse_override)]
    set: Vec<(String, String)>,
}

impl SettingsArgs {
    /// The configuration of `role`, with the command's own flags
    /// (`flags`, as dotted keys) applied before `--set`. Warnings (old
    /// variable names, variables that are no setting) are logged.
    fn load(&self, role: Role, flags: Vec<(String, String)>) -> Result<Config> {
        let mut overrides = flags;
        overrides.extend(self.set.iter().cloned());
        let loaded = config::load(
            role,
            &Sources {
                file: self.config.clone(),
                overrides,
                environment: true,
            },
        )?;
        for warning in &loaded.warnings {
            tracing::warn!("{warning}");
        }
        Ok(loaded.config)
    }
}

/// A flag's value as a setting, when the flag was given.
fn flag(key: &str, value: Option<impl ToString>) -> Option<(String, String)> {
    value.map(|v| (key.to_string(), v.to_string()))
}

/// Where the control plane is, for operator commands: a flag over the setting.
#[derive(Args, Clone, Default)]
struct ControlFlag {
    /// Control-plane store (`control.url`): a directory, `file:///path` or
    /// `s3://bucket/prefix`; default `<data_dir>/control`.
    #[arg(long = "control")]
    control: Option<String>,
}

/// Where the lake is, for commands that read or change it.
#[derive(Args, Clone, Default)]
struct LakeFlag {
    /// The deployment's lake (`lake.url`): a directory or
    /// `s3://bucket/prefix`; default `<data_dir>/lake`.
    #[arg(long = "lake")]
    lake: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Run all of Candor on one machine: ingest, processor and the query
    /// service's API in one process, the embedded durable log, a
    /// local-directory lake and control plane. No broker needed.
    Standalone(nodes::StandaloneArgs),
    /// Run an ingest node: accept sealed batches over HTTP and append them to Kafka.
    Ingest(nodes::ListenArgs),
    /// Run a processor: consume the log and write the Parquet lake.
    Processor(nodes::ProcessorArgs),
    /// Run a query node: the KPI, SQL, extract and admin API behind bearer tokens.
    Query(nodes::QueryArgs),
    /// Print or check the configuration.
    #[command(subcommand)]
    Config(nodes::ConfigCommand),
    /// Create, show and change tenants (operator, with store access).
    #[command(subcommand)]
    Tenant(admin::TenantCommand),
    /// Replace a tenant's directory (employee to department, managers).
    #[command(subcommand)]
    Directory(admin::DirectoryCommand),
    /// Enroll and revoke devices.
    #[command(subcommand)]
    Device(admin::DeviceCommand),
    /// Create, list and revoke API tokens, including a tenant's first owner token.
    #[command(subcommand)]
    Token(admin::TokenCommand),
    /// Rotate or destroy a tenant's keys.
    #[command(subcommand)]
    Keys(admin::KeysCommand),
    /// Check a tenant's audit trail.
    #[command(subcommand)]
    Audit(admin::AuditCommand),
    /// Print KPIs computed over the lake.
    #[command(subcommand)]
    Kpi(lake::KpiCommand),
    /// Delete lake partitions older than each tenant's retention, and purge
    /// cancelled tenants after their grace period; every deletion is
    /// written to the tenant's audit trail first.
    #[command(subcommand)]
    Retention(lake::RetentionCommand),
    /// Compact each lake partition's small files (Delta's OPTIMIZE) and
    /// vacuum, once, now (answers do not change; nodes also do it on a
    /// schedule with maintenance.compact_every_minutes).
    Compact(lake::CompactArgs),
    /// The lake's tables themselves.
    #[command(subcommand)]
    Lake(lake::LakeCommand),
    /// Check AI extracts against the lake.
    #[command(subcommand)]
    Extract(lake::ExtractCommand),
    /// Print the hex key a device seals its batches with (see schemas/WIRE.md).
    DeviceKey(admin::DeviceKeyArgs),
    /// Simulated agents: a tenant's employees post realistic, sealed
    /// workdays to ingest nodes (demos, load tests).
    #[command(long_about = simulate::LONG_ABOUT)]
    Simulate(simulate::SimulateArgs),
}

pub async fn run(cli: Cli) -> Result<()> {
    let s = &cli.settings;
    match cli.command {
        Command::Standalone(args) => nodes::standalone(s, args).await,
        Command::Ingest(args) => nodes::ingest(s, args).await,
        Command::Processor(args) => nodes::processor(s, args).await,
        Command::Query(args) => nodes::query(s, args).await,
        Command::Config(cmd) => nodes::config_command(s, cmd),
        Command::Tenant(cmd) => admin::tenant(s, cmd).await,
        Command::Directory(cmd) => admin::directory(s, cmd).await,
        Command::Device(cmd) => admin::device(s, cmd).await,
        Command::Token(cmd) => admin::token(s, cmd).await,
        Command::Keys(cmd) => admin::keys(s, cmd).await,
        Command::Audit(cmd) => admin::audit(s, cmd).await,
        Command::DeviceKey(args) => admin::device_key(s, args),
        Command::Kpi(cmd) => lake::kpi(s, cmd).await,
        Command::Retention(cmd) => lake::retention(s, cmd).await,
        Command::Compact(args) => lake::compact(s, args).await,
        Command::Lake(cmd) => lake::lake(s, cmd).await,
        Command::Extract(cmd) => lake::extract(s, cmd).await,
        Command::Simulate(args) => {
            let config = s.load(Role::Operator, Vec::new())?;
            simulate::run(args, &config).await
        }
    }
}

fn print_json(value: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every subcommand's arguments are well-formed (unique ids, valid
    /// defaults): clap checks it here rather than at a user's `--help`.
    #[test]
    fn the_command_line_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
