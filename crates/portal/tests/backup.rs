#![allow(clippy::unwrap_used)] // a test file: unwrap is the assertion
//! `postern portal backup` and `restore` (SPEC 7.2): a backup taken while
//! the API goes on writing is consistent (every site it holds has its
//! audit entry, and the other way round), and restores into an empty
//! SQLite database and into PostgreSQL, where the restored portal serves
//! what the original did and goes on numbering its logs.

mod support;

use axum::http::StatusCode;
use postern_portal::Store;
use postern_portal::backup::{BackupError, restore};
use serde_json::json;
use sqlx::Connection as _;
use support::postgres::TempPostgres;
use support::{TempDb, TestApp};

/// Sites and their creation audit entries in the SQLite database at `path`.
async fn sites_and_audits(url: &str) -> (i64, i64) {
    let mut conn = sqlx::SqliteConnection::connect(url).await.unwrap();
    let sites: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sites")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    let audits: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM audit_log WHERE action = 'site.create'")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    (sites, audits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_under_writes_is_consistent_and_restores_into_sqlite_and_postgres() {
    let db = TempDb::new("backup-source");
    let app = TestApp::open_with(&db.url(), "acme", |state| {
        state.api_limiter = postern_portal::testing::RateLimiter::new(1_000_000, 1_000_000);
    })
    .await;
    let backup = db.dir.join("portal.backup");

    // Sites are created one after another while the backup is taken: it
    // starts once a few exist (not after a fixed time, which a fast
    // machine's writes can outrun).
    let created = std::sync::atomic::AtomicUsize::new(0);
    let writes = async {
        for n in 0..150 {
            app.expect(
                StatusCode::CREATED,
                "POST",
                "/sites",
                Some(json!({"name": format!("site-{n}")})),
            )
            .await;
            created.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::task::yield_now().await;
        }
    };
    let copy = async {
        while created.load(std::sync::atomic::Ordering::SeqCst) < 20 {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        app.state.store.backup_to(&backup).await.unwrap();
    };
    tokio::join!(writes, copy);

    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&backup).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "a backup holds secrets");
    let (sites, audits) = sites_and_audits(&format!("sqlite://{}", backup.display())).await;
    println!("the backup caught {sites} of 150 sites mid-stream");
    assert!(sites > 0 && sites < 150, "not taken mid-stream: {sites}");
    assert_eq!(
        sites, audits,
        "a site without its audit entry (or the reverse)"
    );
    // A second backup to the same file is refused, the first left intact.
    assert!(matches!(
        app.state.store.backup_to(&backup).await,
        Err(BackupError::Exists(_))
    ));

    // Into a new SQLite database.
    let target = TempDb::new("backup-target");
    let copied = restore(&backup, &target.url()).await.unwrap();
    assert!(copied.rows > sites as u64, "{copied:?}");
    let (restored, restored_audits) = sites_and_audits(&target.url()).await;
    assert_eq!((restored, restored_audits), (sites, audits));
    // Not into a database that has rows.
    assert!(matches!(
        restore(&backup, &target.url()).await,
        Err(BackupError::NotEmpty(_))
    ));

    // Into PostgreSQL: the portal there serves the same account.
    let server = TempPostgres::start_named("restore");
    let url = server.database("restored").await;
    restore(&backup, &url).await.unwrap();
    let mut pg = sqlx::PgConnection::connect(&url).await.unwrap();
    let pg_sites: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sites")
        .fetch_one(&mut pg)
        .await
        .unwrap();
    assert_eq!(pg_sites, sites);
    // The admin's token still works there, and new log entries follow the
    // restored ones (the sequences moved past them).
    let store = Store::open(&url).await.unwrap();
    let restored_app = TestApp::attach(store, &app).await;
    let listed = restored_app
        .expect(StatusCode::OK, "GET", "/sites", None)
        .await;
    assert_eq!(listed["data"].as_array().unwrap().len() as i64, sites);
    restored_app
        .expect(
            StatusCode::CREATED,
            "POST",
            "/sites",
            Some(json!({"name": "after-restore"})),
        )
        .await;
    pg.close().await.unwrap();
    restored_app.state.store.close().await;
}

#[tokio::test]
async fn a_file_that_is_not_a_backup_is_refused_with_its_name() {
    let db = TempDb::new("backup-bad");
    std::fs::create_dir_all(&db.dir).unwrap();
    let bogus = db.dir.join("not-a-backup");
    std::fs::write(&bogus, "hello").unwrap();
    let target = TempDb::new("backup-bad-target");
    let error = restore(&bogus, &target.url()).await.unwrap_err();
    assert!(
        matches!(error, BackupError::Unreadable { .. })
            && error.to_string().contains("not-a-backup"),
        "{error}"
    );
}
