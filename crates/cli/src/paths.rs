//! Where the client keeps its files by default: the system's directories
//! for root (the TUN client, a service), the user's own otherwise (the
//! userspace client needs no root and must not need root's directories).

use std::path::PathBuf;

/// Root's status socket.
pub const SYSTEM_STATUS_SOCKET: &str = "/run/postern/client.sock";

fn home_dir(relative: &str, variable: &str) -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os(variable).filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(dir));
    }
    std::env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .map(|home| PathBuf::from(home).join(relative))
}

/// `/var/lib/postern` for root; `$XDG_STATE_HOME/postern` (or
/// `~/.local/state/postern`) for anyone else.
pub fn state_dir() -> PathBuf {
    if postern_sys::is_root() {
        return PathBuf::from("/var/lib/postern");
    }
    home_dir(".local/state", "XDG_STATE_HOME")
        .map(|dir| dir.join("postern"))
        .unwrap_or_else(|| PathBuf::from("/var/lib/postern"))
}

/// `/run/postern/client.sock` for root; `$XDG_RUNTIME_DIR/postern/client.sock`
/// (or the state directory's `client.sock`) for anyone else.
pub fn status_socket() -> PathBuf {
    if postern_sys::is_root() {
        return PathBuf::from(SYSTEM_STATUS_SOCKET);
    }
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir).join("postern/client.sock"),
        None => state_dir().join("client.sock"),
    }
}

/// The socket to ask: the one given; else this user's default, or root's
/// when the user has none and root's exists (a user asking about the
/// system's TUN client; only a given path is taken as it is).
pub fn socket_to_ask(given: Option<&std::path::Path>) -> PathBuf {
    if let Some(socket) = given {
        return socket.to_path_buf();
    }
    let own = status_socket();
    let system = std::path::Path::new(SYSTEM_STATUS_SOCKET);
    if !own.exists() && system.exists() {
        return system.to_path_buf();
    }
    own
}
