//! Shared test helpers: an in-process portal driven through its router, and a
//! throwaway PostgreSQL server.
#![allow(dead_code)]

pub mod channel;
pub mod email;
pub mod oidc;
pub mod postgres;
pub mod scenario;
pub mod smtp;
pub mod web;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use postern_portal::state::AppState;
use postern_portal::{Store, setup};
use serde_json::Value;
use tower::ServiceExt;

/// A portal with one account, called through its router without sockets.
pub struct TestApp {
    pub router: Router,
    pub state: Arc<AppState>,
    pub token: String,
    pub account_id: uuid::Uuid,
    pub admin_id: uuid::Uuid,
}

/// A unique SQLite file under the temp directory, removed at drop.
pub struct TempDb {
    pub dir: std::path::PathBuf,
}

impl TempDb {
    pub fn new(tag: &str) -> Self {
        use std::sync::atomic::{AtomicU32, Ordering};
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "postern-test-{tag}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        TempDb { dir }
    }

    pub fn url(&self) -> String {
        format!("sqlite://{}/portal.db", self.dir.display())
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl TestApp {
    pub async fn open(url: &str, slug: &str) -> TestApp {
        TestApp::open_with(url, slug, |_| {}).await
    }

    pub async fn open_with(
        url: &str,
        slug: &str,
        configure: impl FnOnce(&mut AppState),
    ) -> TestApp {
        let store = Store::open(url).await.expect("open the store");
        let init = setup::init_account(&store, slug, "admin@example.test")
            .await
            .expect("init the account");
        let mut state = AppState::new(store);
        state.secret_key = Some(postern_portal::secrets::SecretKey::generate().unwrap());
        // Identity providers need one.
        state.external_url = Some("https://portal.example.test".into());
        configure(&mut state);
        let state = Arc::new(state);
        let router = postern_portal::testing::api_router().with_state(state.clone());
        TestApp {
            router,
            state,
            token: init.token,
            account_id: init.account.id,
            admin_id: init.admin_id,
        }
    }

    /// A portal over an existing database (a fixture), its secret key and
    /// an admin token of its account.
    pub async fn adopt(
        store: Store,
        key: postern_portal::secrets::SecretKey,
        token: &str,
    ) -> TestApp {
        let mut state = AppState::new(store);
        state.secret_key = Some(key);
        let state = Arc::new(state);
        let router = postern_portal::testing::api_router().with_state(state.clone());
        TestApp {
            router,
            state,
            token: token.to_string(),
            account_id: uuid::Uuid::nil(),
            admin_id: uuid::Uuid::nil(),
        }
    }

    /// A portal over `store` (a restored copy of `like`'s database),
    /// acting for the same account and admin, with the same secret key.
    pub async fn attach(store: Store, like: &TestApp) -> TestApp {
        let mut state = AppState::new(store);
        state.secret_key = like.state.secret_key.clone();
        let state = Arc::new(state);
        let router = postern_portal::testing::api_router().with_state(state.clone());
        TestApp {
            router,
            state,
            token: like.token.clone(),
            account_id: like.account_id,
            admin_id: like.admin_id,
        }
    }

    /// A second portal node on the same database (PostgreSQL), acting for
    /// the same account and admin.
    pub async fn another_node(&self, url: &str) -> TestApp {
        let store = Store::open(url).await.expect("open the store");
        let mut state = AppState::new(store);
        // The nodes of one portal share its secret key.
        state.secret_key = self.state.secret_key.clone();
        let state = Arc::new(state);
        let router = postern_portal::testing::api_router().with_state(state.clone());
        TestApp {
            router,
            state,
            token: self.token.clone(),
            account_id: self.account_id,
            admin_id: self.admin_id,
        }
    }

    /// Another account in the same portal, with its own admin token.
    pub async fn second_account(&self, slug: &str) -> String {
        setup::init_account(&self.state.store, slug, "other@example.test")
            .await
            .expect("init the second account")
            .token
    }

    pub async fn call_as(
        &self,
        token: Option<&str>,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("/api/v1{path}"));
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let request = match body {
            Some(body) => request
                .header("content-type", "application/json")
                .body(Body::from(body.to_string())),
            None => request.body(Body::empty()),
        }
        .unwrap();
        self.send(request).await
    }

    pub async fn send(&self, request: Request<Body>) -> (StatusCode, Value) {
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        if status.is_client_error() || status.is_server_error() {
            assert_eq!(
                content_type, "application/problem+json",
                "{status} {bytes:?}"
            );
        }
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        (status, value)
    }

    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let token = self.token.clone();
        self.call_as(Some(&token), method, path, body).await
    }

