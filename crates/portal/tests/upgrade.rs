#![allow(clippy::unwrap_used)] // a test file: unwrap is the assertion
//! Upgrades: a database written by an earlier Postern (a fixture kept in
//! `tests/fixtures`, schema 7: an account, its admin token, a site and a
//! resource, written by `postern portal` of that version) is migrated
//! forward by this one and serves what it held.

mod support;

use axum::http::StatusCode;
use postern_portal::Store;
use postern_portal::secrets::SecretKey;
use sqlx::Connection as _;
use support::{TempDb, TestApp};

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

async fn migrations(url: &str) -> i64 {
    let mut conn = sqlx::SqliteConnection::connect(url).await.unwrap();
    sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations")
        .fetch_one(&mut conn)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_7_database_migrates_forward_and_serves_what_it_held() {
    let db = TempDb::new("upgrade");
    std::fs::create_dir_all(&db.dir).unwrap();
    let file = db.dir.join("portal.db");
    std::fs::copy(fixture("schema-7.db"), &file).unwrap();
    let url = format!("sqlite://{}", file.display());
    assert_eq!(migrations(&url).await, 7);

    let store = Store::open(&url).await.unwrap();
    let newest = migrations(&url).await;
    assert!(newest >= 7, "{newest}");
    println!("schema 7 -> {newest}");
    // The portal of that version sealed its settings with this key.
    let key = std::fs::read_to_string(fixture("schema-7.key")).unwrap();
    let token = std::fs::read_to_string(fixture("schema-7.token")).unwrap();
    let app = TestApp::adopt(store, SecretKey::parse(key.trim()).unwrap(), token.trim()).await;
    let sites = app.expect(StatusCode::OK, "GET", "/sites", None).await;
    assert_eq!(sites["data"][0]["name"], "Office", "{sites}");
    let resources = app.expect(StatusCode::OK, "GET", "/resources", None).await;
    assert_eq!(resources["data"][0]["address"], "10.0.1.80", "{resources}");
    assert_eq!(
        resources["data"][0]["filters"][0]["ports"], "80",
        "{resources}"
    );
    app.state.store.close().await;
}
