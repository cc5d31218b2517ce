//! Pointing the system at the stub (SPEC F23) through resolv.conf: the file
//! is saved, rewritten to name the sentinel (and the account's search
//! domain), and written back byte for byte when the client stops, also after
//! SIGTERM. The saved copy doubles as the crash marker: a run that finds one
//! puts it back before anything else. Files are written in place (not
//! renamed over): resolv.conf may be a symlink or, in a network namespace,
//! a bind mount.
//!
//! Where systemd-resolved manages DNS, the file is left alone: the tunnel
//! interface gets the stub as its DNS server and the resources' domains as
//! routing domains (`resolvectl`), so only those names come to the stub and
//! everything else stays with resolved; `resolvectl revert` undoes it (and
//! the settings go with the interface anyway).

use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// The rewritten resolv.conf; put back on drop.
pub struct ResolvConf {
    path: PathBuf,
    saved: PathBuf,
    original: Vec<u8>,
    restored: bool,
}

/// The text that sends the system to the stub on `sentinels`.
pub fn stub_conf(sentinels: &[IpAddr], search: Option<&str>) -> String {
    let mut text = String::from(
        "# Written by `postern client up`; the previous file comes back when it stops.\n",
    );
    for sentinel in sentinels {
        text.push_str(&format!("nameserver {sentinel}\n"));
    }
    if let Some(domain) = search.filter(|d| !d.is_empty()) {
        text.push_str(&format!("search {domain}\n"));
    }
    text
}

impl ResolvConf {
    /// Takes `path` over for the stub on `sentinels`; a copy is kept in
    /// `state_dir`. Returns the guard and the original contents (for its
    /// nameservers).
    pub fn take_over(
        path: &Path,
        state_dir: &Path,
        sentinels: &[IpAddr],
        search: Option<&str>,
    ) -> io::Result<(ResolvConf, String)> {
        crate::files::private_dir(state_dir)?;
        let saved = state_dir.join("resolv.conf.before-postern");
        if let Ok(left) = crate::files::read(&saved) {
            std::fs::write(path, &left)?;
            std::fs::remove_file(&saved)?;
            tracing::info!(path = %path.display(), "put back the resolv.conf a previous run left changed");
        }
        let original = std::fs::read(path)?;
        crate::files::write(&saved, &original)?;
        std::fs::write(path, stub_conf(sentinels, search))?;
        let text = String::from_utf8_lossy(&original).into_owned();
        Ok((
            ResolvConf {
                path: path.to_path_buf(),
                saved,
                original,
                restored: false,
            },
            text,
        ))
    }

    /// Writes the original back, byte for byte, and drops the copy.
    pub fn restore(&mut self) -> io::Result<()> {
        if self.restored {
            return Ok(());
        }
        std::fs::write(&self.path, &self.original)?;
        std::fs::remove_file(&self.saved)?;
        self.restored = true;
        Ok(())
    }
}

