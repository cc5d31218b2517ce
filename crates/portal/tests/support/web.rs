//! A portal served on a loopback port (the sign-in pages need real HTTP:
//! peer addresses, cookies, redirects) and a minimal browser for it.

use std::collections::HashMap;
use std::sync::Arc;

use postern_portal::secrets::SecretKey;
use postern_portal::state::AppState;
use postern_portal::{Store, setup};

use super::TempDb;

pub struct WebPortal {
    pub base: String,
    pub state: Arc<AppState>,
    /// The admin's API token.
    pub token: String,
    pub account_id: uuid::Uuid,
    pub slug: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    _db: TempDb,
}

impl Drop for WebPortal {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl WebPortal {
    /// Account `acme` with admin `admin@example.test`, on SQLite.
    pub async fn start(configure: impl FnOnce(&mut AppState)) -> WebPortal {
        WebPortal::start_on(None, configure).await
    }

    /// The same on the database at `url` (PostgreSQL), or a fresh SQLite file.
    pub async fn start_on(url: Option<String>, configure: impl FnOnce(&mut AppState)) -> WebPortal {
        let db = TempDb::new("web");
        let store = Store::open(&url.unwrap_or_else(|| db.url())).await.unwrap();
        let init = setup::init_account(&store, "acme", "admin@example.test")
            .await
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let mut state = AppState::new(store);
        state.secret_key = Some(SecretKey::generate().unwrap());
        state.external_url = Some(base.clone());
        configure(&mut state);
        let state = Arc::new(state);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let served = state.clone();
        tokio::spawn(async move {
            postern_portal::serve::serve(listener, served, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        WebPortal {
            base,
            state,
            token: init.token,
            account_id: init.account.id,
            slug: "acme".into(),
            stop: Some(stop),
            _db: db,
        }
    }

    /// Calls the REST API as the admin.
    pub async fn api(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let client = reqwest::Client::new();
        let mut request = client
            .request(method, format!("{}/api/v1{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
        )
    }

    /// Creates a user (or admin) and returns its id.
    pub async fn add_actor(&self, name: &str, email: &str, role: &str) -> String {
        let (status, actor) = self
            .api(
                reqwest::Method::POST,
                "/actors",
                Some(serde_json::json!({"name": name, "email": email, "role": role})),
            )
            .await;
        assert_eq!(status, 201, "{actor}");
        actor["id"].as_str().unwrap().to_string()
    }
}

/// What a page answered.
#[derive(Debug)]
pub struct Page {
    pub status: u16,
    pub location: Option<String>,
    pub body: String,
}

impl Page {
    /// The value of the hidden input `name`.
    pub fn hidden(&self, name: &str) -> Option<String> {
        let marker = format!("name=\"{name}\" value=\"");
        let start = self.body.find(&marker)? + marker.len();
        let end = self.body[start..].find('"')?;
        Some(
            self.body[start..start + end]
                .replace("&quot;", "\"")
                .replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&#39;", "'")
                .replace("&amp;", "&"),
        )
    }
}

/// Cookies by name; follows no redirects by itself.
pub struct Browser {
    client: reqwest::Client,
    pub cookies: HashMap<String, String>,
}

impl Default for Browser {
    fn default() -> Self {
        Self::new()
    }
}

impl Browser {
    pub fn new() -> Browser {
        Browser::from_ip("127.0.0.1".parse().unwrap())
    }

    /// A browser on another network: its connections come from `ip` (any
    /// 127.0.0.0/8 address works on loopback).
    pub fn from_ip(ip: std::net::IpAddr) -> Browser {
        Browser {
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .local_address(ip)
                .no_proxy()
                .build()
                .unwrap(),
            cookies: HashMap::new(),
        }
    }

    pub fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    async fn read(&mut self, response: reqwest::Response) -> Page {
        for value in response.headers().get_all("set-cookie") {
            let text = value.to_str().unwrap();
            let pair = text.split(';').next().unwrap();
            let (name, value) = pair.split_once('=').unwrap();
            if value.is_empty() || text.contains("Max-Age=0") {
                self.cookies.remove(name);
            } else {
                self.cookies.insert(name.to_string(), value.to_string());
            }
        }
        let status = response.status().as_u16();
        let location = response
            .headers()
            .get("location")
            .map(|v| v.to_str().unwrap().to_string());
        Page {
            status,
            location,
            body: response.text().await.unwrap(),
        }
    }

    pub async fn get(&mut self, url: &str) -> Page {
        let response = self
            .client
            .get(url)
            .header("cookie", self.cookie_header())
            .send()
            .await
            .unwrap();
        self.read(response).await
    }

    pub async fn post(&mut self, url: &str, form: &[(&str, &str)]) -> Page {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let response = self
            .client
            .post(url)
            .header("cookie", self.cookie_header())
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .unwrap();
        self.read(response).await
    }
}

/// The query parameter `name` of a URL.
pub fn query_param(url: &str, name: &str) -> Option<String> {
    url::Url::parse(url)
        .ok()?
        .query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}
