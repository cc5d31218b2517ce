//! Network namespace primitives: create, destroy, enter.

use std::fs::File;

use nix::sched::{CloneFlags, setns};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::command::run;
use crate::error::{LabError, Result};

/// Creates a named network namespace with its loopback up and IPv6 duplicate
/// address detection off (DAD would hold new addresses back for seconds).
pub(crate) fn create(namespace: &str) -> Result<()> {
    run("ip", &["netns", "add", namespace])?;
    run("ip", &["-n", namespace, "link", "set", "dev", "lo", "up"])?;
    sysctl(namespace, "net.ipv6.conf.all.accept_dad", "0")?;
    sysctl(namespace, "net.ipv6.conf.default.accept_dad", "0")?;
    Ok(())
}

/// Kills every process still inside the namespace, then deletes it; its
/// interfaces (and the veth peers in other namespaces) go with it.
pub(crate) fn destroy(namespace: &str) -> Result<()> {
    if let Ok(pids) = run("ip", &["netns", "pids", namespace]) {
        for pid in pids
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            // The process may have exited since it was listed: ESRCH is fine.
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
    // `ip netns exec` bind-mounts /etc/netns/<namespace>/* over /etc: a
    // host's resolv.conf lives there (Host::set_resolv_conf).
    let etc = std::path::Path::new("/etc/netns").join(namespace);
    if etc.exists() {
        let _ = std::fs::remove_dir_all(&etc);
        // The parent goes too once no lab uses it (fails while not empty).
        let _ = std::fs::remove_dir("/etc/netns");
    }
    match run("ip", &["netns", "del", namespace]) {
        Ok(_) => Ok(()),
        Err(LabError::CommandFailed { stderr, .. }) if stderr.contains("No such file") => Ok(()),
        Err(error) => Err(error),
    }
}

/// Sets a sysctl inside the namespace.
pub(crate) fn sysctl(namespace: &str, key: &str, value: &str) -> Result<()> {
    let setting = format!("{key}={value}");
    run(
        "ip",
        &["netns", "exec", namespace, "sysctl", "-qw", &setting],
    )?;
    Ok(())
}

/// Runs `f` on a scratch thread that has joined the namespace. Sockets created
/// there stay in that namespace for their whole life, whichever thread uses
/// them later, so tests can talk from inside a host without helper programs.
pub(crate) fn enter<T, F>(namespace: &str, f: F) -> Result<T>
where
    T: Send,
    F: FnOnce() -> T + Send,
{
    let enter_error = |source: std::io::Error| LabError::Enter {
        namespace: namespace.to_string(),
        source,
    };
    let handle = File::open(format!("/run/netns/{namespace}")).map_err(enter_error)?;
    std::thread::scope(|scope| {
        let worker = scope.spawn(move || {
            setns(&handle, CloneFlags::CLONE_NEWNET)
                .map_err(|errno| enter_error(std::io::Error::from(errno)))?;
            Ok(f())
        });
        match worker.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}
