//! Running the administration tools (`ip`, `nft`, `iptables`, `sysctl`).

use std::process::{Command, Stdio};
use std::{io::Write, path::Path};

use crate::error::{LabError, Result};

/// The tools the lab drives, with the Debian package that provides each.
const TOOLS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("nft", "nftables"),
    ("iptables", "iptables"),
];

/// Fails with a message naming the package when a needed tool is absent.
pub(crate) fn check_tools() -> Result<()> {
    for &(tool, package) in TOOLS {
        let found = ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
            .iter()
            .any(|dir| Path::new(dir).join(tool).exists());
        if !found {
            return Err(LabError::MissingTool { tool, package });
        }
    }
    Ok(())
}

/// Runs `program args...` to completion and returns its stdout; a non-zero
/// exit becomes an error that carries the command line and its stderr.
pub(crate) fn run(program: &str, args: &[&str]) -> Result<String> {
    run_with_input(program, args, None)
}

/// Like [`run`], with `input` written to the command's stdin (for `nft -f -`).
pub(crate) fn run_with_input(program: &str, args: &[&str], input: Option<&str>) -> Result<String> {
    let command_line = || format!("{program} {}", args.join(" "));
    tracing::debug!(command = %command_line(), "lab");
    let mut child = Command::new(program)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| LabError::Spawn {
            command: command_line(),
            source,
        })?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(text.as_bytes())?;
    }
    let output = child.wait_with_output()?;
    if !output.status.success() {
        return Err(LabError::CommandFailed {
            command: command_line(),
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
