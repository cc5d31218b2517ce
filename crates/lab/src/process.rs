//! Processes running inside lab hosts.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use crate::error::{LabError, Result};

/// A process started in a lab host. It leads its own process group, so a
/// signal reaches the children it forked too. Dropping the handle kills the
/// group and reaps the process: a panicking test leaves nothing running.
#[derive(Debug)]
pub struct LabProcess {
    label: String,
    child: Child,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
    exit: Option<ExitStatus>,
}

impl LabProcess {
    pub(crate) fn spawn(mut command: Command, label: String, stem: &Path) -> Result<Self> {
        let stdout_path = stem.with_extension("out");
        let stderr_path = stem.with_extension("err");
        let described = format!("{command:?}");
        let spawn_error = |source| LabError::Spawn {
            command: described.clone(),
            source,
        };
        let stdout = File::create(&stdout_path).map_err(spawn_error)?;
        let stderr = File::create(&stderr_path).map_err(spawn_error)?;
        let child = command
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .process_group(0)
            .spawn()
            .map_err(spawn_error)?;
        tracing::debug!(process = %label, pid = child.id(), "lab process started");
        Ok(LabProcess {
            label,
            child,
            stdout_path,
            stderr_path,
            exit: None,
        })
    }

    /// `host:program`, for messages.
    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the process wrote to stdout so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    /// Everything the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// The exit status if the process has ended, without waiting.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait()?;
        }
        Ok(self.exit)
    }

    /// Waits up to `timeout` for the process to end.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Sends a signal to the process group (SIGTERM for a graceful stop).
    pub fn signal(&self, signal: Signal) -> Result<()> {
        if self.exit.is_some() {
            return Ok(());
        }
        let group = Pid::from_raw(i32::try_from(self.child.id()).unwrap_or(i32::MAX));
        killpg(group, signal).map_err(|errno| LabError::Io(errno.into()))
    }

    /// Kills the process group and reaps the process.
    pub fn kill(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.exit {
            return Ok(status);
        }
        // ESRCH: the group is already gone, only the zombie is left to reap.
        let _ = self.signal(Signal::SIGKILL);
        let status = self.child.wait()?;
        self.exit = Some(status);
        Ok(status)
    }
}

impl Drop for LabProcess {
    fn drop(&mut self) {
        if let Err(error) = self.kill() {
            tracing::warn!(process = %self.label, %error, "could not kill lab process");
        }
    }
}
