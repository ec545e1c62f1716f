//! Hosts for a deployment's nodes. Where root may make Linux network
//! namespaces (`ip netns`, veth, a bridge), each node runs in its own,
//! with its own address on a private bridge, as on its own machine; nodes
//! then reach each other and the test host only over that network.
//! Otherwise every node shares the test host's loopback, each on its own
//! port.
//!
//! The broker and the S3 server run on the test host's loopback, and the
//! broker advertises `127.0.0.1`, so each namespace gets relays
//! (`tests/support/relay.py`) that make those loopback addresses answer
//! inside it too: a node is configured exactly as on loopback.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

/// Where one node runs.
#[derive(Debug, Clone)]
pub struct Host {
    /// The network namespace, if nodes have their own.
    pub namespace: Option<String>,
    /// The address its listeners bind.
    pub ip: String,
}

impl Host {
    /// `program` run on this host.
    pub fn command(&self, program: &str) -> Command {
        match &self.namespace {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, program]);
                c
            }
            None => Command::new(program),
        }
    }

    /// A listen address on a free port.
    pub fn listen(&self) -> String {
        format!("{}:0", self.ip)
    }
}

/// The hosts of one test run; namespaces, bridge and relays are removed on
/// drop.
pub struct Hosts {
    hosts: Vec<Host>,
    net: Option<Network>,
}

struct Network {
    bridge: String,
    relays: Vec<Child>,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Starts `relay.py` with `specs` through `command`; returns once it is ready.
fn relay(mut command: Command, specs: &[String]) -> Result<Child, String> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/relay.py");
    let mut child = command
        .arg(script)
        .args(specs)
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("relay: {e}"))?;
    let mut ready = String::new();
    BufReader::new(child.stdout.take().expect("piped"))
        .read_line(&mut ready)
        .map_err(|e| format!("relay: {e}"))?;
    if ready.trim() != "ready" {
        let _ = child.kill();
        return Err(format!("relay {specs:?} did not start"));
    }
    Ok(child)
}

impl Hosts {
    /// `count` hosts, each of which can reach `services` (addresses on the
    /// test host's loopback) at the same address.
    pub fn new(count: usize, services: &[SocketAddr]) -> Self {
        let tag = std::process::id() % 100_000;
        let hosts = Self {
            hosts: (0..count)
                .map(|i| Host {
                    namespace: Some(format!("candor-{tag}-{i}")),
                    ip: String::new(),
                })
                .collect(),
            net: Some(Network {
                bridge: format!("cbr{tag}"),
                relays: Vec::new(),
            }),
        };
        match hosts.with_namespaces(tag, services) {
            Ok(hosts) => hosts,
            Err(why) => {
                eprintln!("hosts: no network namespaces ({why}); every node on loopback");
                Self {
                    hosts: vec![
                        Host {
                            namespace: None,
                            ip: "127.0.0.1".into(),
                        };
                        count
                    ],
                    net: None,
                }
            }
        }
    }

    /// Makes the bridge, the namespaces and the relays; on failure, what
    /// was made is removed (by drop) and the reason returned.
    fn with_namespaces(mut self, tag: u32, services: &[SocketAddr]) -> Result<Self, String> {
        let subnet = format!("10.201.{}", tag % 250);
        let gateway = format!("{subnet}.1");
        let bridge = self.net.as_ref().expect("set").bridge.clone();
        ip(&["link", "add", &bridge, "type", "bridge"])?;
        ip(&["addr", "add", &format!("{gateway}/24"), "dev", &bridge])?;
        ip(&["link", "set", &bridge, "up"])?;
        // The test host's side: the services on the bridge address.
        let to_gateway: Vec<String> = services
            .iter()
            .map(|s| format!("{gateway}:{port}:127.0.0.1:{port}", port = s.port()))
            .collect();
        let relays = relay(Command::new("python3"), &to_gateway)?;
        self.net.as_mut().expect("set").relays.push(relays);
        for (i, host) in self.hosts.iter_mut().enumerate() {
            let ns = host.namespace.clone().expect("set");
            let (outside, inside) = (format!("cv{tag}a{i}"), format!("cv{tag}b{i}"));
            host.ip = format!("{subnet}.{}", 10 + i);
            ip(&["netns", "add", &ns])?;
            ip(&[
                "link", "add", &outside, "type", "veth", "peer", "name", &inside,
            ])?;
            ip(&["link", "set", &inside, "netns", &ns])?;
            ip(&["link", "set", &outside, "master", &bridge, "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", host.ip),
                "dev",
                &inside,
            ])?;
            ip(&["-n", &ns, "link", "set", &inside, "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            // Inside: the services at their loopback addresses.
            let to_services: Vec<String> = services
                .iter()
                .map(|s| format!("127.0.0.1:{port}:{gateway}:{port}", port = s.port()))
                .collect();
            let relays = relay(host.command("python3"), &to_services)?;
            self.net.as_mut().expect("set").relays.push(relays);
        }
        eprintln!(
            "hosts: {} network namespaces on bridge {bridge} ({subnet}.0/24)",
            self.hosts.len()
        );
        Ok(self)
    }

    pub fn host(&self, i: usize) -> &Host {
        &self.hosts[i]
    }

    /// Whether the nodes have hosts of their own.
    pub fn separate(&self) -> bool {
        self.net.is_some()
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        let Some(net) = &mut self.net else {
            return;
        };
        for relay in &mut net.relays {
            let _ = relay.kill();
            let _ = relay.wait();
        }
        // A namespace's processes must be gone before it is; deleting it
        // takes its end of the veth pair, and with it the bridge's end.
        for host in &self.hosts {
            if let Some(ns) = &host.namespace {
                let _ = ip(&["netns", "del", ns]);
            }
        }
        let _ = ip(&["link", "del", &net.bridge]);
    }
}
