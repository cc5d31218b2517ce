#![allow(clippy::unwrap_used)] // a test file: unwrap is the assertion
//! REST API tests on SQLite.

mod support;

use std::time::Duration;

use axum::http::StatusCode;
use serde_json::json;
use support::{TempDb, TestApp, id};

#[tokio::test]
async fn every_endpoint_on_sqlite() {
    let db = TempDb::new("crud");
    let app = TestApp::open(&db.url(), "acme").await;
    support::scenario::crud_scenario(&app).await;
}

#[tokio::test]
async fn expired_tokens_are_refused() {
    let db = TempDb::new("expiry");
    let app = TestApp::open(&db.url(), "acme").await;
    let expires = jiff::Timestamp::now() + jiff::SignedDuration::from_millis(1500);
    let token = app
        .expect(
            StatusCode::CREATED,
            "POST",
            &format!("/actors/{}/tokens", app.admin_id),
            Some(json!({"expires_at": expires})),
        )
        .await;
    let token = token["token"].as_str().unwrap().to_string();
    let (status, _) = app.call_as(Some(&token), "GET", "/sites", None).await;
    assert_eq!(status, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let (status, _) = app.call_as(Some(&token), "GET", "/sites", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_disabled_or_demoted_admin_loses_api_access() {
    let db = TempDb::new("demote");
    let app = TestApp::open(&db.url(), "acme").await;
    let bob = app
        .expect(
            StatusCode::CREATED,
            "POST",
            "/actors",
            Some(json!({"name": "Bob", "email": "bob@example.test", "role": "admin"})),
        )
        .await;
    let token = app
        .expect(
            StatusCode::CREATED,
            "POST",
            &format!("/actors/{}/tokens", id(&bob)),
            None,
        )
        .await;
    let token = token["token"].as_str().unwrap().to_string();
    assert_eq!(
        app.call_as(Some(&token), "GET", "/sites", None).await.0,
        StatusCode::OK
    );
    app.expect(
        StatusCode::OK,
        "PATCH",
        &format!("/actors/{}", id(&bob)),
        Some(json!({"role": "user"})),
    )
    .await;
    assert_eq!(
        app.call_as(Some(&token), "GET", "/sites", None).await.0,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn rate_limit_answers_429_with_retry_after() {
    let db = TempDb::new("rate");
    let app = TestApp::open(&db.url(), "acme").await;
    let mut limited = None;
    // The default bucket holds 100 requests.
    for n in 0..150 {
        let request = axum::http::Request::builder()
            .uri("/api/v1/sites")
            .header("authorization", format!("Bearer {}", app.token))
            .body(axum::body::Body::empty())
            .unwrap();
        let response = tower::ServiceExt::oneshot(app.router.clone(), request)
            .await
            .unwrap();
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            let retry: u64 = response.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            limited = Some((n, retry));
            break;
        }
        assert_eq!(response.status(), StatusCode::OK);
    }
    let (n, retry) = limited.expect("no 429 within 150 requests");
    assert!((100..=110).contains(&n), "limited after {n} requests");
    assert!((1..=2).contains(&retry), "Retry-After {retry}");
    // Another token has its own budget.
    let other = app.expect_as_fresh_admin_token().await;
    assert_eq!(
        app.call_as(Some(&other), "GET", "/sites", None).await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_database_from_a_newer_version_is_refused() {
    let db = TempDb::new("newer");
    let store = postern_portal::Store::open(&db.url()).await.unwrap();
    store.close().await;
    // Pretend a newer Postern applied migration 999.
    {
        use sqlx::Connection;
        let path = db.dir.join("portal.db");
        let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
            .await
            .unwrap();
        sqlx::query(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
             VALUES (999, 'from the future', 1, x'00', 0)",
        )
        .execute(&mut conn)
        .await
        .unwrap();
        conn.close().await.unwrap();
    }
    let error = postern_portal::Store::open(&db.url()).await.unwrap_err();
    assert!(
        matches!(error, postern_portal::StoreError::NewerSchema(999)),
        "{error}"
    );
    assert!(error.to_string().contains("newer Postern"), "{error}");
}

#[tokio::test]
async fn the_sqlite_file_and_its_directory_are_created_in_wal_mode() {
    let db = TempDb::new("create");
    let store = postern_portal::Store::open(&db.url()).await.unwrap();
    let mut tx = store.read().await.unwrap();
    let row = sqlx::query("PRAGMA journal_mode")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    let mode: String = sqlx::Row::try_get(&row, 0).unwrap();
    assert_eq!(mode, "wal");
    let row = sqlx::query("PRAGMA foreign_keys")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    let on: i64 = sqlx::Row::try_get(&row, 0).unwrap();
    assert_eq!(on, 1);
    tx.commit().await.unwrap();
    assert!(db.dir.join("portal.db").is_file());
    // A second open of the migrated file is fine.
    store.close().await;
    postern_portal::Store::open(&db.url()).await.unwrap();
}
