//! Files a root daemon keeps in its state directory, written so that a
//! local user cannot steer them: the directory must be root's and closed to
//! others (a user-owned one could hold planted files or symlinks), files
//! are read without following a symlink, and written whole to a private
//! temporary file that is then renamed over the old one (a rename replaces
//! a planted symlink itself, never its target).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

/// The state directory, created 0700 if missing. Run as root, it must be a
/// real directory owned by root that nobody else may write to.
pub fn private_dir(dir: &Path) -> io::Result<()> {
    match fs::symlink_metadata(dir) {
        Err(error) if error.kind() == io::ErrorKind::NotFound => fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir),
        Err(error) => Err(error),
        Ok(meta) => {
            if !meta.is_dir() {
                return Err(io::Error::other(format!(
                    "{} is not a directory (a symlink?)",
                    dir.display()
                )));
            }
            if crate::is_root() && (meta.uid() != 0 || meta.mode() & 0o022 != 0) {
                return Err(io::Error::other(format!(
                    "{} must belong to root and be writable by root only (it holds what root reads back)",
                    dir.display()
                )));
            }
            Ok(())
        }
    }
}

/// Reads a file without following a symlink at its path.
pub fn read(path: &Path) -> io::Result<Vec<u8>> {
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Writes `bytes` as `path`, mode 0600, whole: a new private file beside
/// it, synced, then renamed over it.
pub fn write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other(format!("{} names no file", path.display())))?;
    let mut temporary = path.to_path_buf();
    temporary.set_file_name(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let _ = fs::remove_file(&temporary);
    let mut file: File = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(&temporary)?;
    let written = file.write_all(bytes).and_then(|()| file.sync_all());
    if let Err(error) = written.and_then(|()| fs::rename(&temporary, path)) {
        let _ = fs::remove_file(&temporary);
        return Err(error);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a test: unwrap is the assertion
    use super::*;

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("postern-files-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn a_planted_symlink_is_replaced_not_followed() {
        let dir = scratch("symlink");
        private_dir(&dir).unwrap();
        assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        let victim = dir.join("victim");
        fs::write(&victim, b"precious").unwrap();
        let planted = dir.join("device-id");
        std::os::unix::fs::symlink(&victim, &planted).unwrap();
        assert!(read(&planted).is_err(), "a symlink is not followed on read");
        write(&planted, b"new").unwrap();
        assert_eq!(
            fs::read(&victim).unwrap(),
            b"precious",
            "the target is untouched"
        );
        assert_eq!(read(&planted).unwrap(), b"new");
        assert_eq!(fs::metadata(&planted).unwrap().mode() & 0o777, 0o600);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn root_refuses_a_state_directory_others_may_write() {
        if !crate::is_root() {
            panic!("this test needs root (CI runs as root)");
        }
        let dir = scratch("open");
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
        assert!(private_dir(&dir).is_err());
        fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        private_dir(&dir).unwrap();
        // Owned by someone else.
        std::os::unix::fs::chown(&dir, Some(65534), None).unwrap();
        assert!(private_dir(&dir).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }
}
