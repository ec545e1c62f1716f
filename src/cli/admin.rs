//! The operator's commands on the control plane: tenants, the directory,
//! devices, tokens, keys and the audit trail. Each reads the configured
//! master secret and control plane (`--control` over `control.url`).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use candor::config::Role;
use candor::node;
use candor_control::{Actor, Admin, Directory, Plan, Role as TokenRole, Tenant, TokenRequest};
use candor_schemas::{DeviceId, EmployeeId, TenantId};
use clap::{Args, Subcommand};

use super::{ControlFlag, SettingsArgs, flag, print_json};

/// The operator's admin operations on the configured control plane.
fn operator(settings: &SettingsArgs, control: ControlFlag) -> Result<Admin> {
    let config = settings.load(
        Role::Operator,
        flag("control.url", control.control).into_iter().collect(),
    )?;
    node::admin(&config, &node::master_secret(&config)?)
}

#[derive(Subcommand)]
pub enum TenantCommand {
    /// Create a tenant and its keys; with --bootstrap-token, also print its
    /// first owner token (shown once).
    Create {
        #[command(flatten)]
        control: ControlFlag,
        #[arg(long)]
        tenant: TenantId,
        /// free (7 days), starter (30), professional (90) or enterprise (365).
        #[arg(long, default_value = "starter")]
        plan: String,
        /// IANA time zone; KPIs count days and work hours in it.
        #[arg(long, default_value = "UTC")]
        time_zone: String,
        /// Keep activity, app usage and GPS at any hour. Without it, the
        /// processor drops what falls outside work hours (Monday to Friday,
        /// 09:00-17:00 local, changeable with the tenant admin API).
        #[arg(long)]
        track_outside_work_hours: bool,
        #[arg(long)]
        bootstrap_token: bool,
    },
    /// Print a tenant's document as JSON.
    Show {
        #[command(flatten)]
        control: ControlFlag,
        #[arg(long)]
        tenant: TenantId,
    },
    /// Replace a tenant's document with a JSON file (see `tenant show`);
    /// `cancelled_at_ms` must stay as it is (see `tenant cancel`).
    Update {
        #[command(flatten)]
        control: ControlFlag,
        #[arg(long)]
        file: PathBuf,
    },
    /// Cancel a tenant now: its tokens and devices stop working, and its
    /// lake is purged once the grace period after this moment is over.
    Cancel {
        #[command(flatten)]
        control: ControlFlag,
        #[arg(long)]
        tenant: TenantId,
    },
    /// Undo a tenant's cancellation (nothing is purged within the grace period).
    Reinstate {
        #[command(flatten)]
        control: ControlFlag,
        #[arg(long)]
        tenant: TenantId,
    },
}

#[derive(Subcommand)]
pub enum DirectoryCommand {
    /// Replace the directory with a JSON file:
    /// {"employees": {"e-1": {"department": "Sales", "manages": ["Sales"]}}}
    Load {
        #[command(flatten)]
        control: ControlFlag,
        #[arg(long)]
        tenant: TenantId,
        #[arg(long)]
        file: PathBuf,
    },
}

#[derive(Subcommand)]
pub enum DeviceCommand {
    /// Enroll a device; prints its key and key version (shown once, never stored).
    Enroll {
        #[command(flatten)]
        control: ControlFlag,
        #[arg(long)]
        tenant: TenantId,
        #[arg(long)]
        employee: EmployeeId,
        #[arg(long)]
        device: DeviceId,
    },
    /// Revoke a device's key: ingest refuses it within one refresh interval.
    Revoke {
        #[command(flatten)]
        control: ControlFlag,
        #[arg(long)]
        tenant: TenantId,
        #[arg(long)]
        device: DeviceId,
    },
}

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Create a token; prints it once.
    Create {
        #[command(flatten)]
        control: ControlFlag,
        #[arg(long)]
        tenant: TenantId,
        /// owner, admin, hr, manager, employee, analyst or ai.
        #[arg(long)]
        role: TokenRole,
        /// A name to recognise it by in listings.
        #[arg(long)]
        name: String,
        /// For manager and employee tokens: the employee it acts for.
        #[arg(long)]
        employee: Option<EmployeeId>,
        /// Days until it expires; never, if absent.
        #[arg(long)]
        expires_in_days: Option<u32>,
    },
    /// List a tenant's tokens (never their secrets).
    List {
        #[command(flatten)]
        control: ControlFlag,
        #[arg(long)]
        tenant: TenantId,
    },
    /// Revoke a token by its id (from `token list`).
    Revoke {
        #[command(flatten)]
        control: ControlFlag,
        #[arg(long)]
        tenant: TenantId,
        #[arg(long)]
        id: String,
    },
    /// Print a one-time sign-in link to the portal: it opens one session
    /// of this role within 15 minutes and is good for nothing else.
    SignInLink {
        #[command(flatten)]
        control: ControlFlag,
        #[arg(long)]
        tenant: TenantId,
        /// owner, admin, hr, manager, employee or analyst.
        #[arg(long)]
        role: TokenRole,
        /// For manager and employee links: the employee it acts for.
        #[arg(long)]
        employee: Option<EmployeeId>,
        /// The portal's address: the query node's (or standalone's query) URL.
        #[arg(long, default_value = "http://127.0.0.1:8081")]
        url: String,
    },
}

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Add a key version: new data is sealed with it; old data stays readable.
    Rotate {
        #[command(flatten)]
        control: ControlFlag,
        #[arg(long)]
        tenant: TenantId,
    },
    /// Destroy every key of a tenant (crypto-shredding): its sealed log
    /// records and the link from its pseudonyms to employees are gone for good.
    Destroy {
        #[command(flatten)]
        control: ControlFlag,
        #[arg(long)]
        tenant: TenantId,
        /// Required: this cannot be undone.
        #[arg(long)]
        yes_destroy_all_data: bool,
    },
}

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Walk a tenant's audit chain and report the first edited, reordered or
    /// missing entry, a cut end, or a head that is missing, older than the
    /// chain or forged (exit status 1 if there is one).
    Verify {
        #[command(flatten)]
        control: ControlFlag,
        #[arg(long)]
        tenant: TenantId,
        /// A file kept where the store's writers cannot reach it: the chain
        /// must reach the entry it names, unchanged (else a cut end with a
        /// rolled-back head is reported); an intact chain's last entry is
        /// written back to it.
        #[arg(long)]
        checkpoint: Option<PathBuf>,
    },
    /// Print a tenant's audit entries as JSON lines.
    Show {
        #[command(flatten)]
        control: ControlFlag,
        #[arg(long)]
        tenant: TenantId,
    },
}

