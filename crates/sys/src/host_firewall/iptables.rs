//! iptables with either backend (nf_tables or legacy), ufw's included (ufw
//! writes iptables rules): the gateway inserts its pair of rules at the top
//! of FORWARD, or of `DOCKER-USER` (Docker's place for them) when it
//! exists. Each carries the comment `postern-<interface>`, which
//! `iptables -S` prints unquoted, so a later run finds what a dead one left.
//!
//! Hand-written around the `iptables` commands (as `wg-quick` and Docker
//! do): no crate drives both backends, and the commands are what an admin
//! reads back with `iptables -S`.

use super::{comment, run};

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

/// A filter table whose chain `name` (the hook's chain FORWARD or INPUT)
/// would drop what the daemon needs through.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blocked {
    pub backend: Backend,
    /// Where the gateway's rules go: `DOCKER-USER` if it exists, else
    /// `FORWARD`.
    pub chain: String,
    pub reason: String,
    /// ufw manages this table: an admin opens it with `ufw route allow`.
    pub ufw: bool,
}

/// The gateway's two rules, as iptables arguments after the chain: out of
/// the tunnel whatever its own filter let through, into it only replies.
pub fn rules(tunnel: &str) -> [Vec<String>; 2] {
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

/// What an admin would type to open `blocked` for `tunnel`: the gateway's
/// rules without its comment, so a later gateway never takes the admin's
/// rules for leftovers of its own.
pub fn commands(blocked: &Blocked, tunnel: &str) -> Vec<String> {
    if blocked.ufw {
        // ufw's own forward chains already let replies back.
        return vec![format!("ufw route allow in on {tunnel}")];
    }
    let marker = comment(tunnel);
    rules(tunnel)
        .iter()
        .map(|rule| {
            let words: Vec<&str> = rule
                .iter()
                .map(String::as_str)
                .filter(|w| *w != marker)
                .collect();
            let rule = words.join(" ").replace(" -m comment --comment", "");
            format!("{} -I {} 1 {rule}", blocked.backend.binary, blocked.chain)
        })
        .collect()
}

fn has_filter_table(detect: Detect) -> bool {
    match detect {
        Detect::Nft(family) => run("nft", &["list", "table", family, "filter"]).is_some(),
        Detect::Legacy(names) => std::fs::read_to_string(names)
            .is_ok_and(|text| text.lines().any(|line| line.trim() == "filter")),
    }
}

/// Whether `rules` (`iptables -S <chain>`) would drop packets: a DROP
/// policy, or an unconditional DROP or REJECT (ufw and firewalld end their
/// chains so) before anything accepts them. `accepts` names rules that let
/// the packets in question through anyway.
pub fn chain_blocks(rules: &str, chain: &str, accepts: impl Fn(&str) -> bool) -> Option<String> {
    let mut policy = None;
    let append = format!("-A {chain} ");
    for line in rules.lines().map(str::trim) {
        if line == format!("-P {chain} DROP") {
            policy = Some(format!("its {chain} policy is DROP"));
        } else if let Some(rule) = line.strip_prefix(&append) {
            if accepts(line) {
                return None;
            }
            if rule.starts_with("-j DROP") || rule.starts_with("-j REJECT") {
                return Some(format!("{chain} has `{line}`"));
            }
        }
    }
    policy
}

/// Whether `rules` (`iptables -S FORWARD`) would drop forwarded packets.
pub fn forward_blocks(rules: &str) -> Option<String> {
    chain_blocks(rules, "FORWARD", |_| false)
}

/// Every filter table here whose FORWARD chain would drop what the gateway
/// forwards.
pub fn diagnose_forward() -> Vec<Blocked> {
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
        found.push(Blocked {
            backend,
            chain: if docker { "DOCKER-USER" } else { "FORWARD" }.to_string(),
            reason,
            ufw: forward.contains("-j ufw-before-forward"),
        });
    }
    found
}

/// Whether an INPUT rule accepts every reply: a conntrack match and
/// nothing else (one for TCP alone would drop the tunnel's UDP).
fn accepts_replies(line: &str) -> bool {
    let Some(rule) = line.strip_prefix("-A INPUT ") else {
        return false;
    };
    let rest = rule
        .replace("-m conntrack --ctstate ", "")
        .replace("-m state --state ", "");
    let words: Vec<&str> = rest.split_whitespace().collect();
    matches!(words.as_slice(), [states, "-j", "ACCEPT"] if states.contains("ESTABLISHED"))
}

