//! Pointing the system at the stub (SPEC F23) through resolv.conf: the file
//! is saved, rewritten to name the sentinel (and the account's search
//! domain), and written back byte for byte when the client stops, also after
//! SIGTERM. The saved copy doubles as the crash marker: a run that finds one
//! puts it back before anything else. Files are written in place (not
//! renamed over): resolv.conf may be a symlink or, in a network namespace,
//! a bind mount.
//!
//! systemd-resolved (per-link DNS and routing domains) is not driven yet;
//! where it runs, resolv.conf points at its stub and is taken over the same
//! way.

use std::io;
use std::path::{Path, PathBuf};

use postern_model::plan::{DNS_SENTINEL_V4, DNS_SENTINEL_V6};

/// The rewritten resolv.conf; put back on drop.
pub struct ResolvConf {
    path: PathBuf,
    saved: PathBuf,
    original: Vec<u8>,
    restored: bool,
}

/// The text that sends the system to the stub.
pub fn stub_conf(search: Option<&str>) -> String {
    let mut text = format!(
        "# Written by `postern client up`; the previous file comes back when it stops.\n\
         nameserver {DNS_SENTINEL_V4}\nnameserver {DNS_SENTINEL_V6}\n"
    );
    if let Some(domain) = search.filter(|d| !d.is_empty()) {
        text.push_str(&format!("search {domain}\n"));
    }
    text
}

impl ResolvConf {
    /// Takes `path` over; a copy is kept in `state_dir`. Returns the guard
    /// and the original contents (for its nameservers).
    pub fn take_over(
        path: &Path,
        state_dir: &Path,
        search: Option<&str>,
    ) -> io::Result<(ResolvConf, String)> {
        std::fs::create_dir_all(state_dir)?;
        let saved = state_dir.join("resolv.conf.before-postern");
        if let Ok(left) = std::fs::read(&saved) {
            std::fs::write(path, &left)?;
            std::fs::remove_file(&saved)?;
            tracing::info!(path = %path.display(), "put back the resolv.conf a previous run left changed");
        }
        let original = std::fs::read(path)?;
        std::fs::write(&saved, &original)?;
        std::fs::File::open(&saved)?.sync_all()?;
        std::fs::write(path, stub_conf(search))?;
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
            ResolvConf::take_over(&path, &dir.join("state"), Some("corp.test")).unwrap();
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
        let (guard, _) = ResolvConf::take_over(&path, &dir.join("state"), None).unwrap();
        // SIGKILL: no drop, the copy stays behind.
        std::mem::forget(guard);
        assert_ne!(std::fs::read(&path).unwrap(), original);
        let (guard, text) = ResolvConf::take_over(&path, &dir.join("state"), None).unwrap();
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
