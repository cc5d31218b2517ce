//! Plain nftables: a table of the admin's own (Debian's `/etc/nftables.conf`
//! shape, `table inet filter`) whose forward base chain drops. An accept in
//! another table cannot outvote that drop, so the gateway inserts its pair
//! of rules at the top of that chain, commented `postern-<interface>`, and
//! deletes them by handle. Tables others manage are left to their own
//! mechanism: iptables-nft's (`FORWARD` chains), firewalld's, ours.
//!
//! Read through `nft -j` (the JSON its maintainers keep stable for tools).

use serde_json::Value;

use super::{comment, run};

/// A base chain of the admin's that would drop packets on `hook`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    pub family: String,
    pub table: String,
    pub name: String,
}

impl Chain {
    pub fn label(&self) -> String {
        format!("nftables (table {} {})", self.family, self.table)
    }
}

/// The gateway's two rules, as `nft` statements.
fn rules(tunnel: &str) -> [String; 2] {
    let comment = comment(tunnel);
    [
        format!("iifname \"{tunnel}\" accept comment \"{comment}\""),
        format!("oifname \"{tunnel}\" ct state established,related accept comment \"{comment}\""),
    ]
}

/// What an admin would type to open `chain` for `tunnel`: without the
/// gateway's comment, which marks what a later gateway removes as its own.
pub fn commands(chain: &Chain, tunnel: &str) -> Vec<String> {
    let marker = format!(" comment \"{}\"", comment(tunnel));
    rules(tunnel)
        .iter()
        .map(|rule| {
            format!(
                "nft insert rule {} {} {} {}",
                chain.family,
                chain.table,
                chain.name,
                rule.replace(&marker, "")
            )
        })
        .collect()
}

fn ruleset() -> Vec<Value> {
    run("nft", &["-j", "list", "ruleset"])
        .and_then(|text| serde_json::from_str::<Value>(&text).ok())
        .and_then(|mut value| value.get_mut("nftables").map(Value::take))
        .and_then(|items| match items {
            Value::Array(items) => Some(items),
            _ => None,
        })
        .unwrap_or_default()
}

/// Tables another mechanism owns: iptables-nft's (its chains are named as
/// iptables' are), firewalld's, the daemons' own.
fn managed_elsewhere(family: &str, table: &str, chain: &str) -> bool {
    table == "firewalld"
        || table.starts_with("postern_")
        || (matches!(family, "ip" | "ip6") && chain.chars().all(|c| c.is_ascii_uppercase()))
        || !matches!(family, "ip" | "ip6" | "inet")
}

fn text<'a>(object: &'a Value, key: &str) -> &'a str {
    object.get(key).and_then(Value::as_str).unwrap_or_default()
}

/// Whether a rule's statements end in a verdict that drops, with nothing
/// before it to match on (`drop`, `reject ...`).
fn unconditional_drop(rule: &Value) -> bool {
    let Some(expr) = rule.get("expr").and_then(Value::as_array) else {
        return false;
    };
    // A counter or a log before the verdict is no condition.
    let meaningful: Vec<&Value> = expr
        .iter()
        .filter(|e| e.get("counter").is_none() && e.get("log").is_none())
        .collect();
    meaningful.len() == 1
        && (meaningful[0].get("drop").is_some() || meaningful[0].get("reject").is_some())
}

/// Whether a rule accepts every reply (`ct state established... accept`,
/// matching on nothing else: one for TCP alone would drop the tunnel's UDP).
fn accepts_replies(rule: &Value) -> bool {
    let Some(expr) = rule.get("expr").and_then(Value::as_array) else {
        return false;
    };
    let on_state = |e: &Value| {
        e.get("match").is_some_and(|m| {
            text(m, "op") != "!="
                && m.pointer("/left/ct/key").and_then(Value::as_str) == Some("state")
                && serde_json::to_string(&m["right"])
                    .unwrap_or_default()
                    .contains("established")
        })
    };
    expr.last().is_some_and(|last| last.get("accept").is_some())
        && expr.iter().any(on_state)
        && expr
            .iter()
            .all(|e| on_state(e) || e.get("counter").is_some() || e.get("accept").is_some())
}

