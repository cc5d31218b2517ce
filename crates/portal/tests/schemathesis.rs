#![allow(clippy::unwrap_used)] // a test file: unwrap is the assertion
//! The REST API against its own OpenAPI document, checked by schemathesis
//! (PyPI), the property-based tester API users would run: every check on
//! (status codes, schemas of answers, schema-valid requests accepted and
//! invalid ones refused, auth ignored, use after delete, ...), in all its
//! phases including the stateful one that follows the document's links from
//! each create. Zero failures and zero schema errors, with a request rate
//! set for the tester below the portal's limit rather than the limit lifted.
//!
//! Needs `st` (`pip install schemathesis==4.32.5`; the CI does) and fails
//! loudly without it.

mod support;

use std::path::Path;
use std::process::Stdio;

use support::{TempDb, TestApp};

/// The version the document was checked with (its checks change).
const VERSION: &str = "4.32.5";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_nothing_wrong_with_the_api() {
    let version = std::process::Command::new("st").arg("--version").output();
    let Ok(version) = version else {
        panic!("this test needs schemathesis: pip install schemathesis=={VERSION} (the CI does)");
    };
    let version = String::from_utf8_lossy(&version.stdout).to_string();
    assert!(
        version.contains(VERSION),
        "schemathesis {VERSION} is needed, found {version:?}: pip install schemathesis=={VERSION}"
    );

    let db = TempDb::new("schemathesis");
    let app = TestApp::open(&db.url(), "acme").await;
    let addr = app.serve().await;
    let token = app.expect_as_fresh_admin_token().await;
    let hooks = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/schemathesis");
    let seed = std::env::var("POSTERN_SCHEMATHESIS_SEED").unwrap_or_else(|_| "20261202".into());
    let started = std::time::Instant::now();
    let url = format!("http://{addr}/api/v1/openapi.json");
    let header = format!("Authorization: Bearer {token}");
    let seed_arg = seed.clone();
    // Schemathesis keeps a cache where it runs: the test's own directory,
    // not the source tree.
    let workdir = db.dir.clone();
    // Blocking, on its own thread: the portal keeps serving on the runtime's.
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("st")
            .args([
                "run",
                &url,
                "--checks",
                "all",
                "--phases",
                "examples,coverage,fuzzing,stateful",
                // The portal allows a token 100 at once and 20 per second.
                "--rate-limit",
                "18/s",
                "--workers",
                "1",
                "--seed",
                &seed_arg,
                "--no-color",
                "--header",
                &header,
                // Syncing an LDAP directory connects to its server, which
                // the tester must not make the portal do (tests/ldap.rs
                // runs it against a slapd of its own), and a server that
                // cannot be reached is rightly a 502.
                "--exclude-path",
                "/directories/{id}/sync",
            ])
            .current_dir(&workdir)
            .env("SCHEMATHESIS_HOOKS", "hooks")
            .env("PYTHONPATH", &hooks)
            .stdin(Stdio::null())
            .output()
    })
    .await
    .unwrap()
    .expect("st runs");
    let report = String::from_utf8_lossy(&output.stdout);
    let summary = report
        .rfind("SUMMARY")
        .map(|at| &report[at..])
        .unwrap_or(&report);
    println!(
        "schemathesis (seed {seed}) in {:.0} s:\n{summary}",
        started.elapsed().as_secs_f64()
    );
    assert!(
        output.status.success(),
        "schemathesis found failures (seed {seed}):\n{report}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Every operation of the document was tested, but the one excluded
    // above (LDAP sync).
    let operations: usize = postern_portal::openapi_document()["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|item| item.as_object().unwrap().len())
        .sum::<usize>()
        - 1;
    assert!(
        summary.contains(&format!("Tested: {operations}\n")),
        "not all {operations} operations were tested:\n{summary}"
    );
}
