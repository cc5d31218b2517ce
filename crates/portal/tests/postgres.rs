#![allow(clippy::unwrap_used)] // a test file: unwrap is the assertion
//! The store suite on PostgreSQL: a throwaway server started by the test.

mod support;

use support::TestApp;
use support::postgres::TempPostgres;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_on_postgres_and_newer_schemas_are_refused() {
    let server = TempPostgres::start();

    let url = server.database("crud").await;
    let app = TestApp::open(&url, "acme").await;
    support::scenario::crud_scenario(&app).await;
    app.state.store.close().await;

    // The same migrations twice are fine; a migration this build does not
    // know is refused with a clear message.
    let url = server.database("newer").await;
    let store = postern_portal::Store::open(&url).await.unwrap();
    store.close().await;
    let store = postern_portal::Store::open(&url).await.unwrap();
    store.close().await;
    {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
        sqlx::query(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
             VALUES (999, 'from the future', true, '\\x00', 0)",
        )
        .execute(&mut conn)
        .await
        .unwrap();
        conn.close().await.unwrap();
    }
    let error = postern_portal::Store::open(&url).await.unwrap_err();
    assert!(
        matches!(error, postern_portal::StoreError::NewerSchema(999)),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_on_postgres_allocate_distinct_addresses() {
    let server = TempPostgres::start_named("addr");
    let url = server.database("addresses").await;
    let app = TestApp::open(&url, "acme").await;
    support::concurrent_devices(&app).await;
}
