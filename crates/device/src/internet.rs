//! The user's choice about the internet resource (`postern client internet
//! on|off`), remembered across restarts in the state directory: a file
//! `internet` holding `off` turns it off; anything else (or no file) is on,
//! the default when an admin grants it.

use std::io;
use std::path::Path;

const FILE: &str = "internet";

/// Whether the internet resource is to be routed.
pub fn load(state_dir: &Path) -> bool {
    std::fs::read_to_string(state_dir.join(FILE)).map_or(true, |text| text.trim() != "off")
}

/// Remembers the choice (written whole, then renamed into place).
pub fn save(state_dir: &Path, on: bool) -> io::Result<()> {
    std::fs::create_dir_all(state_dir)?;
    let path = state_dir.join(FILE);
    let temporary = state_dir.join(format!("{FILE}.tmp"));
    std::fs::write(&temporary, if on { "on\n" } else { "off\n" })?;
    std::fs::rename(&temporary, &path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn on_unless_turned_off_and_remembered() {
        let dir = std::env::temp_dir().join(format!("postern-internet-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert!(load(&dir), "on by default");
        save(&dir, false).unwrap();
        assert!(!load(&dir));
        save(&dir, true).unwrap();
        assert!(load(&dir));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
