//! A network laboratory built from Linux network namespaces, for end-to-end
//! tests, benchmarks and `postern demo`.
//!
//! A [`Lab`] holds hosts (one namespace each), switches (a bridge inside a
//! namespace of its own), links (veth pairs), NAT routers and impaired links.
//! Nothing is created in the caller's namespace: every interface lives inside a
//! lab namespace, so deleting the namespaces removes everything. `Lab` removes
//! them on drop (also while a test panics), and [`sweep_stale`] removes those
//! of runs that were killed before their drop ran.
//!
//! The lab drives the `ip`, `nft` and `iptables` tools rather than netlink
//! directly: setup cost does not matter here, the commands are the ones an
//! operator would type to reproduce or inspect a topology (each is logged at
//! debug level), and the NAT rules need nftables anyway. Code that must run
//! *inside* a host (test servers, probes) uses [`Host::enter`], which joins the
//! namespace on a scratch thread; sockets made there stay in the host.
//!
//! ```no_run
//! use postern_lab::{Lab, NatKind};
//! # fn main() -> Result<(), postern_lab::LabError> {
//! let lab = Lab::new()?;
//! let internet = lab.add_switch("internet")?;
//! let home = lab.add_switch("home")?;
//! let server = lab.add_host("server")?;
//! lab.connect(&server, &internet, &["198.18.0.10/24"])?;
//! let nat = lab.add_nat_router("nat", &internet, "198.18.0.1/24", &home, "192.168.1.1/24", NatKind::Cone)?;
//! let laptop = lab.add_host("laptop")?;
//! lab.connect(&laptop, &home, &["192.168.1.10/24"])?;
//! laptop.set_default_route(nat.lan.ipv4().expect("lan address"))?;
//! println!("{}", laptop.run("ping", &["-c1", "198.18.0.10"])?);
//! # Ok(()) }
//! ```

mod command;
pub mod demo;
pub mod dns;
mod error;
mod host;
mod host_firewalls;
pub mod http;
mod impair;
mod names;
mod namespace;
mod nat;
pub mod pki;
pub mod probe;
mod process;

use std::path::{Path, PathBuf};
use std::sync::{Mutex, Once};

use ipnet::IpNet;

pub use error::{LabError, Result};
pub use host::{Host, Interface};
pub use host_firewalls::Firewalld;
pub use impair::Impairment;
pub use names::{PREFIX, list_namespaces, sweep_stale};
pub use nat::{NatKind, Router};
pub use process::LabProcess;

/// A switch: a bridge named `br0` in a namespace of its own. Hosts plug into
/// it with [`Lab::connect`].
#[derive(Clone, Debug)]
pub struct Switch {
    host: Host,
}

impl Switch {
    pub fn name(&self) -> &str {
        self.host.name()
    }

    pub fn namespace(&self) -> &str {
        self.host.namespace()
    }
}

/// One laboratory: owns its namespaces, delay lines and log directory and
/// removes them on drop.
#[derive(Debug)]
pub struct Lab {
    prefix: String,
    log_dir: PathBuf,
    keep_logs: bool,
    namespaces: Mutex<Vec<String>>,
    delay_lines: Mutex<Vec<impair::DelayLine>>,
}

static SWEEP: Once = Once::new();

impl Lab {
    /// Starts an empty lab. Needs root and the `ip`, `nft` and `iptables`
    /// tools. The first lab of a process also sweeps stale lab namespaces.
    ///
    /// Process logs go to a fresh directory under the system temp dir that is
    /// removed on drop, unless `POSTERN_LAB_KEEP_LOGS` is set (then its path
    /// is printed on drop).
    pub fn new() -> Result<Self> {
        if !nix::unistd::geteuid().is_root() {
            return Err(LabError::NotRoot);
        }
        command::check_tools()?;
        let mut sweep_result = Ok(());
        SWEEP.call_once(|| sweep_result = sweep_stale().map(|_| ()));
        sweep_result?;
        let prefix = names::new_lab_prefix();
        let log_dir = std::env::temp_dir().join(prefix.trim_end_matches('-'));
        std::fs::create_dir_all(&log_dir)?;
        Ok(Lab {
            prefix,
            log_dir,
            keep_logs: std::env::var_os("POSTERN_LAB_KEEP_LOGS").is_some(),
            namespaces: Mutex::new(Vec::new()),
            delay_lines: Mutex::new(Vec::new()),
        })
    }

    /// The prefix of every namespace of this lab.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Where spawned processes write their stdout/stderr.
    pub fn log_dir(&self) -> &Path {
        &self.log_dir
    }

    /// The namespaces this lab created so far.
    pub fn namespaces(&self) -> Vec<String> {
        self.namespaces
            .lock()
            .map(|names| names.clone())
            .unwrap_or_default()
    }

    /// Adds a host (an empty namespace with loopback up).
    pub fn add_host(&self, name: &str) -> Result<Host> {
        validate_name(name)?;
        let namespace = format!("{}{name}", self.prefix);
        let mut namespaces = self
            .namespaces
            .lock()
            .map_err(|_| LabError::Invalid("lab state poisoned".into()))?;
        if namespaces.contains(&namespace) {
            return Err(LabError::Invalid(format!(
                "the lab already has a host or switch named {name:?}"
            )));
        }
        namespace::create(&namespace)?;
        namespaces.push(namespace.clone());
        Ok(Host::new(name, namespace, self.log_dir.clone()))
    }

