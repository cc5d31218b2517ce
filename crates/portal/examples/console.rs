#![allow(clippy::unwrap_used)] // a benchmark: a failure ends it with its message
//! The console's render times at scale (issue 17's goal: every page under
//! 50 ms on the server with 10,000 clients and 1,000 resources in the
//! account). Seeds a SQLite portal on loopback with `--clients` client
//! devices (10 per user), `--resources` resources each reached by a policy
//! from one of 100 groups, and 2,000 audit entries, then times each console
//! page over `--runs` requests as a signed-in admin (loopback round trip:
//! an upper bound of the server's time) and prints min/median/max against
//! the goal. `bench/console.sh` runs it.
//!
//! console [--clients 10000] [--resources 1000] [--runs 20]

use std::sync::Arc;
use std::time::{Duration, Instant};

use postern_portal::domain::TokenKind;
use postern_portal::state::AppState;
use postern_portal::testing::tokens::{self, NewToken};
use postern_portal::{Store, setup};
use uuid::Uuid;

const GOAL: Duration = Duration::from_millis(50);

fn flag(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} takes a number, not {v:?}"))
        })
        .unwrap_or(default)
}

#[tokio::main]
async fn main() {
    let clients = flag("--clients", 10_000);
    let resources = flag("--resources", 1_000);
    let runs = flag("--runs", 20).max(1);
    let dir = std::env::temp_dir().join(format!("postern-console-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let url = format!("sqlite://{}/portal.db", dir.display());
    let store = Store::open(&url).await.expect("the store opens");
    let init = setup::init_account(&store, "acme", "admin@example.test")
        .await
        .expect("the account is made");
    let account = init.account.id;

    let started = Instant::now();
    let seeded = seed(&store, account, clients, resources).await;
    println!(
        "seeded {clients} clients of {} users, {resources} resources and policies, {} groups, \
         2,000 audit entries in {:.1} s",
        seeded.users.len(),
        seeded.groups.len(),
        started.elapsed().as_secs_f64()
    );

    // A browser session of the admin, as the sign-in would make it.
    let minted = postern_portal::auth::token::mint().expect("randomness");
    let mut tx = store.write().await.unwrap();
    tokens::insert(
        &mut tx,
        &minted,
        &NewToken {
            account_id: Some(account),
            kind: TokenKind::Browser,
            actor_id: Some(init.admin_id),
            site_id: None,
            identity_provider_id: None,
            expires_at_ms: None,
            read_only: false,
        },
        0,
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let mut state = AppState::new(store);
    // One admin asks for every page many times: no rate limit here.
    state.api_limiter = postern_portal::testing::RateLimiter::new(1_000_000, 1_000_000);
    let state = Arc::new(state);
    tokio::spawn(async move {
        postern_portal::serve::serve(listener, state, std::future::pending())
            .await
            .expect("the portal serves");
    });

    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .unwrap();
    let cookie = format!("postern_session={}", minted.token);
    let user = seeded.users[0];
    let pages = [
        "/acme/".to_string(),
        "/acme/sites".to_string(),
        format!("/acme/sites/{}", seeded.site),
        "/acme/resources".to_string(),
        "/acme/groups".to_string(),
        format!("/acme/groups/{}", seeded.groups[0]),
        "/acme/policies".to_string(),
        format!("/acme/access?who={user}&resource={}", seeded.resource),
        "/acme/actors".to_string(),
        format!("/acme/actors/{user}"),
        "/acme/clients".to_string(),
        "/acme/identity".to_string(),
        "/acme/logs/audit".to_string(),
        "/acme/logs/sessions".to_string(),
        "/acme/logs/flows".to_string(),
        "/acme/settings".to_string(),
        "/acme/me".to_string(),
    ];
    println!(
        "{:<44} {:>9} {:>9} {:>9} {:>9}  goal {} ms",
        "page",
        "min ms",
        "median",
        "max",
        "KiB",
        GOAL.as_millis()
    );
    let mut over = 0;
    for page in &pages {
        let mut times = Vec::with_capacity(runs);
        let mut size = 0;
        for _ in 0..runs {
            let started = Instant::now();
            let response = http
                .get(format!("{base}{page}"))
                .header("cookie", &cookie)
                .send()
                .await
                .unwrap();
            let status = response.status();
            let body = response.bytes().await.unwrap();
            times.push(started.elapsed());
            assert!(
                status.is_success(),
                "{page}: {status} {}",
                String::from_utf8_lossy(&body)
            );
            size = body.len();
        }
        times.sort();
        let median = times[times.len() / 2];
        let verdict = if median <= GOAL {
            "ok"
        } else {
            over += 1;
            "OVER"
        };
        let shown: String = page.chars().take(44).collect();
        println!(
            "{shown:<44} {:>9.1} {:>9.1} {:>9.1} {:>9.1}  {verdict} ({:.2}x the goal)",
            ms(times[0]),
            ms(median),
            ms(times[times.len() - 1]),
            size as f64 / 1024.0,
            ms(median) / ms(GOAL)
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "{} of {} pages within {} ms (median)",
        pages.len() - over,
        pages.len(),
        GOAL.as_millis()
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

struct Seeded {
    site: Uuid,
    users: Vec<Uuid>,
    groups: Vec<Uuid>,
    resource: Uuid,
}

/// Rows written straight to the store in one transaction (the API would
/// take minutes and each client needs a connection to exist).
async fn seed(store: &Store, account: Uuid, clients: usize, resources: usize) -> Seeded {
    let account = account.to_string();
    let mut tx = store.write().await.unwrap();
    let site = Uuid::new_v4();
    sqlx::query("INSERT INTO sites (id, account_id, name, created_at, updated_at) VALUES ($1, $2, 'Office', 0, 0)")
        .bind(site.to_string())
        .bind(&account)
        .execute(&mut *tx)
        .await
        .unwrap();
    let users: Vec<Uuid> = (0..clients.div_ceil(10).max(1))
        .map(|_| Uuid::new_v4())
        .collect();
    for (n, user) in users.iter().enumerate() {
        sqlx::query(
            "INSERT INTO actors (id, account_id, name, email, role, disabled, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, 'user', 0, 0, 0)",
        )
        .bind(user.to_string())
        .bind(&account)
        .bind(format!("User {n:05}"))
        .bind(format!("user{n:05}@example.test"))
        .execute(&mut *tx)
        .await
        .unwrap();
    }
    let groups: Vec<Uuid> = (0..100).map(|_| Uuid::new_v4()).collect();
    for (n, group) in groups.iter().enumerate() {
        sqlx::query(
            "INSERT INTO groups (id, account_id, name, kind, created_at, updated_at) \
             VALUES ($1, $2, $3, 'static', 0, 0)",
        )
        .bind(group.to_string())
        .bind(&account)
        .bind(format!("Group {n:03}"))
        .execute(&mut *tx)
        .await
        .unwrap();
    }
    for (n, user) in users.iter().enumerate() {
        sqlx::query("INSERT INTO memberships (account_id, group_id, actor_id) VALUES ($1, $2, $3)")
            .bind(&account)
            .bind(groups[n % groups.len()].to_string())
            .bind(user.to_string())
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    let mut first_resource = Uuid::nil();
    for n in 0..resources {
        let id = Uuid::new_v4();
        if n == 0 {
            first_resource = id;
        }
        sqlx::query(
            "INSERT INTO resources (id, account_id, site_id, name, type, address, filters, \
             created_at, updated_at) VALUES ($1, $2, $3, $4, 'cidr', $5, '[]', 0, 0)",
        )
        .bind(id.to_string())
        .bind(&account)
        .bind(site.to_string())
        .bind(format!("resource-{n:04}"))
        .bind(format!("10.{}.{}.0/24", 100 + n / 256, n % 256))
        .execute(&mut *tx)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO policies (id, account_id, group_id, resource_id, conditions, \
             description, disabled, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, '[{\"property\":\"client_os\",\"operator\":\"in\",\"values\":[\"linux\"]}]', '', 0, 0, 0)",
        )
        .bind(Uuid::new_v4().to_string())
        .bind(&account)
        .bind(groups[n % groups.len()].to_string())
        .bind(id.to_string())
        .execute(&mut *tx)
        .await
        .unwrap();
    }
    for n in 0..clients {
        sqlx::query(
            "INSERT INTO devices (id, account_id, kind, actor_id, external_id, name, os, \
             address_index, created_at) VALUES ($1, $2, 'client', $3, $4, $4, 'linux', $5, $6)",
        )
        .bind(Uuid::new_v4().to_string())
        .bind(&account)
        .bind(users[n / 10].to_string())
        .bind(format!("device-{n:05}"))
        .bind(n as i64 + 1000)
        .bind(n as i64)
        .execute(&mut *tx)
        .await
        .unwrap();
    }
    for n in 0..2000i64 {
        sqlx::query(
            "INSERT INTO audit_log (account_id, at, action, object_type, object_id, before_json, after_json) \
             VALUES ($1, $2, 'group.update', 'group', $3, NULL, '{}')",
        )
        .bind(&account)
        .bind(n)
        .bind(groups[n as usize % groups.len()].to_string())
        .execute(&mut *tx)
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();
    Seeded {
        site,
        users,
        groups,
        resource: first_resource,
    }
}
