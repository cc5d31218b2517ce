//! The host's own firewall, as the gateway finds it: iptables with either
//! backend (nf_tables or legacy) whose FORWARD chain would drop what the
//! gateway forwards (Docker sets its policy to DROP; so do hardened hosts).
//! A packet must pass every firewall on the forward hook, so the gateway's
//! own nftables table cannot let it through alone: the gateway inserts the
//! narrowest pair of rules at the top of FORWARD (of `DOCKER-USER`, Docker's
//! place for them, when it exists): into the tunnel only replies, out of it
//! whatever the tunnel's own filter let through. Each carries the comment
//! `postern-<interface>` (only letters, digits, `-` and `_`, which
//! `iptables -S` prints unquoted), is removed at exit, and a run that died has its
//! rules removed at the next start. Nothing else is touched.
//!
//! Hand-written around the `iptables` commands (as `wg-quick` and Docker
//! do): no crate drives both backends, and the commands are what an admin
//! reads back with `iptables -S`.

use std::process::Command;

/// One iptables binary and the filter table it manages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backend {
    /// `iptables-nft`, `ip6tables-legacy`...
    pub binary: &'static str,
    pub label: &'static str,
}

const BACKENDS: [(Backend, Detect); 4] = [
    (
        Backend {
            binary: "iptables-nft",
            label: "iptables (nf_tables)",
        },
        Detect::Nft("ip"),
    ),
    (
        Backend {
            binary: "ip6tables-nft",
            label: "ip6tables (nf_tables)",
        },
        Detect::Nft("ip6"),
    ),
    (
        Backend {
            binary: "iptables-legacy",
            label: "iptables (legacy)",
        },
        Detect::Legacy("/proc/net/ip_tables_names"),
    ),
    (
        Backend {
            binary: "ip6tables-legacy",
            label: "ip6tables (legacy)",
        },
        Detect::Legacy("/proc/net/ip6_tables_names"),
    ),
];

