#![allow(clippy::unwrap_used)] // a test file: unwrap is the assertion
//! The SCIM 2.0 server (issue 18, SPEC 7.3) from its clients' side: the
//! compliance suite scim2-tester (PyPI) against a portal on loopback, and
//! the requests Okta and Microsoft Entra send, replayed as they send them.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;

use serde_json::{Value, json};
use support::{TempDb, TestApp};

/// The scim2-tester release the server was checked with (its checks change).
const TESTER: &str = "0.5.2";

/// A portal on loopback whose external URL is its own address, with a
/// SCIM directory: (app, address, SCIM base URL, token).
async fn portal_with_directory(db: &TempDb) -> (TestApp, SocketAddr, String, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = TestApp::open_with(&db.url(), "acme", |state| {
        state.external_url = Some(format!("http://{addr}"));
    })
    .await;
    let state = app.state.clone();
    tokio::spawn(async move {
        postern_portal::serve::serve(listener, state, std::future::pending())
            .await
            .unwrap();
    });
    let (status, directory) = app
        .call(
            "POST",
            "/directories",
            Some(json!({"type": "scim", "name": "Okta"})),
        )
        .await;
    assert_eq!(status, 201, "{directory}");
    let base = directory["scim_base_url"].as_str().unwrap().to_string();
    assert_eq!(base, format!("http://{addr}/acme/scim/v2"));
    let token = directory["token"].as_str().unwrap().to_string();
    (app, addr, base, token)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scim2_tester_finds_nothing_wrong_with_the_scim_server() {
    let version = std::process::Command::new("python3")
        .args([
            "-c",
            "import importlib.metadata as m; print(m.version('scim2-tester'))",
        ])
        .output();
    let found = version
        .as_ref()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    assert_eq!(
        found, TESTER,
        "this test needs scim2-tester {TESTER}: pip install 'scim2-tester[httpx2]=={TESTER}' (the CI does)"
    );
    let db = TempDb::new("scim-tester");
    let (_app, _addr, base, token) = portal_with_directory(&db).await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scim/check.py");
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .arg(script)
            .args([&base, &token])
            .stdin(Stdio::null())
            .output()
    })
    .await
    .unwrap()
    .expect("python3 runs");
    let report = String::from_utf8_lossy(&output.stdout);
    println!("{report}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(
        output.status.success(),
        "scim2-tester found problems:\n{report}"
    );
    // Every kind of check ran: discovery, CRUD and PATCH on both types.
    for check in [
        "object_creation",
        "object_replacement",
        "object_deletion",
        "check_add_attribute",
        "check_remove_attribute",
        "check_replace_attribute",
        "query_all_schemas",
        "random_url",
    ] {
        assert!(report.contains(check), "{check} did not run:\n{report}");
    }
    let _ = Value::Null;
}
