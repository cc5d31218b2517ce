//! The host's own firewall, as the daemons find it. A packet must pass every
//! firewall on a hook, so the daemons' own nftables tables cannot let it
//! through alone where the admin's drops it.
//!
//! The gateway: where the host's firewall would drop what it forwards
//! (Docker sets iptables' FORWARD policy to DROP; ufw's "routed deny", a
//! hardened `/etc/nftables.conf`, firewalld's default zone do the same), it
//! makes the narrowest change each firewall knows: two rules (out of the
//! tunnel what its own filter let through, into it only replies) at the top
//! of the iptables chain ([`iptables`], ufw's and Docker's included) or of
//! the admin's nftables chain ([`nftables`]), or the tunnel bound to
//! firewalld's `trusted` zone at runtime ([`firewalld`]). Each is undone at
//! exit; what a run that died left is found by its `postern-<interface>`
//! comment (or runtime-only binding) and removed at the next start.
//! Nothing else is touched.
//!
//! The client: whether the host's input filtering would drop the tunnel's
//! replies ([`diagnose_input`]); it changes nothing there, it says so.

mod firewalld;
mod iptables;
mod nftables;

use std::process::Command;

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

/// Runs a firewall tool; its stdout if it succeeded.
fn run(binary: &str, args: &[&str]) -> Option<String> {
    let output = Command::new(binary).args(args).output().ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

/// A firewall on this host that would drop what the gateway forwards.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blocking {
    /// The firewall as its admin knows it: `iptables (nf_tables)`, `ufw
    /// (iptables (legacy))`, `nftables (table inet filter)`, `firewalld`.
    pub firewall: String,
    /// Why: its policy, its rules, its zone.
    pub reason: String,
    place: Place,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Place {
    Iptables(iptables::Blocked),
    Nftables(nftables::Chain),
    Firewalld,
}

impl Blocking {
    /// The commands an admin would type to let the tunnel's traffic
    /// through (what the gateway does itself unless told not to).
    pub fn commands(&self, tunnel: &str) -> Vec<String> {
        match &self.place {
            Place::Iptables(blocked) => iptables::commands(blocked, tunnel),
            Place::Nftables(chain) => nftables::commands(chain, tunnel),
            Place::Firewalld => firewalld::commands(tunnel),
        }
    }
}

/// Every firewall here that would drop what the gateway forwards out of
/// `tunnel`.
pub fn diagnose(tunnel: &str) -> Vec<Blocking> {
    let mut found: Vec<Blocking> = iptables::diagnose_forward()
        .into_iter()
        .map(|blocked| Blocking {
            firewall: if blocked.ufw {
                format!("ufw ({})", blocked.backend.label)
            } else {
                blocked.backend.label.to_string()
            },
            reason: blocked.reason.clone(),
            place: Place::Iptables(blocked),
        })
        .collect();
    found.extend(
        nftables::diagnose("forward")
            .into_iter()
            .map(|(chain, reason, _)| Blocking {
                firewall: chain.label(),
                reason,
                place: Place::Nftables(chain),
            }),
    );
    found.extend(firewalld::diagnose(tunnel).map(|reason| Blocking {
        firewall: "firewalld".to_string(),
        reason,
        place: Place::Firewalld,
    }));
    found
}

/// What this process changed; undone on drop.
#[derive(Debug)]
pub struct Opening {
    tunnel: String,
    undo: Vec<Undo>,
}

#[derive(Debug)]
enum Undo {
    Iptables(iptables::Backend, String, Vec<String>),
    Nftables(nftables::Chain),
    Firewalld,
}

impl Opening {
    /// Removes what a run that died left for `tunnel`, then opens every
    /// firewall that would drop what it forwards.
    pub fn open(tunnel: &str) -> Result<Opening, String> {
        iptables::remove_leftovers(tunnel);
        if nftables::remove(tunnel, None) > 0 {
            tracing::info!(tunnel, "removed nftables rules a previous run left");
        }
        firewalld::remove_leftover(tunnel);
        let mut opening = Opening {
            tunnel: tunnel.to_string(),
            undo: Vec::new(),
        };
        for blocking in diagnose(tunnel) {
            // Each change is recorded before the next is tried, so an error
            // leaves nothing that the drop would not undo.
            match &blocking.place {
                Place::Iptables(blocked) => {
                    let mut done = Vec::new();
                    let result = iptables::open(blocked, tunnel, &mut done);
                    opening.undo.extend(
                        done.into_iter()
                            .map(|(backend, chain, rule)| Undo::Iptables(backend, chain, rule)),
                    );
                    result?;
                }
                Place::Nftables(chain) => {
                    opening.undo.push(Undo::Nftables(chain.clone()));
                    nftables::open(chain, tunnel)?;
                }
                Place::Firewalld => {
                    firewalld::open(tunnel)?;
                    opening.undo.push(Undo::Firewalld);
                }
            }
            tracing::info!(
                firewall = %blocking.firewall,
                reason = %blocking.reason,
                "the host's firewall would drop forwarded packets: let the tunnel's through"
            );
        }
        Ok(opening)
    }
}

impl Drop for Opening {
    fn drop(&mut self) {
        for undo in self.undo.iter().rev() {
            match undo {
                Undo::Iptables(backend, chain, rule) => iptables::remove(*backend, chain, rule),
                Undo::Nftables(chain) => {
                    nftables::remove(&self.tunnel, Some(chain));
                }
                Undo::Firewalld => firewalld::remove(&self.tunnel),
            }
        }
    }
}

/// A firewall on this host that refuses new incoming packets, as the
/// client sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Incoming {
    pub firewall: String,
    pub reason: String,
    /// Whether it accepts replies (connection tracking) before refusing:
    /// then the tunnel works for every connection this host opens; if not,
    /// the gateway's answers are dropped and nothing works.
    pub replies_pass: bool,
    /// The rule that lets replies in, for an admin to add.
    pub fix: String,
}

/// Every firewall here that refuses new incoming packets on `tunnel` (or on
/// the interfaces the tunnel's UDP arrives through).
pub fn diagnose_input(tunnel: &str) -> Vec<Incoming> {
    let mut found: Vec<Incoming> = iptables::diagnose_input()
        .into_iter()
        .map(|(backend, firewall, reason, replies_pass)| Incoming {
            firewall,
            reason,
            replies_pass,
            fix: format!(
                "{} -I INPUT 1 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
                backend.binary
            ),
        })
        .collect();
    found.extend(
        nftables::diagnose("input")
            .into_iter()
            .map(|(chain, reason, replies_pass)| Incoming {
                firewall: chain.label(),
                fix: format!(
                    "nft insert rule {} {} {} ct state established,related accept",
                    chain.family, chain.table, chain.name
                ),
                reason,
                replies_pass,
            }),
    );
    found.extend(firewalld::input_zone(tunnel).map(|zone| Incoming {
        firewall: "firewalld".to_string(),
        reason: format!("zone `{zone}` judges new connections into {tunnel}"),
        replies_pass: true,
        fix: String::new(),
    }));
    found
}