/// How to tell a backend has a filter table, without creating one (listing
/// with `iptables-legacy` would).
#[derive(Clone, Copy, Debug)]
enum Detect {
    Nft(&'static str),
    Legacy(&'static str),
}

/// A filter table whose FORWARD chain would drop forwarded packets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blocking {
    pub backend: Backend,
    /// Where the rules go: `DOCKER-USER` if it exists, else `FORWARD`.
    pub chain: String,
    /// Why: the policy or the rules.
    pub reason: String,
}

impl Blocking {
    /// The commands an admin would type to open forwarding for `tunnel`.
    pub fn commands(&self, tunnel: &str) -> Vec<String> {
        rules(tunnel)
            .iter()
            .map(|rule| {
                format!(
                    "{} -I {} 1 {}",
                    self.backend.binary,
                    self.chain,
                    rule.join(" ")
                )
            })
            .collect()
    }
}

/// The comment that marks our rules for `tunnel`: characters iptables
/// prints without quotes, so a later run finds them in `iptables -S`.
fn comment(tunnel: &str) -> String {
    let name: String = tunnel
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("postern-{name}")
}

/// The two rules, as iptables arguments after the chain.
fn rules(tunnel: &str) -> [Vec<String>; 2] {
    let comment = comment(tunnel);
    let words = |text: &str| -> Vec<String> { text.split(' ').map(str::to_string).collect() };
    let mut outward = words(&format!("-i {tunnel} -m comment --comment"));
    outward.push(comment.clone());
    outward.extend(words("-j ACCEPT"));
    let mut inward = words(&format!(
        "-o {tunnel} -m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment"
    ));
    inward.push(comment);
    inward.extend(words("-j ACCEPT"));
    [outward, inward]
}

fn run(binary: &str, args: &[&str]) -> Option<String> {
    let output = Command::new(binary).args(args).output().ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

fn has_filter_table(detect: Detect) -> bool {
    match detect {
        Detect::Nft(family) => Command::new("nft")
            .args(["list", "table", family, "filter"])
            .output()
            .is_ok_and(|o| o.status.success()),
        Detect::Legacy(names) => std::fs::read_to_string(names)
            .is_ok_and(|text| text.lines().any(|line| line.trim() == "filter")),
    }
}

/// Whether `rules` (`iptables -S FORWARD`) would drop forwarded packets:
/// a DROP policy, or rules that end in DROP or REJECT (or jump to chains,
/// as Docker's and ufw's do) before anything accepts the tunnel.
pub fn forward_blocks(rules: &str) -> Option<String> {
    let mut reason = None;
    for line in rules.lines() {
        let line = line.trim();
        if line == "-P FORWARD DROP" {
            reason = Some("its FORWARD policy is DROP".to_string());
        } else if line.starts_with("-A FORWARD")
            && (line.ends_with("-j DROP") || line.ends_with("-j REJECT"))
        {
            reason.get_or_insert_with(|| format!("FORWARD has `{line}`"));
        }
    }
    reason
}

/// Every filter table here whose FORWARD chain would drop what the gateway
/// forwards.
pub fn diagnose() -> Vec<Blocking> {
    let mut found = Vec::new();
    for (backend, detect) in BACKENDS {
        if !has_filter_table(detect) {
            continue;
        }
        let Some(forward) = run(backend.binary, &["-w", "-S", "FORWARD"]) else {
            continue;
        };
        let Some(reason) = forward_blocks(&forward) else {
            continue;
        };
        let docker = run(backend.binary, &["-w", "-S", "DOCKER-USER"]).is_some();
        found.push(Blocking {
            backend,
            chain: if docker { "DOCKER-USER" } else { "FORWARD" }.to_string(),
            reason,
        });
    }
    found
}

/// Rules this process inserted; removed on drop.
#[derive(Debug)]
pub struct Opening {
    /// Each rule as inserted: where, and its arguments.
    inserted: Vec<(Blocking, Vec<String>)>,
}

impl Opening {
    /// Removes what a run that died left for `tunnel`, then opens every
    /// blocking filter table for it.
    pub fn open(tunnel: &str) -> Result<Opening, String> {
        remove_leftovers(tunnel);
        let mut opening = Opening {
            inserted: Vec::new(),
        };
        for blocking in diagnose() {
            // Inserted in reverse so the reply rule ends up first; each one
            // recorded at once, so a refusal leaves nothing behind.
            for rule in rules(tunnel).iter().rev() {
                let mut args = vec!["-w", "-I", blocking.chain.as_str(), "1"];
                args.extend(rule.iter().map(String::as_str));
                if run(blocking.backend.binary, &args).is_none() {
                    return Err(format!(
                        "{} refused `{}`",
                        blocking.backend.binary,
                        args.join(" ")
                    ));
                }
                opening.inserted.push((blocking.clone(), rule.clone()));
            }
            tracing::info!(
                firewall = blocking.backend.label,
                chain = %blocking.chain,
                reason = %blocking.reason,
                "the host's firewall would drop forwarded packets: let the tunnel's through"
            );
        }
        Ok(opening)
    }
}

impl Drop for Opening {
    fn drop(&mut self) {
        for (blocking, rule) in &self.inserted {
            let mut args = vec!["-w", "-D", blocking.chain.as_str()];
            args.extend(rule.iter().map(String::as_str));
            if run(blocking.backend.binary, &args).is_none() {
                tracing::warn!(
                    firewall = blocking.backend.label,
                    "could not remove a forward rule"
                );
            }
        }
    }
}

/// Deletes every rule commented `postern-<tunnel>` in FORWARD and
/// DOCKER-USER of every backend that has a filter table.
fn remove_leftovers(tunnel: &str) {
    let marker = format!("--comment {}", comment(tunnel));
    for (backend, detect) in BACKENDS {
        if !has_filter_table(detect) {
            continue;
        }
        for chain in ["FORWARD", "DOCKER-USER"] {
            let Some(listing) = run(backend.binary, &["-w", "-S", chain]) else {
                continue;
            };
            for line in listing.lines().filter(|l| l.contains(&marker)) {
                let Some(rule) = line.strip_prefix(&format!("-A {chain} ")) else {
                    continue;
                };
                let mut args = vec!["-w", "-D", chain];
                args.extend(rule.split_whitespace());
                if run(backend.binary, &args).is_some() {
                    tracing::info!(
                        firewall = backend.label,
                        chain,
                        "removed a forward rule a previous run left"
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_drop_policy_or_a_final_drop_blocks_forwarding() {
        assert_eq!(forward_blocks("-P FORWARD ACCEPT\n"), None);
        assert!(
            forward_blocks("-P FORWARD DROP\n-N DOCKER-USER\n-A FORWARD -j DOCKER-USER\n")
                .unwrap()
                .contains("policy is DROP")
        );
        assert!(
            forward_blocks("-P FORWARD ACCEPT\n-A FORWARD -j REJECT\n")
                .unwrap()
                .contains("-j REJECT")
        );
    }

    #[test]
    fn the_rules_name_the_tunnel_and_let_only_replies_in() {
        let blocking = Blocking {
            backend: BACKENDS[0].0,
            chain: "DOCKER-USER".into(),
            reason: String::new(),
        };
        assert_eq!(
            blocking.commands("postern0"),
            [
                "iptables-nft -I DOCKER-USER 1 -i postern0 -m comment --comment postern-postern0 -j ACCEPT",
                "iptables-nft -I DOCKER-USER 1 -o postern0 -m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment postern-postern0 -j ACCEPT",
            ]
        );
    }
}
