//! The host firewalls servers really run, started inside a lab host: ufw
//! (with its settings copied into the host's own /etc, so enabling it
//! changes nothing outside the lab) and firewalld (with a D-Bus bus of its
//! own, since `firewall-cmd` talks to the daemon over the system bus).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::error::{LabError, Result};
use crate::host::Host;
use crate::process::LabProcess;

/// firewalld running in a host; stopped (with its bus) on drop.
#[derive(Debug)]
pub struct Firewalld {
    daemon: Option<LabProcess>,
    bus: Option<LabProcess>,
    socket: PathBuf,
}

impl Drop for Firewalld {
    fn drop(&mut self) {
        drop(self.daemon.take());
        drop(self.bus.take());
        let _ = std::fs::remove_file(&self.socket);
    }
}

impl Host {
    /// Enables ufw as Ubuntu's servers have it: deny incoming, allow
    /// outgoing, deny routed.
    pub fn enable_ufw(&self) -> Result<()> {
        self.private_etc("ufw")?;
        self.private_etc("default")?;
        self.run("ufw", &["default", "deny", "routed"])?;
        self.run("ufw", &["--force", "enable"])?;
        Ok(())
    }

    /// Starts firewalld with Debian's configuration (default zone
    /// `public`, nftables backend) and points every program this host
    /// starts afterwards at its bus.
    pub fn start_firewalld(&self) -> Result<Firewalld> {
        let socket = std::env::temp_dir().join(format!("{}-bus", self.namespace()));
        let _ = std::fs::remove_file(&socket);
        let address = format!("unix:path={}", socket.display());
        let mut bus = self.command("dbus-daemon");
        bus.args(["--session", "--nofork", &format!("--address={address}")]);
        let bus = self.spawn(bus)?;
        let mut firewalld = Firewalld {
            daemon: None,
            bus: Some(bus),
            socket,
        };
        wait(Duration::from_secs(5), || firewalld.socket.exists())
            .map_err(|_| LabError::Invalid("dbus-daemon made no socket in 5 s".into()))?;
        self.set_env("DBUS_SYSTEM_BUS_ADDRESS", &address);
        let mut daemon = self.command("firewalld");
        daemon.args(["--nofork", "--nopid", "--log-target", "console"]);
        firewalld.daemon = Some(self.spawn(daemon)?);
        wait(Duration::from_secs(30), || {
            self.run("firewall-cmd", &["--state"]).is_ok()
        })
        .map_err(|_| LabError::Invalid("firewalld did not start in 30 s".into()))?;
        Ok(firewalld)
    }
}

fn wait(limit: Duration, mut ready: impl FnMut() -> bool) -> std::result::Result<(), ()> {
    let started = Instant::now();
    while !ready() {
        if started.elapsed() > limit {
            return Err(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}
