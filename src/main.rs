//! The `candor` binary: the command line of [`candor::node`] and the
//! operator's tools. Logic lives in the crates and in `src/node`; `src/cli`
//! only reads settings and starts things.

mod cli;

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // The log filter is read before any setting, so that loading the
    // configuration can warn. Delta's kernel logs every snapshot it builds
    // at info, and a table not created yet as an error; its failures reach
    // Candor as errors, logged with their table: by default it is silent.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CANDOR_LOG")
                .unwrap_or_else(|_| "info,buoyant_kernel=off,deltalake_core=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    cli::run(cli::Cli::parse()).await
}
