#![allow(clippy::unwrap_used)] // a test file: unwrap is the assertion
//! The systemd units and example environment files in `packaging/`: each
//! unit passes `systemd-analyze verify`, runs a `postern` subcommand that
//! exists, keeps the hardening it promises (least capabilities, read-only
//! system, private tmp), and every variable an example environment file
//! sets is one that subcommand reads.

use std::path::{Path, PathBuf};
use std::process::Command;

fn packaging() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packaging")
}

/// (unit, example environment file, subcommand, capabilities it keeps).
const UNITS: &[(&str, &str, &[&str], &str)] = &[
    (
        "postern-portal.service",
        "portal.env",
        &["portal"],
        "CAP_NET_BIND_SERVICE",
    ),
    ("postern-relay.service", "relay.env", &["relay"], ""),
    (
        "postern-gateway.service",
        "gateway.env",
        &["gateway"],
        "CAP_NET_ADMIN",
    ),
    (
        "postern-client.service",
        "client.env",
        &["client", "up"],
        "CAP_NET_ADMIN",
    ),
];

/// Variables read outside clap's listing (hidden secrets).
const HIDDEN_VARIABLES: &[&str] = &["POSTERN_SECRET_KEY", "POSTERN_SMTP_PASSWORD"];

fn setting<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    unit.lines()
        .filter_map(|line| line.strip_prefix(key)?.strip_prefix('='))
        .collect()
}

#[test]
fn the_units_verify_and_keep_their_hardening() {
    let analyze = Command::new("systemd-analyze").arg("--version").output();
    assert!(
        analyze.is_ok_and(|o| o.status.success()),
        "systemd-analyze is missing: install systemd (.ci/run does)"
    );
    let dir = std::env::temp_dir().join(format!("postern-units-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, _, subcommand, capabilities) in UNITS {
        let unit = std::fs::read_to_string(packaging().join("systemd").join(name)).unwrap();
        // The subcommand the unit runs.
        let exec = setting(&unit, "ExecStart");
        assert_eq!(exec.len(), 1, "{name}");
        let mut words = exec[0].split_whitespace();
        assert_eq!(words.next(), Some("/usr/bin/postern"), "{name}");
        assert_eq!(words.collect::<Vec<_>>(), subcommand.to_vec(), "{name}");
        // The hardening.
        for (key, value) in [
            ("ProtectSystem", "strict"),
            ("PrivateTmp", "yes"),
            ("NoNewPrivileges", "yes"),
            ("ProtectHome", "yes"),
        ] {
            assert_eq!(setting(&unit, key), vec![value], "{name}: {key}");
        }
        assert_eq!(
            setting(&unit, "CapabilityBoundingSet"),
            vec![*capabilities],
            "{name}"
        );
        // systemd's own check, with the binary we built in its place.
        let path = dir.join(name);
        let built = env!("CARGO_BIN_EXE_postern");
        std::fs::write(&path, unit.replace("/usr/bin/postern", built)).unwrap();
        let output = Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&path)
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success() && said.trim().is_empty(),
            "{name}: {said}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_example_environment_files_set_only_what_postern_reads() {
    for (name, env_file, subcommand, _) in UNITS {
        let help = Command::new(env!("CARGO_BIN_EXE_postern"))
            .args(subcommand.iter())
            .arg("--help")
            .output()
            .unwrap();
        assert!(help.status.success(), "{name}");
        let help = String::from_utf8_lossy(&help.stdout);
        let text = std::fs::read_to_string(packaging().join("env").join(env_file)).unwrap();
        for line in text.lines() {
            let line = line.trim_start_matches('#');
            let Some((variable, _)) = line.split_once('=') else {
                continue;
            };
            if !variable.starts_with("POSTERN_") {
                continue;
            }
            assert!(
                help.contains(&format!("env: {variable}")) || HIDDEN_VARIABLES.contains(&variable),
                "{env_file}: postern {} does not read {variable}",
                subcommand.join(" ")
            );
        }
    }
}
