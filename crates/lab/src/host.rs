//! A host: one network namespace with interfaces, addresses and routes.

use std::ffi::OsStr;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use ipnet::IpNet;

use crate::command::{run, run_with_input};
use crate::error::{LabError, Result};
use crate::namespace;
use crate::process::LabProcess;

/// A host of the lab (a network namespace). Cheap to clone; the [`crate::Lab`]
/// that made it owns the namespace and removes it on drop.
#[derive(Clone, Debug)]
pub struct Host {
    inner: Arc<HostInner>,
}

#[derive(Debug)]
struct HostInner {
    name: String,
    namespace: String,
    log_dir: PathBuf,
    next_interface: AtomicU32,
    next_process: AtomicU32,
    /// Environment every program started in this host gets (the D-Bus
    /// address of its own firewalld).
    env: std::sync::Mutex<Vec<(String, String)>>,
}

/// An interface of a host, with the addresses the lab gave it.
#[derive(Clone, Debug)]
pub struct Interface {
    pub host: Host,
    pub name: String,
    pub addresses: Vec<IpNet>,
}

impl Interface {
    /// The first IPv4 address, if any.
    pub fn ipv4(&self) -> Option<IpAddr> {
        self.addresses.iter().map(IpNet::addr).find(IpAddr::is_ipv4)
    }

    /// The first IPv6 address, if any.
    pub fn ipv6(&self) -> Option<IpAddr> {
        self.addresses.iter().map(IpNet::addr).find(IpAddr::is_ipv6)
    }
}

impl Host {
    pub(crate) fn new(name: &str, namespace: String, log_dir: PathBuf) -> Self {
        Host {
            inner: Arc::new(HostInner {
                name: name.to_string(),
                namespace,
                log_dir,
                next_interface: AtomicU32::new(0),
                next_process: AtomicU32::new(0),
                env: std::sync::Mutex::new(Vec::new()),
            }),
        }
    }

    /// The name given in the lab (`client`, `nat-home`, ...).
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The network namespace (`plab-<pid>-<seq>-<name>`), for `ip netns exec`.
    pub fn namespace(&self) -> &str {
        &self.inner.namespace
    }

