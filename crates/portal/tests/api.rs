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

/// Hostile bodies never get a 5xx: any JSON at any writing endpoint is a
/// 2xx or a 4xx problem.
#[test]
fn arbitrary_json_never_gets_a_server_error() {
    use proptest::prelude::*;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let db = TempDb::new("fuzzjson");
    let (app, site, group) = runtime.block_on(async {
        let app = TestApp::open_with(&db.url(), "acme", |state| {
            state.api_limiter = postern_portal::testing::RateLimiter::new(1_000_000, 1_000_000);
        })
        .await;
        let site = id(&app
            .expect(
                StatusCode::CREATED,
                "POST",
                "/sites",
                Some(json!({"name": "s"})),
            )
            .await);
        let group = id(&app
            .expect(
                StatusCode::CREATED,
                "POST",
                "/groups",
                Some(json!({"name": "g"})),
            )
            .await);
        (app, site, group)
    });
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(serde_json::Value::from),
        prop_oneof![
            Just("tcp".to_string()),
            Just("cidr".to_string()),
            Just("dns".to_string()),
            Just("10.0.0.0/8".to_string()),
            Just("*.example.test".to_string()),
            Just(site.clone()),
            Just(group.clone()),
            Just("MTWRF/09:00-17:00/UTC".to_string()),
            ".{0,40}",
        ]
        .prop_map(serde_json::Value::from),
    ];
    let keys = prop_oneof![
        Just("name".to_string()),
        Just("type".to_string()),
        Just("address".to_string()),
        Just("site_id".to_string()),
        Just("filters".to_string()),
        Just("protocol".to_string()),
        Just("ports".to_string()),
        Just("group_id".to_string()),
        Just("resource_id".to_string()),
        Just("conditions".to_string()),
        Just("property".to_string()),
        Just("values".to_string()),
        Just("email".to_string()),
        Just("role".to_string()),
        Just("actor_ids".to_string()),
        Just("expires_at".to_string()),
        Just("verified".to_string()),
        "[a-z_]{1,10}",
    ];
    let value = leaf.prop_recursive(4, 32, 6, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..5).prop_map(serde_json::Value::Array),
            proptest::collection::btree_map(keys.clone(), inner, 0..6)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    });
    let endpoints = [
        ("POST", "/sites".to_string()),
        ("POST", "/resources".to_string()),
        ("POST", "/groups".to_string()),
        ("POST", "/actors".to_string()),
        ("POST", "/policies".to_string()),
        ("PATCH", format!("/sites/{site}")),
        ("PUT", format!("/groups/{group}/members")),
    ];
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(400));
    runner
        .run(&(0..endpoints.len(), value), |(index, body)| {
            let (method, path) = &endpoints[index];
            let (status, problem) = runtime.block_on(app.call(method, path, Some(body.clone())));
            prop_assert!(
                status.as_u16() < 500,
                "{method} {path} {body} -> {status} {problem}"
            );
            Ok(())
        })
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_on_sqlite_allocate_distinct_addresses() {
    let db = TempDb::new("concurrent");
    let app = TestApp::open(&db.url(), "acme").await;
    support::concurrent_devices(&app).await;
}