/// Base chains of the admin's on `hook` that would drop packets, each with
/// why and whether it accepts replies before that.
pub fn diagnose(hook: &str) -> Vec<(Chain, String, bool)> {
    let items = ruleset();
    let mut found = Vec::new();
    for item in &items {
        let Some(chain) = item.get("chain") else {
            continue;
        };
        let (family, table, name) = (
            text(chain, "family"),
            text(chain, "table"),
            text(chain, "name"),
        );
        if text(chain, "hook") != hook
            || text(chain, "type") != "filter"
            || managed_elsewhere(family, table, name)
        {
            continue;
        }
        let rules: Vec<&Value> = items
            .iter()
            .filter_map(|i| i.get("rule"))
            .filter(|r| {
                text(r, "family") == family && text(r, "table") == table && text(r, "chain") == name
            })
            .collect();
        let mut replies_pass = false;
        let mut reason =
            (text(chain, "policy") == "drop").then(|| "its policy is drop".to_string());
        for rule in &rules {
            if unconditional_drop(rule) {
                reason = Some("it ends in a drop or reject".to_string());
                break;
            }
            replies_pass |= accepts_replies(rule);
        }
        if let Some(reason) = reason {
            found.push((
                Chain {
                    family: family.to_string(),
                    table: table.to_string(),
                    name: name.to_string(),
                },
                format!("chain {name}: {reason}"),
                replies_pass,
            ));
        }
    }
    found
}

/// Inserts the gateway's rules for `tunnel` at the top of `chain`.
pub fn open(chain: &Chain, tunnel: &str) -> Result<(), String> {
    for rule in rules(tunnel).iter().rev() {
        let statement = format!(
            "insert rule {} {} {} {rule}",
            chain.family, chain.table, chain.name
        );
        let args: Vec<&str> = statement.split(' ').collect();
        if run("nft", &args).is_none() {
            return Err(format!("nft refused `{statement}`"));
        }
    }
    Ok(())
}

/// Deletes every rule commented `postern-<tunnel>` in the admin's tables
/// (`only`: in that chain alone); returns how many.
pub fn remove(tunnel: &str, only: Option<&Chain>) -> usize {
    let marker = comment(tunnel);
    let mut removed = 0;
    for item in ruleset() {
        let Some(rule) = item.get("rule") else {
            continue;
        };
        let (family, table, chain) = (
            text(rule, "family"),
            text(rule, "table"),
            text(rule, "chain"),
        );
        if text(rule, "comment") != marker
            || table.starts_with("postern_")
            || only.is_some_and(|c| c.family != family || c.table != table || c.name != chain)
        {
            continue;
        }
        let Some(handle) = rule.get("handle").and_then(Value::as_u64) else {
            continue;
        };
        let handle = handle.to_string();
        if run(
            "nft",
            &["delete", "rule", family, table, chain, "handle", &handle],
        )
        .is_some()
        {
            removed += 1;
        } else {
            tracing::warn!(family, table, chain, "could not remove a forward rule");
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(expr: &str) -> Value {
        serde_json::from_str(&format!("{{\"expr\": {expr}}}")).unwrap()
    }

    #[test]
    fn only_a_bare_verdict_is_an_unconditional_drop() {
        assert!(unconditional_drop(&rule(
            r#"[{"counter": {"packets": 0, "bytes": 0}}, {"drop": null}]"#
        )));
        assert!(unconditional_drop(&rule(
            r#"[{"reject": {"type": "icmpx", "expr": "admin-prohibited"}}]"#
        )));
        assert!(!unconditional_drop(&rule(
            r#"[{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "eth9"}}, {"drop": null}]"#
        )));
    }

    #[test]
    fn a_conntrack_accept_lets_replies_through() {
        assert!(accepts_replies(&rule(
            r#"[{"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}}, {"accept": null}]"#
        )));
        assert!(!accepts_replies(&rule(
            r#"[{"match": {"op": "==", "left": {"ct": {"key": "state"}}, "right": "invalid"}}, {"drop": null}]"#
        )));
        // Replies for TCP alone leave the tunnel's UDP out.
        assert!(!accepts_replies(&rule(
            r#"[{"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}}, {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": "established"}}, {"accept": null}]"#
        )));
    }

    #[test]
    fn iptables_and_firewalld_tables_are_left_to_their_own_mechanism() {
        assert!(managed_elsewhere("ip", "filter", "FORWARD"));
        assert!(managed_elsewhere("inet", "firewalld", "filter_FORWARD"));
        assert!(managed_elsewhere("inet", "postern_postern0", "forward"));
        assert!(!managed_elsewhere("inet", "filter", "forward"));
        assert!(!managed_elsewhere("ip", "filter", "forward"));
    }

    #[test]
    fn the_rules_an_admin_would_add() {
        let chain = Chain {
            family: "inet".into(),
            table: "filter".into(),
            name: "forward".into(),
        };
        assert_eq!(
            commands(&chain, "postern0"),
            [
                "nft insert rule inet filter forward iifname \"postern0\" accept",
                "nft insert rule inet filter forward oifname \"postern0\" ct state established,related accept",
            ]
        );
    }
}