    pub(crate) fn next_interface_name(&self) -> String {
        format!(
            "eth{}",
            self.inner.next_interface.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// Runs `ip <args>` inside this host.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["-n", self.namespace()];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// Adds addresses to an interface of this host (IPv6 without DAD).
    pub(crate) fn add_addresses(&self, interface: &str, addresses: &[IpNet]) -> Result<()> {
        for address in addresses {
            let text = address.to_string();
            let mut args = vec!["addr", "add", text.as_str(), "dev", interface];
            if address.addr().is_ipv6() {
                args.push("nodad");
            }
            self.ip(&args)?;
        }
        Ok(())
    }

    /// Waits until the kernel reports the interface operationally up. Link
    /// state changes are applied by the kernel's linkwatch, batched up to a
    /// second, and IPv6 does not send (not even neighbour solicitations) on
    /// an interface before that: a test that started at once could lose its
    /// first packets.
    pub(crate) fn wait_until_up(&self, interface: &str) -> Result<()> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
        loop {
            let state = self.ip(&["-o", "link", "show", "dev", interface])?;
            if state.contains(" state UP ") {
                return Ok(());
            }
            if std::time::Instant::now() >= deadline {
                return Err(LabError::Invalid(format!(
                    "{interface} in {} did not come up within 3 s: {}",
                    self.name(),
                    state.trim()
                )));
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    /// Routes `destination` (a prefix, or `default`) via a next hop.
    pub fn add_route(&self, destination: &str, via: IpAddr) -> Result<()> {
        let family = if via.is_ipv4() { "-4" } else { "-6" };
        let via = via.to_string();
        self.ip(&[family, "route", "replace", destination, "via", &via])?;
        Ok(())
    }

    /// Sets the default route of the address family of `via`.
    pub fn set_default_route(&self, via: IpAddr) -> Result<()> {
        self.add_route("default", via)
    }

    /// Sets a sysctl inside this host (`net.ipv4.ip_forward`, ...).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        namespace::sysctl(self.namespace(), key, value)
    }

    /// Loads an nftables ruleset (`nft -f -`) inside this host.
    pub fn nft(&self, ruleset: &str) -> Result<()> {
        run_with_input(
            "ip",
            &["netns", "exec", self.namespace(), "nft", "-f", "-"],
            Some(ruleset),
        )?;
        Ok(())
    }

    /// Gives the host its own /etc/resolv.conf: programs started with
    /// [`Host::command`] (`ip netns exec`) see this file there; the lab
    /// removes it with the namespace. Returns its path.
    pub fn set_resolv_conf(&self, text: &str) -> Result<std::path::PathBuf> {
        let path = self.etc_dir()?.join("resolv.conf");
        std::fs::write(&path, text)?;
        Ok(path)
    }

    /// Gives the host its own copy of `/etc/<entry>` (a file or a
    /// directory), so tools that keep their settings there (ufw) change
    /// this host's alone. Returns the copy's path.
    pub fn private_etc(&self, entry: &str) -> Result<std::path::PathBuf> {
        let copy = self.etc_dir()?.join(entry);
        let original = std::path::Path::new("/etc").join(entry);
        run(
            "cp",
            &["-a", &original.to_string_lossy(), &copy.to_string_lossy()],
        )?;
        Ok(copy)
    }

    /// `/etc/netns/<namespace>`: `ip netns exec` bind-mounts each entry
    /// over the one in /etc.
    fn etc_dir(&self) -> Result<std::path::PathBuf> {
        let dir = std::path::Path::new("/etc/netns").join(self.namespace());
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    }

    /// Sets a variable in the environment of every program this host
    /// starts from now on ([`Host::run`], [`Host::command`]).
    pub fn set_env(&self, key: &str, value: &str) {
        let mut env = self.inner.env.lock().unwrap_or_else(|e| e.into_inner());
        env.retain(|(k, _)| k != key);
        env.push((key.to_string(), value.to_string()));
    }

    fn env(&self) -> Vec<(String, String)> {
        self.inner
            .env
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Runs `program args...` inside this host to completion and returns its
    /// stdout; a non-zero exit is an error carrying its stderr.
    pub fn run(&self, program: &str, args: &[&str]) -> Result<String> {
        let env: Vec<String> = self.env().iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut full = vec!["netns", "exec", self.namespace()];
        if !env.is_empty() {
            full.push("env");
            full.extend(env.iter().map(String::as_str));
        }
        full.push(program);
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// A command that runs `program` inside this host; add arguments and
    /// environment, then pass it to [`Host::spawn`] (or run it yourself).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", self.namespace()])
            .arg(program)
            .envs(self.env());
        command
    }

    /// Starts a command made by [`Host::command`] in its own process group,
    /// with stdout and stderr captured to files in the lab's log directory.
    /// The process (and its children) are killed when the handle drops.
    pub fn spawn(&self, command: Command) -> Result<LabProcess> {
        let program = command
            .get_args()
            .nth(3)
            .map(|p| {
                std::path::Path::new(p)
                    .file_name()
                    .unwrap_or(p)
                    .to_string_lossy()
                    .into_owned()
            })
            .ok_or_else(|| LabError::Invalid("spawn needs a command from Host::command".into()))?;
        let n = self.inner.next_process.fetch_add(1, Ordering::Relaxed);
        let stem = self
            .inner
            .log_dir
            .join(format!("{}-{program}-{n}", self.name()));
        LabProcess::spawn(command, format!("{}:{program}", self.name()), &stem)
    }

    /// Runs `f` inside this host's network namespace (see the crate docs).
    pub fn enter<T, F>(&self, f: F) -> Result<T>
    where
        T: Send,
        F: FnOnce() -> T + Send,
    {
        namespace::enter(self.namespace(), f)
    }
}