    /// A new API token of the account's first admin.
    pub async fn expect_as_fresh_admin_token(&self) -> String {
        let path = format!("/actors/{}/tokens", self.admin_id);
        // Mint it with a token that is not rate limited: a fresh one made
        // directly in the store.
        let minted = postern_portal::auth::token::mint().unwrap();
        let mut tx = self.state.store.write().await.unwrap();
        postern_portal::testing::tokens::insert(
            &mut tx,
            &minted,
            &postern_portal::testing::tokens::NewToken {
                account_id: Some(self.account_id),
                kind: postern_portal::domain::TokenKind::Api,
                actor_id: Some(self.admin_id),
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
        let _ = path;
        minted.token
    }

    /// Calls and asserts the status; returns the body.
    pub async fn expect(
        &self,
        status: StatusCode,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Value {
        let (got, value) = self.call(method, path, body).await;
        assert_eq!(got, status, "{method} {path}: {value}");
        value
    }
}

/// The id field of a JSON object.
pub fn id(value: &Value) -> String {
    value["id"].as_str().expect("an id").to_string()
}

/// Many devices connecting at once each get their own tunnel addresses.
pub async fn concurrent_devices(app: &TestApp) {
    let mut tasks = Vec::new();
    for n in 0..20 {
        let store = app.state.store.clone();
        let admin = app.admin_id;
        let account = app.account_id;
        tasks.push(tokio::spawn(async move {
            loop {
                let mut tx = store.write().await.unwrap();
                let name = format!("device-{n}");
                let connecting = postern_portal::testing::devices::Connecting {
                    kind: postern_portal::domain::DeviceKind::Client,
                    actor_id: Some(admin),
                    site_id: None,
                    token_id: None,
                    device_id: &name,
                    name: &name,
                    os: Some("linux"),
                    version: None,
                    remote_ip: None,
                };
                match postern_portal::testing::devices::upsert_on_connect(
                    &mut tx,
                    account,
                    &connecting,
                    postern_portal::testing::devices::DeviceCaps {
                        per_actor: u32::MAX,
                        per_token: u32::MAX,
                    },
                    0,
                )
                .await
                {
                    Ok(device) => match tx.commit().await {
                        Ok(()) => return device,
                        Err(_) => continue,
                    },
                    // Two writers picked the same index: the unique index
                    // refused one, which retries.
                    Err(postern_portal::StoreError::Conflict(_)) => continue,
                    Err(other) => panic!("{other}"),
                }
            }
        }));
    }
    let mut v4 = std::collections::BTreeSet::new();
    for task in tasks {
        let device = task.await.unwrap();
        assert!(
            v4.insert(device.ipv4),
            "address {} given twice",
            device.ipv4
        );
    }
    assert_eq!(v4.len(), 20);
}

/// What [`seed`] made, by id (and the tokens).
pub struct Seeded {
    pub site: String,
    pub resource: String,
    pub group: String,
    pub robot: String,
    pub policy: String,
    pub client_token: String,
    pub client_token_id: String,
    pub gateway_token: String,
}

/// An account with a site, a resource (10.0.0.0/24, tcp/80), a group with a
/// service account in it, a policy, a client token for the service account
/// and a gateway token.
pub async fn seed(app: &TestApp) -> Seeded {
    let token = app.token.clone();
    seed_as(app, &token).await
}

/// `seed` for the account of the admin token `token`.
pub async fn seed_as(app: &TestApp, token: &str) -> Seeded {
    use axum::http::StatusCode;
    use serde_json::json;
    let expect = async |status: StatusCode, method: &str, path: &str, body: Option<Value>| {
        let (got, value) = app.call_as(Some(token), method, path, body).await;
        assert_eq!(got, status, "{method} {path}: {value}");
        value
    };
    let site = id(&expect(
        StatusCode::CREATED,
        "POST",
        "/sites",
        Some(json!({"name": "Office"})),
    )
    .await);
    let resource = id(&expect(
        StatusCode::CREATED,
        "POST",
        "/resources",
        Some(json!({
            "name": "LAN", "type": "cidr", "address": "10.0.0.0/24", "site_id": site,
            "filters": [{"protocol": "tcp", "ports": "80"}]
        })),
    )
    .await);
    let group = id(&expect(
        StatusCode::CREATED,
        "POST",
        "/groups",
        Some(json!({"name": "Robots"})),
    )
    .await);
    let robot = id(&expect(
        StatusCode::CREATED,
        "POST",
        "/actors",
        Some(json!({"name": "CI", "role": "service_account"})),
    )
    .await);
    expect(
        StatusCode::OK,
        "PUT",
        &format!("/groups/{group}/members"),
        Some(json!({"actor_ids": [robot]})),
    )
    .await;
    let policy = id(&expect(
        StatusCode::CREATED,
        "POST",
        "/policies",
        Some(json!({"group_id": group, "resource_id": resource})),
    )
    .await);
    let token = expect(
        StatusCode::CREATED,
        "POST",
        &format!("/actors/{robot}/tokens"),
        None,
    )
    .await;
    let gateway = expect(
        StatusCode::CREATED,
        "POST",
        &format!("/sites/{site}/gateway_tokens"),
        None,
    )
    .await;
    Seeded {
        site,
        resource,
        group,
        robot,
        policy,
        client_token: token["token"].as_str().unwrap().to_string(),
        client_token_id: id(&token),
        gateway_token: gateway["token"].as_str().unwrap().to_string(),
    }
}