    /// Adds a switch (a bridge in a namespace of its own).
    pub fn add_switch(&self, name: &str) -> Result<Switch> {
        let host = self.add_host(name)?;
        host.ip(&["link", "add", "dev", "br0", "type", "bridge"])?;
        host.ip(&["link", "set", "dev", "br0", "up"])?;
        Ok(Switch { host })
    }

    /// Plugs `host` into `switch` with a new interface (`ethN`) carrying
    /// `addresses` (CIDR notation, IPv4 and/or IPv6).
    pub fn connect(&self, host: &Host, switch: &Switch, addresses: &[&str]) -> Result<Interface> {
        let addresses = parse_addresses(addresses)?;
        let name = host.next_interface_name();
        let port = switch.host.next_interface_name().replace("eth", "port");
        host.ip(&[
            "link",
            "add",
            "dev",
            &name,
            "type",
            "veth",
            "peer",
            "name",
            &port,
            "netns",
            switch.namespace(),
        ])?;
        switch
            .host
            .ip(&["link", "set", "dev", &port, "master", "br0"])?;
        switch.host.ip(&["link", "set", "dev", &port, "up"])?;
        host.add_addresses(&name, &addresses)?;
        host.ip(&["link", "set", "dev", &name, "up"])?;
        host.wait_until_up(&name)?;
        Ok(Interface {
            host: host.clone(),
            name,
            addresses,
        })
    }

    /// Joins two hosts with a point-to-point veth link.
    pub fn link(
        &self,
        a: &Host,
        a_addresses: &[&str],
        b: &Host,
        b_addresses: &[&str],
    ) -> Result<(Interface, Interface)> {
        let a_addresses = parse_addresses(a_addresses)?;
        let b_addresses = parse_addresses(b_addresses)?;
        let a_name = a.next_interface_name();
        let b_name = b.next_interface_name();
        a.ip(&[
            "link",
            "add",
            "dev",
            &a_name,
            "type",
            "veth",
            "peer",
            "name",
            &b_name,
            "netns",
            b.namespace(),
        ])?;
        a.add_addresses(&a_name, &a_addresses)?;
        b.add_addresses(&b_name, &b_addresses)?;
        a.ip(&["link", "set", "dev", &a_name, "up"])?;
        b.ip(&["link", "set", "dev", &b_name, "up"])?;
        a.wait_until_up(&a_name)?;
        b.wait_until_up(&b_name)?;
        Ok((
            Interface {
                host: a.clone(),
                name: a_name,
                addresses: a_addresses,
            },
            Interface {
                host: b.clone(),
                name: b_name,
                addresses: b_addresses,
            },
        ))
    }

    /// Adds a NAT router between a WAN switch and a LAN switch. LAN hosts set
    /// their default route to `router.lan` to go through it.
    pub fn add_nat_router(
        &self,
        name: &str,
        wan: &Switch,
        wan_address: &str,
        lan: &Switch,
        lan_address: &str,
        kind: NatKind,
    ) -> Result<Router> {
        let host = self.add_host(name)?;
        let wan_interface = self.connect(&host, wan, &[wan_address])?;
        let lan_interface = self.connect(&host, lan, &[lan_address])?;
        Router::configure(host, wan_interface, lan_interface, kind)
    }

    /// Delays and/or drops packets leaving `interface` (one direction; call it
    /// on both ends for a symmetric link). Lasts as long as the lab.
    pub fn impair(&self, interface: &Interface, impairment: Impairment) -> Result<()> {
        if let Some(line) = impair::install(interface, impairment)? {
            self.delay_lines
                .lock()
                .map_err(|_| LabError::Invalid("lab state poisoned".into()))?
                .push(line);
        }
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Release held packets first: a delay line verdicts its queue on stop.
        if let Ok(lines) = self.delay_lines.get_mut() {
            lines.clear();
        }
        let namespaces = self
            .namespaces
            .get_mut()
            .map(std::mem::take)
            .unwrap_or_default();
        for namespace in namespaces.iter().rev() {
            if let Err(error) = namespace::destroy(namespace) {
                tracing::warn!(%namespace, %error, "could not remove lab namespace");
            }
        }
        if self.keep_logs {
            eprintln!("lab logs kept in {}", self.log_dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.log_dir);
        }
    }
}

fn validate_name(name: &str) -> Result<()> {
    let valid = !name.is_empty()
        && name.len() <= 32
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if valid {
        Ok(())
    } else {
        Err(LabError::Invalid(format!(
            "lab host name {name:?}: use 1-32 letters, digits, '-' or '_'"
        )))
    }
}

fn parse_addresses(addresses: &[&str]) -> Result<Vec<IpNet>> {
    addresses
        .iter()
        .map(|text| {
            text.parse::<IpNet>().map_err(|_| {
                LabError::Invalid(format!(
                    "{text:?} is not an address with a prefix length (like 10.0.0.1/24)"
                ))
            })
        })
        .collect()
}
