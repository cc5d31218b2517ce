//! Unique namespace names, and the sweep of namespaces left by killed runs.
//!
//! A lab namespace is named `plab-<pid>-<seq>-<host>`: the pid of the process
//! that built it makes names unique across parallel test processes, the
//! sequence number makes them unique across labs in one process, and the pid
//! tells the sweep whether the owner is still alive.

use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::command::run;
use crate::error::Result;

/// Every namespace the lab creates starts with this; nothing else is touched.
pub const PREFIX: &str = "plab-";

static NEXT_LAB: AtomicU32 = AtomicU32::new(0);

/// A fresh `plab-<pid>-<seq>-` prefix for one lab.
pub(crate) fn new_lab_prefix() -> String {
    let seq = NEXT_LAB.fetch_add(1, Ordering::Relaxed);
    format!("{PREFIX}{}-{seq}-", std::process::id())
}

/// The pid that owns a lab namespace, if the name is one of ours.
pub(crate) fn owner_pid(namespace: &str) -> Option<u32> {
    let rest = namespace.strip_prefix(PREFIX)?;
    let (pid, rest) = rest.split_once('-')?;
    let (seq, _host) = rest.split_once('-')?;
    seq.parse::<u32>().ok()?;
    pid.parse().ok()
}

/// All network namespaces with a name (those in `/run/netns`).
pub fn list_namespaces() -> Result<Vec<String>> {
    let out = run("ip", &["netns", "list"])?;
    // Lines look like `name` or `name (id: 3)`.
    Ok(out
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_string)
        .collect())
}

/// Deletes lab namespaces whose owning process is gone (a run killed before its
/// drop guards ran), after killing whatever still runs inside them. Namespaces
/// of live labs and anything without the lab prefix are left alone. Returns the
/// names removed.
pub fn sweep_stale() -> Result<Vec<String>> {
    let mut removed = Vec::new();
    for namespace in list_namespaces()? {
        let Some(pid) = owner_pid(&namespace) else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        tracing::info!(%namespace, owner_pid = pid, "removing stale lab namespace");
        crate::namespace::destroy(&namespace)?;
        removed.push(namespace);
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_pid_parses_only_lab_names() {
        assert_eq!(owner_pid("plab-1234-0-client"), Some(1234));
        assert_eq!(owner_pid("plab-1234-7-nat-home"), Some(1234));
        assert_eq!(owner_pid("plab-x-0-client"), None);
        assert_eq!(owner_pid("plab-1234-client"), None);
        assert_eq!(owner_pid("other-1234-0-client"), None);
        assert_eq!(owner_pid("docker"), None);
    }

    #[test]
    fn prefixes_are_unique_and_owned_by_this_process() {
        let a = new_lab_prefix();
        let b = new_lab_prefix();
        assert_ne!(a, b);
        assert_eq!(owner_pid(&format!("{a}h")), Some(std::process::id()));
    }
}
