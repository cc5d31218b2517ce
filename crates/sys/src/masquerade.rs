//! The gateway's masquerade: traffic from client tunnel addresses leaves
//! with the gateway's own address, so resources need no route back. One
//! nftables table of our own, created at start and deleted at exit (and
//! replaced if a crashed run left it behind). Driven through `nft -f -`: the
//! ruleset is the one an operator would type to inspect or reproduce it.

use std::io::Write;
use std::process::{Command, Stdio};

use ipnet::IpNet;

#[derive(Debug, thiserror::Error)]
pub enum MasqueradeError {
    #[error("cannot run nft (install nftables): {0}")]
    Spawn(std::io::Error),
    #[error("nft refused the ruleset: {0}")]
    Refused(String),
    #[error("cannot enable IP forwarding ({key}): {source}")]
    Forwarding {
        key: &'static str,
        source: std::io::Error,
    },
}

/// The table; deleted on drop.
#[derive(Debug)]
pub struct Masquerade {
    table: String,
}

fn nft(ruleset: &str) -> Result<(), MasqueradeError> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(MasqueradeError::Spawn)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(ruleset.as_bytes())
            .map_err(MasqueradeError::Spawn)?;
    }
    let output = child.wait_with_output().map_err(MasqueradeError::Spawn)?;
    if output.status.success() {
        Ok(())
    } else {
        Err(MasqueradeError::Refused(
            String::from_utf8_lossy(&output.stderr).trim().to_string(),
        ))
    }
}

/// Turns on IPv4 and IPv6 forwarding, which a gateway needs.
pub fn enable_forwarding() -> Result<(), MasqueradeError> {
    for key in [
        "/proc/sys/net/ipv4/ip_forward",
        "/proc/sys/net/ipv6/conf/all/forwarding",
    ] {
        std::fs::write(key, "1").map_err(|source| MasqueradeError::Forwarding { key, source })?;
    }
    Ok(())
}

impl Masquerade {
    /// Masquerades packets from `sources` that leave through any interface
    /// but `tunnel`.
    pub fn install(table: &str, tunnel: &str, sources: &[IpNet]) -> Result<Self, MasqueradeError> {
        let mut rules = String::new();
        for source in sources {
            let family = if source.addr().is_ipv4() { "ip" } else { "ip6" };
            rules.push_str(&format!(
                "    {family} saddr {source} oifname != \"{tunnel}\" masquerade\n"
            ));
        }
        // Declaring the table first makes the delete succeed when there is
        // none; a leftover from a crashed run is replaced.
        let ruleset = format!(
            "table inet {table} {{}}\ndelete table inet {table}\n\
             table inet {table} {{\n  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n{rules}  }}\n}}\n"
        );
        nft(&ruleset)?;
        Ok(Masquerade {
            table: table.to_string(),
        })
    }
}

impl Drop for Masquerade {
    fn drop(&mut self) {
        if let Err(error) = nft(&format!("delete table inet {}\n", self.table)) {
            tracing::warn!(table = %self.table, %error, "could not remove the nftables table");
        }
    }
}