impl Drop for ResolvConf {
    fn drop(&mut self) {
        if let Err(error) = self.restore() {
            tracing::error!(path = %self.path.display(), %error, "could not put resolv.conf back; the next start will");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a test: unwrap is the assertion
    use super::*;

    const SENTINELS: [IpAddr; 2] = [
        IpAddr::V4(std::net::Ipv4Addr::new(100, 100, 111, 1)),
        IpAddr::V6(std::net::Ipv6Addr::new(
            0xfd7e, 0x5057, 0x6e00, 0x8000, 0x100, 0x100, 0x111, 1,
        )),
    ];

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("postern-resolv-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn the_original_comes_back_byte_for_byte() {
        let dir = scratch("restore");
        let path = dir.join("resolv.conf");
        let original = b"# odd spacing kept\nnameserver 10.0.0.53 \r\noptions  ndots:2\n\xff";
        std::fs::write(&path, original).unwrap();
        let (mut guard, text) =
            ResolvConf::take_over(&path, &dir.join("state"), &SENTINELS, Some("corp.test"))
                .unwrap();
        assert!(text.contains("nameserver 10.0.0.53"));
        let now = std::fs::read_to_string(&path).unwrap();
        assert!(
            now.contains("nameserver 100.100.111.1") && now.contains("search corp.test"),
            "{now}"
        );
        guard.restore().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), original);
        assert!(!dir.join("state/resolv.conf.before-postern").exists());
        drop(guard);
        assert_eq!(
            std::fs::read(&path).unwrap(),
            original,
            "drop after restore changes nothing"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_crashed_run_is_repaired_by_the_next_start() {
        let dir = scratch("crash");
        let path = dir.join("resolv.conf");
        let original = b"nameserver 192.0.2.53\n";
        std::fs::write(&path, original).unwrap();
        let (guard, _) =
            ResolvConf::take_over(&path, &dir.join("state"), &SENTINELS, None).unwrap();
        // SIGKILL: no drop, the copy stays behind.
        std::mem::forget(guard);
        assert_ne!(std::fs::read(&path).unwrap(), original);
        let (guard, text) =
            ResolvConf::take_over(&path, &dir.join("state"), &SENTINELS, None).unwrap();
        assert_eq!(
            text.as_bytes(),
            original,
            "the next run saw the real original"
        );
        drop(guard);
        assert_eq!(std::fs::read(&path).unwrap(), original);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// How the system is pointed at the stub.
pub enum SystemDns {
    /// Kept for its drop, which writes the file back.
    ResolvConf {
        _guard: ResolvConf,
    },
    Resolved(ResolvedLink),
}

/// The `resolvectl` to drive if systemd-resolved manages this machine's
/// DNS: `POSTERN_RESOLVECTL` names one explicitly; otherwise resolved's
/// varlink socket must exist and `resolvectl` be on the PATH.
pub fn resolved() -> Option<PathBuf> {
    if let Some(explicit) = std::env::var_os("POSTERN_RESOLVECTL") {
        return Some(PathBuf::from(explicit));
    }
    if !Path::new("/run/systemd/resolve/io.systemd.Resolve").exists() {
        return None;
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("resolvectl"))
            .find(|candidate| candidate.is_file())
    })
}

/// The tunnel interface's DNS settings in systemd-resolved.
pub struct ResolvedLink {
    resolvectl: PathBuf,
    interface: String,
}

impl ResolvedLink {
    fn run(&self, args: &[&str]) -> io::Result<()> {
        let output = std::process::Command::new(&self.resolvectl)
            .args(args)
            .output()?;
        if output.status.success() {
            Ok(())
        } else {
            Err(io::Error::other(format!(
                "resolvectl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr).trim()
            )))
        }
    }

    /// The stub on `sentinels` as the interface's DNS server, not the
    /// default route.
    pub fn take_over(
        resolvectl: PathBuf,
        interface: &str,
        sentinels: &[IpAddr],
    ) -> io::Result<ResolvedLink> {
        let link = ResolvedLink {
            resolvectl,
            interface: interface.to_string(),
        };
        let mut args = vec!["dns".to_string(), interface.to_string()];
        args.extend(sentinels.iter().map(ToString::to_string));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        link.run(&args)?;
        link.run(&["default-route", interface, "false"])?;
        Ok(link)
    }

    /// Routing domains for the resources' names, and the search domain.
    pub fn set_domains(&self, domains: &[String], search: Option<&str>) -> io::Result<()> {
        let mut args = vec!["domain".to_string(), self.interface.clone()];
        args.extend(domains.iter().map(|d| format!("~{d}")));
        args.extend(search.filter(|s| !s.is_empty()).map(str::to_string));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.run(&args)
    }
}

impl Drop for ResolvedLink {
    fn drop(&mut self) {
        let interface = self.interface.clone();
        if let Err(error) = self.run(&["revert", &interface]) {
            tracing::warn!(%error, "could not revert the interface's DNS settings");
        }
    }
}

#[cfg(test)]
mod resolved_tests {
    #![allow(clippy::unwrap_used)] // a test: unwrap is the assertion
    use super::*;

    #[test]
    fn resolvectl_is_told_the_link_settings_and_reverts_them() {
        let dir = std::env::temp_dir().join(format!("postern-resolvectl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("calls");
        let fake = dir.join("resolvectl");
        std::fs::write(
            &fake,
            format!("#!/bin/sh\necho \"$@\" >> {}\n", log.display()),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let sentinels = [
            IpAddr::V4(std::net::Ipv4Addr::new(100, 100, 111, 1)),
            "fd7e:5057:6e00:8000:100:100:111:1".parse().unwrap(),
        ];
        let link = ResolvedLink::take_over(fake.clone(), "postern0", &sentinels).unwrap();
        link.set_domains(
            &["apps.corp.test".into(), "corp.test".into()],
            Some("corp.test"),
        )
        .unwrap();
        drop(link);
        let calls = std::fs::read_to_string(&log).unwrap();
        assert_eq!(
            calls,
            "dns postern0 100.100.111.1 fd7e:5057:6e00:8000:100:100:111:1\n\
             default-route postern0 false\n\
             domain postern0 ~apps.corp.test ~corp.test corp.test\n\
             revert postern0\n"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// The DNS servers systemd-resolved asks (its upstream list, which it keeps
/// in this file whatever the stub setup): they stay on the host's path.
pub fn resolved_servers() -> Vec<IpAddr> {
    std::fs::read_to_string("/run/systemd/resolve/resolv.conf")
        .map(|text| {
            text.lines()
                .filter_map(|line| line.trim().strip_prefix("nameserver"))
                .filter_map(|rest| rest.trim().split('%').next()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}