#[derive(Args)]
pub struct DeviceKeyArgs {
    #[arg(long)]
    tenant: TenantId,
    #[arg(long)]
    employee: EmployeeId,
    #[arg(long)]
    device: DeviceId,
    #[arg(long, default_value_t = 1)]
    key_version: u32,
}

fn read_json<T: serde::de::DeserializeOwned>(path: &std::path::Path) -> Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

pub async fn tenant(s: &SettingsArgs, cmd: TenantCommand) -> Result<()> {
    let op = Actor::operator();
    match cmd {
        TenantCommand::Create {
            control,
            tenant,
            plan,
            time_zone,
            track_outside_work_hours,
            bootstrap_token,
        } => {
            let plan: Plan = serde_json::from_value(serde_json::Value::String(plan.clone()))
                .map_err(|_| {
                    anyhow::anyhow!(
                        "unknown plan {plan:?}; free, starter, professional or enterprise"
                    )
                })?;
            let admin = operator(s, control)?;
            let doc = Tenant {
                track_outside_work_hours,
                ..Tenant::new(tenant.clone(), plan, time_zone)
            };
            admin.create_tenant(&op, &doc).await?;
            eprintln!(
                "created tenant {tenant} ({} days of retention)",
                doc.retention_days()
            );
            if bootstrap_token {
                let request = TokenRequest {
                    name: "bootstrap owner".into(),
                    role: TokenRole::Owner,
                    employee: None,
                    expires_at_ms: None,
                    tenant: None,
                };
                let created = admin.create_token(&op, &tenant, &request).await?;
                eprintln!("owner token (shown once; store it now):");
                println!("{}", created.token);
            }
        }
        TenantCommand::Show { control, tenant } => {
            let admin = operator(s, control)?;
            print_json(&admin.get_tenant(&op, &tenant).await?.doc)?;
        }
        TenantCommand::Update { control, file } => {
            let doc: Tenant = read_json(&file)?;
            let admin = operator(s, control)?;
            let version = admin.update_tenant(&op, &doc, None).await?;
            eprintln!("tenant {} is now at version {version}", doc.id);
        }
        TenantCommand::Cancel { control, tenant } => {
            let done = operator(s, control)?.cancel_tenant(&op, &tenant).await?;
            eprintln!("tenant {tenant} is cancelled; `candor tenant reinstate` undoes it");
            print_json(&done.doc)?;
        }
        TenantCommand::Reinstate { control, tenant } => {
            let done = operator(s, control)?.reinstate_tenant(&op, &tenant).await?;
            eprintln!("tenant {tenant} is active again");
            print_json(&done.doc)?;
        }
    }
    Ok(())
}

pub async fn directory(s: &SettingsArgs, cmd: DirectoryCommand) -> Result<()> {
    let DirectoryCommand::Load {
        control,
        tenant,
        file,
    } = cmd;
    let directory: Directory = read_json(&file)?;
    let admin = operator(s, control)?;
    let version = admin
        .load_directory(&Actor::operator(), &tenant, &directory, None)
        .await?;
    eprintln!(
        "directory of {tenant}: {} employees, version {version}",
        directory.employees.len()
    );
    Ok(())
}

