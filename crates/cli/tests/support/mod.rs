//! What the tests that run `postern` and other servers as processes share:
//! a temporary directory, a child stopped however the test ends, free
//! loopback ports.
#![allow(dead_code)] // each test file uses its part

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// A directory under the system's temporary one, removed at the end.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("postern-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process stopped when the test ends, however it ends: SIGTERM
/// first (nginx's master then stops its workers; SIGKILL would orphan
/// them), SIGKILL after 10 s.
pub struct Running(pub Child, pub &'static str);

impl Running {
    /// Stops the child now, as at the end of the test.
    pub fn stop(self) {
        drop(self);
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.0.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if !matches!(self.0.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The `postern` binary under test, without the caller's `POSTERN_*`
/// environment.
pub fn postern() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_postern"));
    for (key, _) in std::env::vars() {
        if key.starts_with("POSTERN_") {
            command.env_remove(key);
        }
    }
    command
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until `child` accepts TCP on loopback `port`; fails if it exits.
pub fn wait_listening(child: &mut Running, port: u16) {
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{} did not listen on {port}",
            child.1
        );
        if let Some(status) = child.0.try_wait().unwrap() {
            panic!("{} exited early: {status}", child.1);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The absolute path of a tool a test needs, or a failure that says how
/// to install it (`package`, from Debian).
pub fn tool(name: &str, package: &str) -> PathBuf {
    for dir in ["/usr/sbin", "/usr/local/sbin", "/usr/bin", "/usr/local/bin"] {
        let candidate = PathBuf::from(dir).join(name);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!("{name} is not installed and this test needs it: apt-get install {package}")
}

/// The lab's demo (portal, relay, `gateways` gateways, a client) behind
/// NATs of these kinds, or a failure that says why it did not start.
pub fn demo(
    home: postern_lab::NatKind,
    office: postern_lab::NatKind,
    gateways: usize,
) -> postern_lab::demo::Demo {
    let options = postern_lab::demo::DemoOptions {
        postern: env!("CARGO_BIN_EXE_postern").into(),
        home_nat: home,
        office_nat: office,
        gateways,
        client_in_office: false,
        ipv6: Default::default(),
    };
    match postern_lab::demo::Demo::start(options) {
        Ok(demo) => demo,
        Err(error) => panic!("the lab did not start: {error}"),
    }
}
