//! The real `candor` binary as processes, as an operator runs it: operator
//! commands, and `candor standalone` on free loopback ports.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Lines};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::time::Duration;

use candor_schemas::keys::MasterSecret;

use super::hosts::Host;

/// Bound of every wait on a process: a stuck one fails the test instead of
/// stalling CI.
const GUARD: Duration = Duration::from_secs(120);

/// A fresh master secret, written as hex to `<dir>/secret.hex`.
pub fn secret_in(dir: &Path) -> (MasterSecret, PathBuf) {
    let secret: [u8; 32] = rand::random();
    let file = dir.join("secret.hex");
    std::fs::write(&file, hex::encode(secret)).unwrap();
    (MasterSecret::from_bytes(&secret).unwrap(), file)
}

/// Runs a `candor` command against a data directory; returns its stdout.
pub fn candor(data: &Path, secret_file: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_candor"))
        .args(args)
        .env("CANDOR_CONTROL__URL", data.join("control"))
        .env("CANDOR_MASTER_SECRET_FILE", secret_file)
        .env_remove("CANDOR_MASTER_SECRET")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "candor {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Writes the directory of the simulated `staff` (`candor simulate
/// --directory-only`, so the agents later simulated match it) to `file`,
/// loads it for `tenant` as an operator would, and returns it.
pub fn load_simulated_directory(
    data: &Path,
    secret_file: &Path,
    tenant: &str,
    staff: &[&str],
    file: &Path,
) -> serde_json::Value {
    let file_arg = file.to_str().unwrap();
    let mut args = vec!["simulate", "--directory-only", "--directory-out", file_arg];
    args.extend(staff);
    candor(data, secret_file, &args);
    candor(
        data,
        secret_file,
        &["directory", "load", "--tenant", tenant, "--file", file_arg],
    );
    serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap()
}

/// Runs `candor simulate` with `staff` as a process of its own, posting to
/// `ingest` for `days` days ending on `last_day`, within the guard; returns
/// its summary.
pub async fn simulate(
    data: &Path,
    secret_file: &Path,
    ingest: &str,
    days: u32,
    last_day: &str,
    staff: &[&str],
) -> String {
    let (data, secret_file) = (data.to_path_buf(), secret_file.to_path_buf());
    let (days, last_day) = (days.to_string(), last_day.to_string());
    let mut args: Vec<String> = [
        "simulate",
        "--ingest",
        ingest,
        "--days",
        &days,
        "--last-day",
        &last_day,
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    args.extend(staff.iter().map(|a| a.to_string()));
    tokio::time::timeout(
        GUARD,
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            candor(&data, &secret_file, &args)
        }),
    )
    .await
    .expect("candor simulate finished in time")
    .unwrap()
}

/// The number before `word` in a line of `candor simulate`'s summary.
pub fn count_before(summary: &str, word: &str) -> u64 {
    summary
        .split_whitespace()
        .collect::<Vec<_>>()
        .windows(2)
        .find(|w| w[1].trim_start_matches('(') == word)
        .and_then(|w| w[0].trim_start_matches('(').parse().ok())
        .unwrap_or_else(|| panic!("no count before {word:?} in {summary}"))
}

/// The value of an unlabelled metric in Prometheus text.
pub fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// A metric of the node serving `/metrics` at `base`, if it answers and
/// exports it.
pub async fn metric_at(base: &str, name: &str) -> Option<u64> {
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    metric(&text, name)
}

/// A running `candor standalone` on free loopback ports; killed on drop
/// unless it has been waited for.
pub struct Standalone {
    child: Option<Child>,
    /// Ingest's base URL (`http://addr`) and its address.
    pub url: String,
    pub ingest: SocketAddr,
    /// The query API's base URL and its address.
    pub query_url: String,
    pub query: SocketAddr,
    /// Kept open so the process never writes to a closed pipe.
    _stdout: Lines<BufReader<ChildStdout>>,
}

impl Standalone {
    /// Starts it on `data` with the secret in `secret_file`, plus `extra`
    /// arguments; returns once it has printed where it listens.
    pub fn start(data: &Path, secret_file: &Path, extra: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_candor"))
            .arg("standalone")
            .arg("--data-dir")
            .arg(data)
            .args(["--listen", "127.0.0.1:0", "--query-listen", "127.0.0.1:0"])
            .args(extra)
            .env("CANDOR_MASTER_SECRET_FILE", secret_file)
            .env_remove("CANDOR_MASTER_SECRET")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let base = |url: &str| -> (String, SocketAddr) {
            let rest = url.strip_prefix("http://").expect("plain HTTP on loopback");
            let addr = rest.split('/').next().unwrap();
            (format!("http://{addr}"), addr.parse().unwrap())
        };
        let (mut ingest, mut query) = (None, None);
        while ingest.is_none() || query.is_none() {
            let line = lines
                .next()
                .expect("standalone printed its addresses")
                .unwrap();
            let mut words = line.split_whitespace();
            match (words.next(), words.next()) {
                (Some("ingest"), Some(url)) => ingest = Some(base(url)),
                (Some("query"), Some(url)) => query = Some(base(url)),
                _ => {}
            }
        }
        let ((url, ingest), (query_url, query)) = (ingest.unwrap(), query.unwrap());
        Self {
            child: Some(child),
            url,
            ingest,
            query_url,
            query,
            _stdout: lines,
        }
    }

