//! The daemons' nftables tables and the forwarding sysctls (one table of
//! our own per purpose, replaced if a crashed run left it, deleted at exit;
//! driven through `nft -f -`, so the ruleset is the one an operator would
//! type to inspect or reproduce it):
//! - the gateway's: masquerade for clients' traffic leaving the tunnel, and
//!   a forward filter that lets into the tunnel only answers to flows the
//!   clients opened (a host behind the gateway that routes the device range
//!   to it reaches no client), and nothing from one client to another;
//! - the client's: the DNS stub's sentinel addresses answer this host only
//!   (Linux would otherwise accept them from any interface).

use std::io::Write;
use std::net::IpAddr;
use std::process::{Command, Stdio};

use ipnet::IpNet;

#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error("cannot run nft (install nftables): {0}")]
    Spawn(std::io::Error),
    #[error("nft refused the ruleset: {0}")]
    Refused(String),
    #[error("cannot set IP forwarding ({key}): {source}")]
    Forwarding {
        key: &'static str,
        source: std::io::Error,
    },
}

fn nft(ruleset: &str) -> Result<(), FirewallError> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(FirewallError::Spawn)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(ruleset.as_bytes())
            .map_err(FirewallError::Spawn)?;
    }
    let output = child.wait_with_output().map_err(FirewallError::Spawn)?;
    if output.status.success() {
        Ok(())
    } else {
        Err(FirewallError::Refused(
            String::from_utf8_lossy(&output.stderr).trim().to_string(),
        ))
    }
}

/// One nftables table of ours; deleted on drop.
#[derive(Debug)]
pub struct Table {
    name: String,
}

impl Table {
    /// Installs `body` as table `name` (family inet), replacing a leftover.
    fn install(name: &str, body: &str) -> Result<Table, FirewallError> {
        // Declaring the table first makes the delete succeed when there is
        // none.
        nft(&format!(
            "table inet {name} {{}}\ndelete table inet {name}\ntable inet {name} {{\n{body}}}\n"
        ))?;
        Ok(Table {
            name: name.to_string(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Table {
    fn drop(&mut self) {
        if let Err(error) = nft(&format!("delete table inet {}\n", self.name)) {
            tracing::warn!(table = %self.name, %error, "could not remove the nftables table");
        }
    }
}

/// The gateway's rules for its tunnel interface `tunnel`: masquerade of
/// `sources` leaving through any other interface, and a forward filter
/// into the tunnel.
pub fn gateway_rules(tunnel: &str, sources: &[IpNet]) -> String {
    let mut masquerade = String::new();
    for source in sources {
        let family = if source.addr().is_ipv4() { "ip" } else { "ip6" };
        masquerade.push_str(&format!(
            "    {family} saddr {source} oifname != \"{tunnel}\" masquerade\n"
        ));
    }
    format!(
        "  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n{masquerade}  }}\n\
         \x20 chain forward {{\n    type filter hook forward priority filter; policy accept;\n\
         \x20   iifname \"{tunnel}\" oifname \"{tunnel}\" drop\n\
         \x20   oifname \"{tunnel}\" ct state established,related accept\n\
         \x20   oifname \"{tunnel}\" drop\n  }}\n"
    )
}

/// Installs the gateway's table (see [`gateway_rules`]).
pub fn install_gateway(
    table: &str,
    tunnel: &str,
    sources: &[IpNet],
) -> Result<Table, FirewallError> {
    Table::install(table, &gateway_rules(tunnel, sources))
}

/// The client's rules: packets to the DNS stub's sentinels come from this
/// host (`lo`) or not at all.
pub fn stub_rules(sentinels: &[IpAddr]) -> String {
    let mut rules = String::new();
    for sentinel in sentinels {
        let family = if sentinel.is_ipv4() { "ip" } else { "ip6" };
        rules.push_str(&format!(
            "    {family} daddr {sentinel} iifname != \"lo\" drop\n"
        ));
    }
    format!(
        "  chain input {{\n    type filter hook input priority filter; policy accept;\n{rules}  }}\n"
    )
}

/// Installs the client's table (see [`stub_rules`]).
pub fn install_stub(table: &str, sentinels: &[IpAddr]) -> Result<Table, FirewallError> {
    Table::install(table, &stub_rules(sentinels))
}

const FORWARDING: [&str; 2] = [
    "/proc/sys/net/ipv4/ip_forward",
    "/proc/sys/net/ipv6/conf/all/forwarding",
];

/// IPv4 and IPv6 forwarding on while it lives; what was there before comes
/// back on drop.
#[derive(Debug)]
pub struct Forwarding {
    before: Vec<(&'static str, String)>,
}

impl Forwarding {
    pub fn enable() -> Result<Forwarding, FirewallError> {
        let mut before = Vec::new();
        for key in FORWARDING {
            let was = std::fs::read_to_string(key)
                .map_err(|source| FirewallError::Forwarding { key, source })?;
            std::fs::write(key, "1").map_err(|source| FirewallError::Forwarding { key, source })?;
            before.push((key, was.trim().to_string()));
        }
        Ok(Forwarding { before })
    }
}

impl Drop for Forwarding {
    fn drop(&mut self) {
        for (key, was) in &self.before {
            if let Err(error) = std::fs::write(key, was) {
                tracing::warn!(key, %error, "could not restore the forwarding setting");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gateway_lets_into_the_tunnel_only_answers_and_no_client_to_client() {
        let rules = gateway_rules("postern0", &["100.64.0.0/11".parse().unwrap()]);
        assert!(rules.contains("ip saddr 100.64.0.0/11 oifname != \"postern0\" masquerade"));
        let forward: Vec<&str> = rules[rules.find("chain forward").unwrap()..]
            .lines()
            .map(str::trim)
            .collect();
        let order: Vec<usize> = [
            "iifname \"postern0\" oifname \"postern0\" drop",
            "oifname \"postern0\" ct state established,related accept",
            "oifname \"postern0\" drop",
        ]
        .iter()
        .map(|rule| {
            forward
                .iter()
                .position(|line| line == rule)
                .unwrap_or_else(|| panic!("{rule} in {forward:?}"))
        })
        .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{forward:?}");
    }

    #[test]
    fn the_stub_answers_this_host_only() {
        let rules = stub_rules(&["100.100.111.1".parse().unwrap(), "fd7e::1".parse().unwrap()]);
        assert!(rules.contains("ip daddr 100.100.111.1 iifname != \"lo\" drop"));
        assert!(rules.contains("ip6 daddr fd7e::1 iifname != \"lo\" drop"));
    }
}
