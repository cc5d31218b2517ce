//! The command-line contract: help, exit codes, one-line errors, environment
//! variables.

#![allow(clippy::unwrap_used)] // a test file: unwrap is the assertion

use std::process::{Command, Output};

fn postern(args: &[&str]) -> Output {
    postern_env(args, &[])
}

fn postern_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_postern"));
    command.args(args);
    // The caller's environment must not leak flags into the test.
    for (key, _) in std::env::vars() {
        if key.starts_with("POSTERN_") {
            command.env_remove(key);
        }
    }
    command.envs(env.iter().copied());
    // Every case here must end on its own; a daemon that starts by mistake
    // is killed and fails the test instead of hanging the suite.
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run postern");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while child.try_wait().expect("wait for postern").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("postern {args:?} did not exit within 10 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    child.wait_with_output().expect("collect postern output")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Asserts exit code `code` and exactly one line on stderr containing `needle`.
fn assert_one_line(output: &Output, code: i32, needle: &str) {
    let text = stderr(output);
    assert_eq!(output.status.code(), Some(code), "stderr: {text}");
    assert_eq!(text.trim_end().lines().count(), 1, "not one line: {text:?}");
    assert!(
        text.contains(needle),
        "{text:?} does not mention {needle:?}"
    );
}

#[test]
fn help_lists_every_part() {
    let output = postern(&["--help"]);
    assert_eq!(output.status.code(), Some(0));
    let help = String::from_utf8_lossy(&output.stdout);
    for part in ["portal", "gateway", "relay", "client", "demo", "admin"] {
        assert!(
            help.lines().any(|line| line.trim_start().starts_with(part)),
            "--help does not list {part}:\n{help}"
        );
    }
}

#[test]
fn version_prints_the_crate_version() {
    let output = postern(&["--version"]);
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        format!("postern {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn no_command_prints_help_and_fails() {
    let output = postern(&[]);
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("Usage: postern <COMMAND>"));
}

#[test]
fn admin_apply_names_the_file_it_cannot_use_before_any_request() {
    let dir = std::env::temp_dir().join(format!("postern-cli-apply-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let broken = dir.join("broken.yaml");
    std::fs::write(&broken, "sites:\n  - name: office\n    bad: [\n").unwrap();
    let missing = dir.join("missing.yaml");
    for (file, needle) in [(&missing, "cannot read"), (&broken, "broken.yaml")] {
        let output = postern(&[
            "admin",
            "apply",
            file.to_str().unwrap(),
            // Nothing listens here: the file is refused before any request.
            "--portal",
            "http://127.0.0.1:9",
            "--token",
            "t",
        ]);
        assert_one_line(&output, 1, needle);
        assert!(stderr(&output).starts_with("postern admin apply: "));
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_flags_fail_with_one_line_and_exit_code_1() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["relay", "--auth-secret", "s", "--public-ip", "nope"],
            "--public-ip",
        ),
        (
            &[
                "relay",
                "--auth-secret",
                "s",
                "--public-ip",
                "198.18.0.3",
                "--ports",
                "6000-5000",
            ],
            "--ports",
        ),
        (
            &[
                "relay",
                "--auth-secret",
                "s",
                "--public-ip",
                "198.18.0.3",
                "--allow-peer",
                "10.0.0.5/8",
            ],
            "--allow-peer",
        ),
        (&["relay", "--public-ip", "198.18.0.3"], "--portal"),
        (
            &[
                "relay",
                "--auth-secret",
                "s",
                "--portal",
                "https://p.test",
                "--token",
                "t",
                "--public-ip",
                "198.18.0.3",
            ],
            "--auth-secret",
        ),
        (&["gateway", "--token", "t"], "--portal"),
        (
            &["gateway", "--portal", "portal.test", "--token", "t"],
            "scheme",
        ),
        (&["gateway", "--portal", "https://p.test"], "--token"),
        (
            &[
                "gateway",
                "--portal",
                "https://p.test",
                "--token",
                "t",
                "--token-file",
                "f",
            ],
            "--token-file",
        ),
        (
            &[
                "gateway",
                "--portal",
                "https://p.test",
                "--token",
                "t",
                "--port",
                "70000",
            ],
            "--port",
        ),
        (&["portal", "--listen", "localhost"], "--listen"),
        (&["client", "up", "--portal", "https://p.test"], "--token"),
        (&["frobnicate"], "frobnicate"),
    ];
    for (args, needle) in cases {
        assert_one_line(&postern(args), 1, needle);
    }
}

#[test]
fn daemon_flags_come_from_the_environment_too() {
    let output = postern_env(
        &["gateway"],
        &[
            ("POSTERN_PORTAL", "http://198.18.0.2"),
            ("POSTERN_TOKEN", "t"),
        ],
    );
    assert_one_line(&output, 1, "plain http:// off loopback");

    let output = postern_env(
        &["relay", "--auth-secret", "s"],
        &[("POSTERN_PUBLIC_IP", "not-an-ip")],
    );
    assert_one_line(&output, 1, "--public-ip");
}

#[test]
fn secrets_from_the_environment_are_not_shown_in_help() {
    let output = postern_env(&["gateway", "--help"], &[("POSTERN_TOKEN", "s3cret-value")]);
    assert_eq!(output.status.code(), Some(0));
    assert!(!String::from_utf8_lossy(&output.stdout).contains("s3cret-value"));
}

#[test]
fn relay_configuration_errors_are_one_line() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["relay", "--auth-secret", "", "--public-ip", "127.0.0.1"],
            "--auth-secret must not be empty",
        ),
        (
            &[
                "relay",
                "--auth-secret",
                "s",
                "--public-ip",
                "::1",
                "--public-ip",
                "::2",
            ],
            "at most one IPv4 and one IPv6",
        ),
        (
            &[
                "relay",
                "--auth-secret",
                "s",
                "--public-ip",
                "127.0.0.1",
                "--listen",
                "127.0.0.1:1",
                "--ports",
                "5000-5000",
                "--workers",
                "2",
            ],
            "leaves no port",
        ),
    ];
    for (args, needle) in cases {
        assert_one_line(&postern(args), 1, needle);
    }
    // The port is held by another socket: a clear error, not a shared port.
    let holder = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let listen = holder.local_addr().unwrap().to_string();
    let output = postern(&[
        "relay",
        "--auth-secret",
        "s",
        "--public-ip",
        "127.0.0.1",
        "--listen",
        &listen,
    ]);
    assert_one_line(&output, 1, "Address already in use");
}