    fn pid(&self) -> String {
        self.child.as_ref().expect("running").id().to_string()
    }

    /// A metric's current value, if the node answers and exports it.
    pub async fn metric(&self, name: &str) -> Option<u64> {
        metric_at(&self.url, name).await
    }

    /// Waits, within the guard, until a metric satisfies `ok`.
    pub async fn wait_for_metric(&self, name: &str, ok: impl Fn(u64) -> bool) {
        tokio::time::timeout(GUARD, async {
            while !self.metric(name).await.is_some_and(&ok) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{name} never reached the expected value"));
    }

    /// Waits, within the guard, until `events` are in the lake: the
    /// processor's committed events, the signal README names.
    pub async fn wait_for_events(&self, events: u64) {
        self.wait_for_metric("candor_processor_events_committed_total", |n| n == events)
            .await;
    }

    /// Asks it to stop (SIGTERM).
    pub fn terminate(&self) {
        assert!(
            Command::new("kill")
                .args(["-TERM", &self.pid()])
                .status()
                .unwrap()
                .success()
        );
    }

    /// Waits, within the guard, until the process exits.
    pub async fn exit_status(mut self) -> ExitStatus {
        let pid = self.pid();
        let mut child = self.child.take().expect("running");
        let waited =
            tokio::time::timeout(GUARD, tokio::task::spawn_blocking(move || child.wait())).await;
        match waited {
            Ok(status) => status.unwrap().unwrap(),
            Err(_) => {
                // The blocking wait would keep the test's runtime alive:
                // end the child, then fail.
                let _ = Command::new("kill").args(["-KILL", &pid]).status();
                panic!("standalone did not exit within {GUARD:?}; killed it");
            }
        }
    }
}

impl Drop for Standalone {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A node of a deployment as its own process (`candor ingest`, `processor`,
/// `query`), configured as an operator does it; its base URLs read from the
/// `name url` lines it prints. Killed on drop.
pub struct NodeProcess {
    child: Child,
    /// Base URL (`http://addr`) by name: `ingest`, `query`, `metrics`.
    urls: HashMap<String, String>,
    _stdout: Lines<BufReader<ChildStdout>>,
}

impl NodeProcess {
    /// Starts `candor <args>` with `env` added, and waits until it has
    /// printed the address of each of `names`.
    pub fn start(args: &[&str], env: &[(String, String)], names: &[&str]) -> Self {
        Self::start_with(Command::new(env!("CARGO_BIN_EXE_candor")), args, env, names)
    }

    /// [`NodeProcess::start`] on `host`.
    pub fn start_on(host: &Host, args: &[&str], env: &[(String, String)], names: &[&str]) -> Self {
        Self::start_with(host.command(env!("CARGO_BIN_EXE_candor")), args, env, names)
    }

    fn start_with(
        mut candor: Command,
        args: &[&str],
        env: &[(String, String)],
        names: &[&str],
    ) -> Self {
        let mut child = candor
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut urls = HashMap::new();
        while names.iter().any(|n| !urls.contains_key(*n)) {
            let Some(Ok(line)) = lines.next() else {
                let status = child.wait().unwrap();
                panic!("candor {args:?} stopped ({status}) before printing its addresses");
            };
            let mut words = line.split_whitespace();
            if let (Some(name), Some(url)) = (words.next(), words.next())
                && let Some(rest) = url.strip_prefix("http://")
            {
                let addr = rest.split('/').next().unwrap();
                urls.insert(name.to_string(), format!("http://{addr}"));
            }
        }
        Self {
            child,
            urls,
            _stdout: lines,
        }
    }

    /// The base URL it printed for `name`.
    pub fn url(&self, name: &str) -> &str {
        &self.urls[name]
    }

    /// SIGKILL: no shutdown, no flush, as a machine that dies.
    pub fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// A metric's value on its `metrics` (or `ingest`) address.
    pub async fn metric(&self, name: &str) -> Option<u64> {
        let base = self.urls.get("metrics").or(self.urls.get("ingest"))?;
        metric_at(base, name).await
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
