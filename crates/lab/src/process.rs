//! Processes running inside lab hosts.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::{Pid, SysconfVar, sysconf};

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

    /// The process's PID. [`crate::Host::spawn`] starts the program through
    /// `ip netns exec`, which execs it in place: this is the program's own
    /// PID once it runs (and `ip`'s for the instant before).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU time the process has used so far, user plus system, summed over
    /// all its threads: utime + stime (fields 14 and 15 of
    /// `/proc/PID/stat`, in clock ticks). Children it forked are not
    /// counted. For CPU-per-byte figures: read it before and after a
    /// measurement (`bench/throughput.sh`).
    pub fn cpu_time(&self) -> Result<Duration> {
        let path = format!("/proc/{}/stat", self.child.id());
        let stat = std::fs::read_to_string(&path)?;
        let ticks = cpu_ticks(&stat)
            .ok_or_else(|| LabError::Invalid(format!("cannot read CPU times in {path}: {stat}")))?;
        let per_second = sysconf(SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .and_then(|n| u64::try_from(n).ok())
            .filter(|n| *n > 0)
            .ok_or_else(|| LabError::Invalid("sysconf(CLK_TCK) gave no tick rate".into()))?;
        let nanos = (ticks % per_second) * 1_000_000_000 / per_second;
        Ok(Duration::from_secs(ticks / per_second) + Duration::from_nanos(nanos))
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

/// utime + stime in clock ticks from the text of `/proc/PID/stat`. Field 2
/// (the command name, in parentheses) may hold spaces and parentheses, so
/// the fields are counted after its last `)`: that rest starts at field 3.
fn cpu_ticks(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace().skip(14 - 3);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::cpu_ticks;

    #[test]
    fn cpu_ticks_are_utime_plus_stime_whatever_the_command_name() {
        let stat = "4242 (a) b (c) S 1 4242 4242 0 -1 4194560 1200 0 0 0 \
                    731 269 5 7 20 0 3 0 100 0 0";
        assert_eq!(cpu_ticks(stat), Some(731 + 269));
        assert_eq!(cpu_ticks("4242 (x) S 1 2"), None);
        assert_eq!(cpu_ticks("no parentheses"), None);
    }
}