pub async fn device(s: &SettingsArgs, cmd: DeviceCommand) -> Result<()> {
    let op = Actor::operator();
    match cmd {
        DeviceCommand::Enroll {
            control,
            tenant,
            employee,
            device,
        } => {
            let admin = operator(s, control)?;
            print_json(
                &admin
                    .enroll_device(&op, &tenant, &employee, &device)
                    .await?,
            )?;
        }
        DeviceCommand::Revoke {
            control,
            tenant,
            device,
        } => {
            let admin = operator(s, control)?;
            let doc = admin.revoke_device(&op, &tenant, &device).await?;
            eprintln!(
                "revoked {device} through key version {}; ingest nodes refuse it after their next refresh",
                doc.key_version
            );
        }
    }
    Ok(())
}

pub async fn token(s: &SettingsArgs, cmd: TokenCommand) -> Result<()> {
    let op = Actor::operator();
    match cmd {
        TokenCommand::Create {
            control,
            tenant,
            role,
            name,
            employee,
            expires_in_days,
        } => {
            let admin = operator(s, control)?;
            let request = TokenRequest {
                name,
                role,
                employee,
                expires_at_ms: expires_in_days
                    .map(|d| chrono::Utc::now().timestamp_millis() + i64::from(d) * 86_400_000),
                tenant: None,
            };
            let created = admin.create_token(&op, &tenant, &request).await?;
            eprintln!("token {} ({role}; shown once):", created.record.id);
            println!("{}", created.token);
        }
        TokenCommand::SignInLink {
            control,
            tenant,
            role,
            employee,
            url,
        } => {
            let admin = operator(s, control)?;
            let request = TokenRequest {
                name: format!("sign-in link ({role})"),
                role,
                employee,
                expires_at_ms: None,
                tenant: None,
            };
            let created = admin.create_sign_in_link(&op, &tenant, &request).await?;
            eprintln!(
                "sign-in link {} ({role}; once, within 15 minutes):",
                created.record.id
            );
            println!("{}/#sign-in={}", url.trim_end_matches('/'), created.token);
        }
        TokenCommand::List { control, tenant } => {
            let admin = operator(s, control)?;
            print_json(&admin.list_tokens(&op, &tenant).await?)?;
        }
        TokenCommand::Revoke {
            control,
            tenant,
            id,
        } => {
            let admin = operator(s, control)?;
            admin.revoke_token(&op, &tenant, &id).await?;
            eprintln!("revoked token {id}");
        }
    }
    Ok(())
}

pub async fn keys(s: &SettingsArgs, cmd: KeysCommand) -> Result<()> {
    let op = Actor::operator();
    match cmd {
        KeysCommand::Rotate { control, tenant } => {
            let admin = operator(s, control)?;
            let version = admin.rotate_keys(&op, &tenant).await?;
            eprintln!("tenant {tenant}: new data is sealed with key version {version}");
        }
        KeysCommand::Destroy {
            control,
            tenant,
            yes_destroy_all_data,
        } => {
            if !yes_destroy_all_data {
                bail!(
                    "destroying keys makes {tenant}'s data unreadable for good; pass --yes-destroy-all-data"
                );
            }
            let admin = operator(s, control)?;
            let deleted = admin.destroy_keys(&op, &tenant).await?;
            eprintln!("tenant {tenant}: destroyed {deleted} keyring versions");
        }
    }
    Ok(())
}

pub async fn audit(s: &SettingsArgs, cmd: AuditCommand) -> Result<()> {
    match cmd {
        AuditCommand::Verify {
            control,
            tenant,
            checkpoint,
        } => {
            let admin = operator(s, control)?;
            let seen: Option<candor_control::Checkpoint> = match &checkpoint {
                Some(path) if path.exists() => Some(read_json(path)?),
                _ => None,
            };
            if let Some(seen) = &seen
                && seen.tenant != tenant
            {
                bail!("the checkpoint is of tenant {}, not {tenant}", seen.tenant);
            }
            let report = admin
                .audit_log()
                .verify_against(&tenant, seen.as_ref())
                .await?;
            match &report.first_problem {
                None => {
                    println!(
                        "audit trail of {tenant}: {} entries, intact",
                        report.verified
                    );
                    if let (Some(path), Some(at)) = (&checkpoint, &report.checkpoint) {
                        let part = path.with_extension("partial");
                        std::fs::write(&part, serde_json::to_vec_pretty(at)?)?;
                        std::fs::rename(&part, path)
                            .with_context(|| format!("writing {}", path.display()))?;
                    }
                }
                Some(problem) => {
                    println!(
                        "audit trail of {tenant}: {} entries verify, then: {problem}",
                        report.verified
                    );
                    std::process::exit(1);
                }
            }
        }
        AuditCommand::Show { control, tenant } => {
            let admin = operator(s, control)?;
            for entry in admin.audit_log().entries(&tenant).await? {
                println!("{}", serde_json::to_string(&entry)?);
            }
        }
    }
    Ok(())
}

pub fn device_key(s: &SettingsArgs, args: DeviceKeyArgs) -> Result<()> {
    let config = s.load(Role::Operator, Vec::new())?;
    let key = node::master_secret(&config)?.device_key(
        &args.tenant,
        &args.employee,
        &args.device,
        args.key_version,
    );
    println!("{}", hex::encode(key.as_bytes()));
    Ok(())
}
