//! firewalld (RHEL, Fedora, SUSE): an interface in no zone falls into the
//! default zone, whose forward chain rejects what is not forwarded inside
//! the zone. firewalld rebuilds its tables on every reload, so rules
//! inserted into them would vanish; its own way is a zone for the
//! interface. The gateway binds its tunnel to `trusted` at runtime only
//! (`firewall-cmd --zone=trusted --add-interface`, which a reload keeps and
//! a restart of firewalld forgets), and unbinds it at exit. Trusting the
//! tunnel admits nothing a host without firewalld would refuse: only
//! packets the gateway's own filter authorized ever enter it, and packets
//! into the tunnel are still judged by the zone they come from (replies
//! only).
//!
//! A runtime-only binding of the tunnel to `trusted` is what a dead run
//! leaves, and firewalld keeps no mark of who made one: a binding an admin
//! made by hand at runtime is taken for a leftover (removed at start, made
//! again and removed at exit). One made `--permanent` is left alone.
//!
//! Driven through `firewall-cmd`, the client its admins use.

use super::run;

const ZONE: &str = "trusted";

fn firewall_cmd(args: &[&str]) -> Option<String> {
    run("firewall-cmd", args).map(|out| out.trim().to_string())
}

/// firewalld runs here. Its table is looked for first: `firewall-cmd`
/// is a Python program that takes a good part of a second to start, and
/// most hosts have no firewalld. (firewalld's deprecated iptables backend
/// leaves no such table; its chains are then opened as iptables'.)
fn running() -> bool {
    run("nft", &["list", "table", "inet", "firewalld"]).is_some()
        && firewall_cmd(&["--state"]).is_some_and(|state| state == "running")
}

/// The zone `tunnel` is bound to, at runtime or (`permanent`) in the saved
/// configuration.
fn zone_of(tunnel: &str, permanent: bool) -> Option<String> {
    let interface = format!("--get-zone-of-interface={tunnel}");
    let mut args = vec![interface.as_str()];
    if permanent {
        args.insert(0, "--permanent");
    }
    firewall_cmd(&args).filter(|zone| !zone.is_empty())
}

/// Why firewalld would reject what the gateway forwards out of `tunnel`,
/// if it would. An interface an admin bound to a zone is theirs to judge.
pub fn diagnose(tunnel: &str) -> Option<String> {
    if !running() || zone_of(tunnel, false).is_some() {
        return None;
    }
    let default = firewall_cmd(&["--get-default-zone"])?;
    let target = firewall_cmd(&["--permanent", &format!("--zone={default}"), "--get-target"])
        .unwrap_or_default();
    (target != "ACCEPT").then(|| {
        format!("{tunnel} is in no zone, so the default zone `{default}` rejects what it forwards")
    })
}

/// What an admin would type: the runtime binding, and the saved one.
pub fn commands(tunnel: &str) -> Vec<String> {
    vec![
        format!("firewall-cmd --zone={ZONE} --add-interface={tunnel}"),
        format!("firewall-cmd --permanent --zone={ZONE} --add-interface={tunnel}"),
    ]
}

pub fn open(tunnel: &str) -> Result<(), String> {
    let interface = format!("--add-interface={tunnel}");
    firewall_cmd(&[&format!("--zone={ZONE}"), &interface])
        .map(drop)
        .ok_or_else(|| format!("firewall-cmd refused `--zone={ZONE} {interface}`"))
}

pub fn remove(tunnel: &str) {
    let interface = format!("--remove-interface={tunnel}");
    if firewall_cmd(&[&format!("--zone={ZONE}"), &interface]).is_none() {
        tracing::warn!(
            tunnel,
            "could not unbind the tunnel from firewalld's trusted zone"
        );
    }
}

/// A runtime-only binding to `trusted` is what a run that died left
/// (one an admin saved stays).
pub fn remove_leftover(tunnel: &str) {
    if running()
        && zone_of(tunnel, false).as_deref() == Some(ZONE)
        && zone_of(tunnel, true).is_none()
    {
        remove(tunnel);
        tracing::info!(
            tunnel,
            "unbound the tunnel from firewalld's trusted zone, as a previous run left it"
        );
    }
}

/// Whether firewalld would let replies into the client's tunnel: it always
/// accepts established flows first, so yes whenever it runs. Returns the
/// zone that judges new connections into `tunnel`.
pub fn input_zone(tunnel: &str) -> Option<String> {
    if !running() {
        return None;
    }
    zone_of(tunnel, false).or_else(|| firewall_cmd(&["--get-default-zone"]))
}