/// Bodies past 256 KiB are refused unread (axum's own limit is 2 MiB), and
/// an admin holds at most 25 live tokens (each has its own rate bucket).
#[tokio::test]
async fn bodies_and_tokens_are_bounded() {
    let db = TempDb::new("bounds");
    let app = TestApp::open(&db.url(), "acme").await;
    let big = json!({"name": "x".repeat(300 * 1024)});
    let (status, body) = app.call("POST", "/sites", Some(big)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    // Just under the limit is read (and judged on its content).
    let fits = json!({"name": "x".repeat(200 * 1024)});
    let (status, _) = app.call("POST", "/sites", Some(fits)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);

    let path = format!("/actors/{}/tokens", app.admin_id);
    // The token `init` made is the first.
    for _ in 1..25 {
        app.expect(StatusCode::CREATED, "POST", &path, None).await;
    }
    let (status, body) = app.call("POST", &path, None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("revoke"),
        "{body}"
    );
}

/// GET `path` on the portal's whole router: status and body.
async fn probe(app: &TestApp, path: &str) -> (StatusCode, String) {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let request = axum::http::Request::get(path)
        .body(axum::body::Body::empty())
        .unwrap();
    let response = postern_portal::serve::app(app.state.clone())
        .oneshot(request)
        .await
        .unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

#[tokio::test]
async fn readyz_follows_the_database_and_healthz_only_the_process() {
    let db = TempDb::new("ready");
    let app = TestApp::open(&db.url(), "acme").await;
    assert_eq!(
        probe(&app, "/healthz").await,
        (StatusCode::OK, "ok\n".into())
    );
    assert_eq!(
        probe(&app, "/health").await,
        (StatusCode::OK, "ok\n".into())
    );
    assert_eq!(
        probe(&app, "/readyz").await,
        (StatusCode::OK, "ready\n".into())
    );

    // The newest migration undone (a rollback, a hand-edited database).
    let mut tx = app.state.store.write().await.unwrap();
    let undone = sqlx::query(
        "DELETE FROM _sqlx_migrations \
         WHERE version = (SELECT MAX(version) FROM _sqlx_migrations)",
    )
    .execute(&mut *tx)
    .await
    .unwrap();
    assert_eq!(undone.rows_affected(), 1);
    tx.commit().await.unwrap();
    let (status, body) = probe(&app, "/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("migrations"), "{body}");

    // The pool closed: the database cannot answer at all.
    app.state.store.close().await;
    let (status, body) = probe(&app, "/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("database does not answer"), "{body}");
    // Liveness does not care.
    assert_eq!(probe(&app, "/healthz").await.0, StatusCode::OK);
}

/// SPEC 7.4: the internet resource's exclusions are validated (prefixes or
/// addresses, host bits cleared, at most 64, none for other resources),
/// kept across patches that do not name them, replaced by ones that do,
/// and named in the error of a bad one.
#[tokio::test]
async fn the_internet_resource_keeps_validated_exclusions() {
    let db = TempDb::new("exclusions");
    let app = TestApp::open(&db.url(), "acme").await;
    let site = app
        .expect(
            StatusCode::CREATED,
            "POST",
            "/sites",
            Some(json!({"name": "hq"})),
        )
        .await;
    let internet = app
        .expect(
            StatusCode::CREATED,
            "POST",
            "/resources",
            Some(
                json!({"name": "internet", "type": "internet", "site_id": id(&site),
                        "exclusions": ["198.51.100.9/24", "2001:db8::7"]}),
            ),
        )
        .await;
    assert_eq!(
        internet["exclusions"],
        json!(["198.51.100.0/24", "2001:db8::7/128"])
    );
    let path = format!("/resources/{}", id(&internet));
    let renamed = app
        .expect(
            StatusCode::OK,
            "PATCH",
            &path,
            Some(json!({"name": "full tunnel"})),
        )
        .await;
    assert_eq!(renamed["exclusions"], internet["exclusions"]);
    let replaced = app
        .expect(
            StatusCode::OK,
            "PATCH",
            &path,
            Some(json!({"exclusions": ["203.0.113.0/24"]})),
        )
        .await;
    assert_eq!(replaced["exclusions"], json!(["203.0.113.0/24"]));
    let read = app.expect(StatusCode::OK, "GET", &path, None).await;
    assert_eq!(read["exclusions"], json!(["203.0.113.0/24"]));
    for bad in [json!(["0.0.0.0/0"]), json!(["nonsense"])] {
        let (status, problem) = app
            .call("PATCH", &path, Some(json!({"exclusions": bad})))
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
        assert_eq!(problem["field"], "exclusions", "{problem}");
    }
    let (status, problem) = app
        .call(
            "POST",
            "/resources",
            Some(
                json!({"name": "db", "type": "cidr", "address": "10.0.0.0/8",
                        "site_id": id(&site), "exclusions": ["10.1.0.0/16"]}),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    assert_eq!(problem["field"], "exclusions");
}

/// The attacker holds a read token: every change the document lists is
/// refused with 403 and changes nothing, whatever the body; reading works,
/// and the token's own audit trail names it.
#[tokio::test]
async fn a_read_token_changes_nothing_through_any_operation() {
    let db = TempDb::new("scopes");
    let app = TestApp::open(&db.url(), "acme").await;
    let site = app
        .expect(
            StatusCode::CREATED,
            "POST",
            "/sites",
            Some(json!({"name": "office"})),
        )
        .await;
    let minted = app
        .expect(
            StatusCode::CREATED,
            "POST",
            &format!("/actors/{}/tokens", app.admin_id),
            Some(json!({"scopes": ["read"]})),
        )
        .await;
    let reader = minted["token"].as_str().unwrap().to_string();
    let (status, sites) = app.call_as(Some(&reader), "GET", "/sites", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(sites["data"][0]["id"], site["id"]);

    let (_, before) = app.call("GET", "/audit_log?limit=1000", None).await;
    let document = postern_portal::openapi_document();
    let mut tried = 0;
    for (path, item) in document["paths"].as_object().unwrap() {
        for (method, _) in item.as_object().unwrap() {
            if method == "get" {
                continue;
            }
            // A real object's id, and a body that would be valid.
            let path = path.replace("{id}", site["id"].as_str().unwrap());
            let body = json!({"name": "renamed"});
            let (status, problem) = app
                .call_as(Some(&reader), &method.to_uppercase(), &path, Some(body))
                .await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}: {problem}");
            assert!(
                problem["detail"].as_str().unwrap().contains("read scope"),
                "{problem}"
            );
            tried += 1;
        }
    }
    assert!(
        tried >= 20,
        "only {tried} changing operations in the document"
    );
    let (_, after) = app.call("GET", "/audit_log?limit=1000", None).await;
    assert_eq!(
        before["data"], after["data"],
        "a read token changed something"
    );
    let (_, unchanged) = app
        .call("GET", &format!("/sites/{}", id(&site)), None)
        .await;
    assert_eq!(unchanged["name"], "office");

    // The token's creation is in the audit log with its scopes; a scope list
    // that is not one of the two is refused, and scopes on a service
    // account's (client) token conflict with what that actor is.
    let created = after["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["object_id"] == minted["id"])
        .expect("the token's creation is audited");
    assert_eq!(created["after"]["scopes"], json!(["read"]));
    for bad in [
        json!(["write"]),
        json!(["read", "read"]),
        json!([]),
        json!(["admin"]),
    ] {
        let (status, problem) = app
            .call(
                "POST",
                &format!("/actors/{}/tokens", app.admin_id),
                Some(json!({"scopes": bad})),
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {problem}");
        assert_eq!(
            problem["field"].as_str().unwrap().split('[').next(),
            Some("scopes")
        );
    }
    let robot = app
        .expect(
            StatusCode::CREATED,
            "POST",
            "/actors",
            Some(json!({"name": "ci", "role": "service_account"})),
        )
        .await;
    let (status, problem) = app
        .call(
            "POST",
            &format!("/actors/{}/tokens", id(&robot)),
            Some(json!({"scopes": ["read"]})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    // A read-write token still writes.
    let writer = app
        .expect(
            StatusCode::CREATED,
            "POST",
            &format!("/actors/{}/tokens", app.admin_id),
            Some(json!({"scopes": ["write", "read"]})),
        )
        .await;
    let (status, _) = app
        .call_as(
            writer["token"].as_str(),
            "POST",
            "/sites",
            Some(json!({"name": "lab"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
}
