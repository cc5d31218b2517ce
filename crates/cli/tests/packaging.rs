#![allow(clippy::unwrap_used)] // a test file: unwrap is the assertion
//! The systemd units and example environment files in `packaging/`: each
//! unit passes `systemd-analyze verify`, runs a `postern` subcommand that
//! exists, keeps the hardening it promises (least capabilities, read-only
//! system, private tmp), and every variable an example environment file
//! sets is one that subcommand reads. The Debian package (`cargo deb`)
//! installs, runs and purges with dpkg.

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

/// Purges the package when the test ends, however it ends.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").args(["--purge", "postern"]).output();
    }
}

fn run(command: &mut Command) -> String {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{command:?}: {said}");
    said
}

fn package_status() -> String {
    let output = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", "postern"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The .deb that `cargo deb -p postern` makes, from the binary this test
/// run built (put where cargo-deb looks for a release build, in a target
/// directory of its own).
fn build_package(dir: &Path) -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let has_cargo_deb = Command::new(&cargo)
        .args(["deb", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        has_cargo_deb,
        "cargo-deb is missing: cargo install cargo-deb --version 3.8.0 --locked (.ci/run does)"
    );
    let release = dir.join("target/release");
    std::fs::create_dir_all(&release).unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_postern"), release.join("postern")).unwrap();
    let out = dir.join("deb");
    std::fs::create_dir_all(&out).unwrap();
    run(Command::new(&cargo)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("CARGO_TARGET_DIR", dir.join("target"))
        .args(["deb", "-p", "postern", "--no-build", "--fast", "-o"])
        .arg(&out));
    let mut debs: Vec<PathBuf> = std::fs::read_dir(&out)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "deb"))
        .collect();
    assert_eq!(debs.len(), 1, "{debs:?}");
    debs.remove(0)
}

/// The package installed with dpkg on this machine (CI is a throwaway
/// Debian, as root): the binary runs, the units are in place and pass
/// `systemd-analyze verify` where dpkg put them, the example settings are
/// root-only conffiles that `remove` keeps and `purge` deletes, and the
/// portal takes its settings from /etc/postern/portal.env, read as
/// systemd's `EnvironmentFile=` reads it (KEY=VALUE lines, `#` comments)
/// over the unit's own `Environment=`.
#[test]
fn the_debian_package_installs_runs_and_purges() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "installing a package needs root (CI runs as root)"
    );
    assert!(
        !package_status().contains("installed"),
        "a postern package is installed on this machine already; this test installs and purges its own, so remove it first"
    );
    let dir = std::env::temp_dir().join(format!("postern-deb-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let deb = build_package(&dir);

    let installed = Installed;
    run(Command::new("dpkg").arg("-i").arg(&deb));
    assert_eq!(package_status(), "install ok installed");
    let version = run(Command::new("/usr/bin/postern").arg("--version"));
    assert!(
        version.contains(env!("CARGO_PKG_VERSION")),
        "the installed binary runs: {version}"
    );
    for (name, env_file, _, _) in UNITS {
        let unit = Path::new("/lib/systemd/system").join(name);
        assert_eq!(
            std::fs::read_to_string(&unit).unwrap(),
            std::fs::read_to_string(packaging().join("systemd").join(name)).unwrap(),
            "{name}"
        );
        let said = run(Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&unit));
        assert!(said.trim().is_empty(), "{name}: {said}");
        use std::os::unix::fs::PermissionsExt as _;
        let settings = Path::new("/etc/postern").join(env_file);
        let mode = std::fs::metadata(&settings).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{env_file} may hold secrets");
    }
    let conffiles = run(Command::new("dpkg-query").args(["-W", "-f=${Conffiles}", "postern"]));
    for (_, env_file, _, _) in UNITS {
        assert!(
            conffiles.contains(&format!("/etc/postern/{env_file}")),
            "{env_file} is a conffile: {conffiles}"
        );
    }

    // The portal as its unit starts it, settings from the env file.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(
        "/etc/postern/portal.env",
        format!(
            "# test settings\nPOSTERN_LISTEN=127.0.0.1:{port}\nPOSTERN_DATABASE=sqlite://{}/portal.db\n",
            dir.display()
        ),
    )
    .unwrap();
    let unit = std::fs::read_to_string("/lib/systemd/system/postern-portal.service").unwrap();
    let file = std::fs::read_to_string("/etc/postern/portal.env").unwrap();
    let assignments = setting(&unit, "Environment")
        .into_iter()
        .chain(file.lines().filter(|line| !line.starts_with('#')))
        .filter_map(|line| line.split_once('='));
    let exec = setting(&unit, "ExecStart")[0].to_string();
    let mut words = exec.split_whitespace();
    let mut portal = Command::new(words.next().unwrap())
        .args(words)
        .env_clear()
        .envs(assignments)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let health = loop {
        if let Ok(mut tcp) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            use std::io::{Read as _, Write as _};
            tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: portal\r\nConnection: close\r\n\r\n")
                .unwrap();
            let mut response = String::new();
            let _ = tcp.read_to_string(&mut response);
            break response;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(15),
            "the installed portal did not listen where portal.env says"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let _ = portal.kill();
    let _ = portal.wait();
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(
        dir.join("portal.db").is_file(),
        "the database where portal.env says"
    );

    run(Command::new("dpkg").args(["-r", "postern"]));
    assert!(!Path::new("/usr/bin/postern").exists());
    assert!(
        Path::new("/etc/postern/portal.env").exists(),
        "remove keeps the settings"
    );
    run(Command::new("dpkg").args(["--purge", "postern"]));
    assert!(!Path::new("/etc/postern").exists(), "purge deletes them");
    assert_eq!(package_status(), "");
    drop(installed);
    std::fs::remove_dir_all(&dir).unwrap();
}