/// Every filter table here whose INPUT chain would drop incoming packets,
/// with whether it accepts replies (connection tracking) before that.
pub fn diagnose_input() -> Vec<(Backend, String, String, bool)> {
    let mut found = Vec::new();
    for (backend, detect) in BACKENDS {
        if !has_filter_table(detect) {
            continue;
        }
        let Some(input) = run(backend.binary, &["-w", "-S", "INPUT"]) else {
            continue;
        };
        let Some(reason) = chain_blocks(&input, "INPUT", |_| false) else {
            continue;
        };
        let ufw = input.contains("-j ufw-before-input");
        // ufw's before-input chain accepts replies first thing; so does any
        // conntrack rule an admin wrote.
        let replies_pass = ufw || chain_blocks(&input, "INPUT", accepts_replies).is_none();
        let label = if ufw {
            format!("ufw ({})", backend.label)
        } else {
            backend.label.to_string()
        };
        found.push((backend, label, reason, replies_pass));
    }
    found
}

/// Inserts the gateway's rules for `tunnel` into `blocked`; each one is
/// recorded (in `done`) at once, so a refusal leaves nothing unrecorded.
pub fn open(
    blocked: &Blocked,
    tunnel: &str,
    done: &mut Vec<(Backend, String, Vec<String>)>,
) -> Result<(), String> {
    // Inserted in reverse so the reply rule ends up first.
    for rule in rules(tunnel).iter().rev() {
        let mut args = vec!["-w", "-I", blocked.chain.as_str(), "1"];
        args.extend(rule.iter().map(String::as_str));
        if run(blocked.backend.binary, &args).is_none() {
            return Err(format!(
                "{} refused `{}`",
                blocked.backend.binary,
                args.join(" ")
            ));
        }
        done.push((blocked.backend, blocked.chain.clone(), rule.clone()));
    }
    Ok(())
}

/// Deletes one rule [`open`] inserted.
pub fn remove(backend: Backend, chain: &str, rule: &[String]) {
    let mut args = vec!["-w", "-D", chain];
    args.extend(rule.iter().map(String::as_str));
    if run(backend.binary, &args).is_none() {
        tracing::warn!(firewall = backend.label, "could not remove a forward rule");
    }
}

/// Whether an `iptables -S` line carries exactly the comment `marker`
/// (`postern-pg` must not match a rule of `postern-pg2`'s).
fn carries(line: &str, marker: &str) -> bool {
    let words: Vec<&str> = line.split_whitespace().collect();
    words
        .windows(2)
        .any(|w| w[0] == "--comment" && w[1] == marker)
}

/// Deletes every rule commented `postern-<tunnel>` in FORWARD and
/// DOCKER-USER of every backend that has a filter table.
pub fn remove_leftovers(tunnel: &str) {
    let marker = comment(tunnel);
    for (backend, detect) in BACKENDS {
        if !has_filter_table(detect) {
            continue;
        }
        for chain in ["FORWARD", "DOCKER-USER"] {
            let Some(listing) = run(backend.binary, &["-w", "-S", chain]) else {
                continue;
            };
            for line in listing.lines().filter(|line| carries(line, &marker)) {
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
    fn a_leftover_is_recognised_by_its_exact_comment() {
        let line = "-A FORWARD -i pg2 -m comment --comment postern-pg2 -j ACCEPT";
        assert!(carries(line, "postern-pg2"));
        assert!(!carries(line, "postern-pg"), "another gateway's rule");
        assert!(!carries("-A FORWARD -i pg -j ACCEPT", "postern-pg"));
    }

    #[test]
    fn an_input_chain_that_accepts_replies_first_lets_them_through() {
        let conntrack = accepts_replies;
        let tcp_only =
            "-P INPUT DROP\n-A INPUT -p tcp -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n";
        assert!(chain_blocks(tcp_only, "INPUT", conntrack).is_some());
        let bare = "-P INPUT DROP\n-A INPUT -p tcp --dport 22 -j ACCEPT\n";
        assert!(chain_blocks(bare, "INPUT", conntrack).is_some());
        let tracked =
            "-P INPUT DROP\n-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n";
        assert_eq!(chain_blocks(tracked, "INPUT", conntrack), None);
        // A reject before the conntrack rule wins.
        let late = "-P INPUT ACCEPT\n-A INPUT -j REJECT\n-A INPUT -m conntrack --ctstate ESTABLISHED -j ACCEPT\n";
        assert!(chain_blocks(late, "INPUT", conntrack).is_some());
    }

    #[test]
    fn the_rules_name_the_tunnel_and_let_only_replies_in() {
        let blocked = Blocked {
            backend: BACKENDS[0].0,
            chain: "DOCKER-USER".into(),
            reason: String::new(),
            ufw: false,
        };
        assert_eq!(
            rules("postern0")[1].join(" "),
            "-o postern0 -m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment postern-postern0 -j ACCEPT"
        );
        // What an admin types carries no comment of ours: a later gateway
        // must not remove it as its own leftover.
        assert_eq!(
            commands(&blocked, "postern0"),
            [
                "iptables-nft -I DOCKER-USER 1 -i postern0 -j ACCEPT",
                "iptables-nft -I DOCKER-USER 1 -o postern0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
            ]
        );
        let ufw = Blocked {
            ufw: true,
            ..blocked
        };
        assert_eq!(
            commands(&ufw, "postern0"),
            ["ufw route allow in on postern0"]
        );
    }
}
