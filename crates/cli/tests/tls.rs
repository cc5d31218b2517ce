#![allow(clippy::unwrap_used)] // a test file: unwrap is the assertion
//! The portal channel over TLS in the lab (SPEC 7.2): the demo's portal
//! serves HTTPS with a certificate from the lab's CA and every daemon trusts
//! it through `--ca-file` (the demo's downloads prove that). Here a daemon
//! meets what an on-path attacker or a broken deployment gives it: another
//! CA's certificate, an expired one, one for another name, and a plain
//! http:// portal. Each is refused with one line that says which; the
//! devices already connected keep working through the portal's reloads.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use postern_lab::NatKind;
use postern_lab::demo::{Demo, DemoOptions, PORTAL};
use postern_lab::pki::{TestCa, Validity};

fn demo() -> Demo {
    match Demo::start(DemoOptions {
        postern: env!("CARGO_BIN_EXE_postern").into(),
        home_nat: NatKind::Cone,
        office_nat: NatKind::Cone,
        gateways: 1,
        client_in_office: false,
        ipv6: Default::default(),
    }) {
        Ok(demo) => demo,
        Err(error) => panic!("the lab did not start: {error}"),
    }
}

/// A relay in portal mode (the lightest daemon) that trusts `ca_file`, on a
/// port of its own; what it logged once `needle` appears (or 15 s passed).
fn relay_says(
    demo: &Demo,
    portal: &str,
    ca_file: &std::path::Path,
    port: u16,
    needle: &str,
) -> String {
    let token = demo.data_dir().join("relay.token");
    let mut relay = demo
        .spawn_postern(
            &demo.net.relay,
            &[
                "relay",
                "--portal",
                portal,
                &format!("--ca-file={}", ca_file.display()),
                &format!("--token-file={}", token.display()),
                "--listen",
                &format!("198.18.0.3:{port}"),
                "--public-ip",
                "198.18.0.3",
            ],
        )
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !relay.stderr().contains(needle) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let said = relay.stderr();
    relay.kill().unwrap();
    said
}

/// The portal serves a certificate for `names` from `ca` from now on (written over the portal's
/// files, then SIGHUP).
fn portal_serves(demo: &Demo, ca: &TestCa, names: &[&str], validity: Validity) {
    let files = &demo.pki.portal;
    let dir = files.certificate.parent().unwrap();
    let fresh = ca.write_server(dir, "next", names, validity).unwrap();
    std::fs::rename(&fresh.certificate, &files.certificate).unwrap();
    std::fs::rename(&fresh.key, &files.key).unwrap();
    let reloads = || {
        demo.processes[0]
            .stderr()
            .matches("reloaded the TLS certificate")
            .count()
    };
    let before = reloads();
    demo.processes[0].signal(Signal::SIGHUP).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while reloads() == before {
        assert!(
            Instant::now() < deadline,
            "no reload logged:\n{}",
            demo.processes[0].stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn daemons_refuse_a_portal_they_cannot_trust_and_say_why() {
    let demo = demo();
    demo.download(1024, Duration::from_secs(5)).unwrap();
    let portal = format!("https://{PORTAL}");
    let portal_ip = PORTAL.split(':').next().unwrap();

    // The right CA: the relay registers (the portal lists a relay).
    let said = relay_says(
        &demo,
        &portal,
        &demo.pki.ca_file,
        3500,
        "relay registered and ready",
    );
    assert!(said.contains("relay registered and ready"), "{said}");

    // A CA the daemon was not given (an attacker's, a wrong file).
    let other = TestCa::new("Mallory CA").unwrap();
    let other_file = other
        .write_ca(&demo.data_dir().join("other-ca.pem"))
        .unwrap();
    let said = relay_says(&demo, &portal, &other_file, 3501, "certificate");
    assert!(
        said.contains(
            "the portal's certificate is not signed by a trusted CA (give the CA with --ca-file)"
        ),
        "{said}"
    );

    // The portal's certificate expired (reloaded without a restart).
    portal_serves(&demo, &demo.pki.ca, &[portal_ip], Validity::Expired);
    let said = relay_says(&demo, &portal, &demo.pki.ca_file, 3502, "certificate");
    assert!(
        said.contains("the portal's certificate has expired"),
        "{said}"
    );

    // A certificate for another name.
    portal_serves(
        &demo,
        &demo.pki.ca,
        &["portal.elsewhere.test"],
        Validity::Current,
    );
    let said = relay_says(&demo, &portal, &demo.pki.ca_file, 3503, "certificate");
    assert!(
        said.contains(&format!(
            "the portal's certificate is not valid for {portal_ip}"
        )),
        "{said}"
    );

    // The devices connected before kept their channels through the
    // reloads: a change still reaches them.
    portal_serves(&demo, &demo.pki.ca, &[portal_ip], Validity::Current);
    demo.download(1024, Duration::from_secs(5)).unwrap();
    assert!(
        !demo.logs().contains("portal connection lost"),
        "{}",
        demo.logs()
    );

    // Plain http off loopback: refused at start, before anything runs.
    let token = demo.data_dir().join("relay.token");
    let mut relay = demo
        .spawn_postern(
            &demo.net.relay,
            &[
                "relay",
                "--portal",
                &format!("http://{PORTAL}"),
                &format!("--token-file={}", token.display()),
                "--listen",
                "198.18.0.3:3504",
                "--public-ip",
                "198.18.0.3",
            ],
        )
        .unwrap();
    let status = relay.wait_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(status.and_then(|s| s.code()), Some(1), "{}", relay.stderr());
    assert!(
        relay.stderr().contains("plain http:// off loopback"),
        "{}",
        relay.stderr()
    );
}