#[test]
fn daemons_refuse_plain_http_portals_off_loopback_before_touching_anything() {
    let cases: &[&[&str]] = &[
        &["gateway", "--portal", "http://198.18.0.2", "--token", "t"],
        &[
            "relay",
            "--portal",
            "http://198.18.0.2",
            "--token",
            "t",
            "--public-ip",
            "198.18.0.3",
        ],
        &[
            "client",
            "up",
            "--portal",
            "http://198.18.0.2",
            "--token",
            "t",
        ],
        &[
            "client",
            "sign-in",
            "--portal",
            "http://portal.test",
            "--account",
            "acme",
            "--no-browser",
        ],
    ];
    for args in cases {
        let output = postern(args);
        assert_one_line(&output, 1, "plain http:// off loopback");
        assert!(
            stderr(&output).starts_with(&format!("postern {}", args[0])),
            "{args:?}"
        );
    }
}

#[test]
fn client_status_without_a_daemon_says_so() {
    let output = postern(&[
        "client",
        "status",
        "--status-socket",
        "/nonexistent/postern.sock",
    ]);
    assert_one_line(
        &output,
        1,
        "no client daemon answers on /nonexistent/postern.sock",
    );
}

#[test]
fn an_unreachable_portal_at_start_is_one_line_and_exit_1() {
    let state = std::env::temp_dir().join(format!("postern-cli-{}", std::process::id()));
    // Nothing listens on port 1 of loopback.
    let output = postern(&[
        "gateway",
        "--portal",
        "http://127.0.0.1:1",
        "--token",
        "t",
        "--port",
        "0",
        "--state-dir",
        &state.to_string_lossy(),
    ]);
    let _ = std::fs::remove_dir_all(&state);
    if !is_root() {
        assert_one_line(&output, 1, "needs root");
        return;
    }
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let last = stderr(&output)
        .lines()
        .last()
        .unwrap_or_default()
        .to_string();
    assert!(
        last.starts_with("postern gateway: cannot reach the portal at http://127.0.0.1:1"),
        "{last}"
    );
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
}

#[test]
fn the_demo_says_in_one_line_that_it_needs_root() {
    if !is_root() {
        assert_one_line(&postern(&["demo"]), 1, "needs root");
        return;
    }
    // As root, drop to nobody to see what a normal user gets.
    let output = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_postern"))
        .arg("demo")
        .output()
        .expect("setpriv (util-linux) runs");
    assert_one_line(&output, 1, "needs root");
}

#[test]
fn daemons_log_json_lines_when_asked() {
    if !is_root() {
        // Without root the gateway stops before it logs anything.
        assert_one_line(
            &postern(&["gateway", "--portal", "http://127.0.0.1:1", "--token", "t"]),
            1,
            "needs root",
        );
        return;
    }
    let state = std::env::temp_dir().join(format!("postern-json-{}", std::process::id()));
    let output = postern(&[
        "gateway",
        "--log-format",
        "json",
        "--portal",
        "http://127.0.0.1:1",
        "--token",
        "t",
        "--port",
        "0",
        "--state-dir",
        &state.to_string_lossy(),
    ]);
    let _ = std::fs::remove_dir_all(&state);
    let text = stderr(&output);
    let first = text.lines().next().unwrap_or_default();
    let line: serde_json::Value =
        serde_json::from_str(first).unwrap_or_else(|e| panic!("{first:?} is not JSON: {e}"));
    assert_eq!(line["level"], "INFO", "{line}");
    assert_eq!(line["fields"]["message"], "gateway starting", "{line}");
    assert!(line["fields"]["device_id"].is_string(), "{line}");
}
