//! The master secret every key is derived from: a file
//! (`master_secret_file`), hex in `CANDOR_MASTER_SECRET`, or the
//! `master.key` standalone keeps in its data directory. Never a flag, never
//! printed.

use std::path::Path;

use anyhow::{Context, Result, bail};
use candor_schemas::keys::MasterSecret;

use crate::config::Config;

fn read(path: &Path) -> Result<MasterSecret> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading master secret file {}", path.display()))?;
    Ok(MasterSecret::from_hex(&text)?)
}

fn configured(config: &Config) -> Option<Result<MasterSecret>> {
    if let Some(path) = &config.master_secret_file {
        return Some(read(path));
    }
    std::env::var("CANDOR_MASTER_SECRET")
        .ok()
        .map(|hex| Ok(MasterSecret::from_hex(&hex)?))
}

/// The configured master secret, else the one standalone created in the
/// data directory.
pub fn master_secret(config: &Config) -> Result<MasterSecret> {
    if let Some(secret) = configured(config) {
        return secret;
    }
    let path = config.data_dir.join("master.key");
    if path.exists() {
        return read(&path);
    }
    bail!(
        "no master secret: set master_secret_file (CANDOR_MASTER_SECRET_FILE) or \
         CANDOR_MASTER_SECRET, or run `candor standalone` once to create {}",
        path.display()
    )
}

/// Standalone's master secret: the configured one, else the one in the data
/// directory, created (mode 0600, fsynced) on first start.
pub fn master_secret_or_create(config: &Config) -> Result<MasterSecret> {
    if let Some(secret) = configured(config) {
        return secret;
    }
    let path = config.data_dir.join("master.key");
    if !path.exists() {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let secret: [u8; 32] = rand::random();
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut f| {
                f.write_all(hex::encode(secret).as_bytes())
                    .and_then(|()| f.sync_all())
            })
            .with_context(|| format!("creating master secret {}", path.display()))?;
        eprintln!(
            "created a new master secret in {} (keep it: without it the data cannot be read)",
            path.display()
        );
    }
    read(&path)
}
