//! Processes in hosts, and cleanup: nothing of a lab outlives it, even when
//! the test that built it panics, and stale namespaces of killed runs go.

#![allow(clippy::unwrap_used)] // a test file: unwrap is the assertion

use std::time::Duration;

mod support;

use postern_lab::{LabError, list_namespaces, sweep_stale};
use support::lab;

#[test]
fn processes_run_inside_their_host_with_captured_output() {
    let lab = lab();
    let host = lab.add_host("box").unwrap();
    let switch = lab.add_switch("sw").unwrap();
    lab.connect(&host, &switch, &["10.88.0.5/24"]).unwrap();

    // `run` sees the host's interfaces, not the caller's.
    let addresses = host.run("ip", &["-o", "addr", "show"]).unwrap();
    assert!(addresses.contains("10.88.0.5/24"), "{addresses}");

    // A failing command is an error carrying its stderr.
    let error = host
        .run("ip", &["route", "get", "203.0.113.1"])
        .unwrap_err();
    assert!(
        matches!(&error, LabError::CommandFailed { stderr, .. } if stderr.contains("unreachable")),
        "{error}"
    );

    let mut command = host.command("sh");
    command.args(["-c", "echo ready; echo oops >&2; exec sleep 600"]);
    let mut process = host.spawn(command).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !process.stdout().contains("ready") {
        assert!(
            std::time::Instant::now() < deadline,
            "no output from the process"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(process.stderr(), "oops\n");
    assert!(
        process
            .wait_timeout(Duration::from_millis(100))
            .unwrap()
            .is_none()
    );
    let status = process.kill().unwrap();
    assert!(!status.success());

    let mut short = host.command("sh");
    short.args(["-c", "exit 3"]);
    let mut short = host.spawn(short).unwrap();
    let status = short.wait_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(status.and_then(|s| s.code()), Some(3));
}

#[test]
fn cpu_time_counts_what_the_program_itself_spent() {
    let lab = lab();
    let host = lab.add_host("cpu").unwrap();
    let mut idle = host.command("sleep");
    idle.arg("600");
    let idle = host.spawn(idle).unwrap();
    let mut busy = host.command("sh");
    busy.args(["-c", "while :; do :; done"]);
    let busy = host.spawn(busy).unwrap();
    std::thread::sleep(Duration::from_millis(600));
    // The PID is the program's: `ip netns exec` execs it in place.
    let comm = std::fs::read_to_string(format!("/proc/{}/comm", busy.pid())).unwrap();
    assert_eq!(comm.trim(), "sh");
    let before = busy.cpu_time().unwrap();
    std::thread::sleep(Duration::from_millis(600));
    let spent = busy.cpu_time().unwrap() - before;
    // A spinning shell gets most of a core even on a loaded machine.
    assert!(spent >= Duration::from_millis(100), "{spent:?}");
    assert!(spent <= Duration::from_millis(700), "{spent:?}");
    assert!(
        idle.cpu_time().unwrap() < Duration::from_millis(100),
        "{:?}",
        idle.cpu_time()
    );
}

fn is_dead(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // Field 3 is the state; Z is a zombie (dead, not yet reaped).
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => true,
    }
}

#[test]
fn a_panicking_test_leaves_no_namespace_and_no_process() {
    let (tx, rx) = std::sync::mpsc::channel();
    let outcome = std::thread::spawn(move || {
        let lab = lab();
        let host = lab.add_host("doomed").unwrap();
        let switch = lab.add_switch("doomed-sw").unwrap();
        lab.connect(&host, &switch, &["10.99.0.1/24"]).unwrap();
        // A child started outside LabProcess: only the lab's sweep of the
        // namespace's processes can stop it.
        let child = host.command("sleep").arg("600").spawn().unwrap();
        tx.send((lab.prefix().to_string(), lab.namespaces(), child.id()))
            .unwrap();
        std::mem::forget(child);
        panic!("the test fails while the lab is up");
    })
    .join();
    assert!(outcome.is_err(), "the thread was meant to panic");

    let (prefix, created, pid) = rx.recv().unwrap();
    assert_eq!(created.len(), 2);
    let left: Vec<_> = list_namespaces()
        .unwrap()
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while !is_dead(pid) {
        assert!(
            std::time::Instant::now() < deadline,
            "process {pid} survived its lab"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn sweep_removes_namespaces_of_dead_runs_only() {
    let _lab = lab(); // runs the once-per-process sweep first
    let pid_max: u32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let dead_pid = (2..pid_max)
        .rev()
        .find(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
        .unwrap();
    let stale = format!("plab-{dead_pid}-0-stale");
    let live = format!("plab-{}-9999-live", std::process::id());
    let foreign = format!("other-{dead_pid}-0-x");
    for name in [&stale, &live, &foreign] {
        let status = std::process::Command::new("ip")
            .args(["netns", "add", name])
            .status()
            .unwrap();
        assert!(status.success());
    }

    sweep_stale().unwrap();
    let names = list_namespaces().unwrap();
    let still = |name: &String| names.contains(name);
    let (stale_left, live_left, foreign_left) = (still(&stale), still(&live), still(&foreign));
    for name in [&live, &foreign, &stale] {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", name])
            .status();
    }
    assert!(!stale_left, "the namespace of a dead run was not swept");
    assert!(live_left, "the sweep removed a namespace of a live process");
    assert!(
        foreign_left,
        "the sweep touched a namespace without the lab prefix"
    );
}

#[test]
fn names_are_checked() {
    let lab = lab();
    assert!(lab.add_host("bad name").is_err());
    assert!(lab.add_host("").is_err());
    lab.add_host("twice").unwrap();
    assert!(
        lab.add_host("twice").is_err(),
        "duplicate host names must be refused"
    );
    let host = lab.add_host("h").unwrap();
    let switch = lab.add_switch("s").unwrap();
    assert!(
        lab.connect(&host, &switch, &["10.0.0.1"]).is_err(),
        "prefix length required"
    );
}
