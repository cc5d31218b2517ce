//! Cookies of the web pages: the admin session, the CSRF token (double
//! submit: a random cookie that every form must repeat) and the OIDC state
//! binding (the callback must come back to the browser that started it).

use axum::http::HeaderMap;
use axum::http::header::{COOKIE, SET_COOKIE};
use axum::response::Response;
use subtle::ConstantTimeEq;

pub const SESSION: &str = "postern_session";
pub const CSRF: &str = "postern_csrf";
pub const OIDC_STATE: &str = "postern_oidc";

/// The value of cookie `name` in the request, if sent once or more (the
/// first wins).
pub fn get(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.to_string())
}

/// How cookies are set: scoped to the account's pages, HttpOnly, Secure when
/// the portal is served over https.
#[derive(Clone, Debug)]
pub struct Jar {
    pub path: String,
    pub secure: bool,
}

impl Jar {
    /// Adds `Set-Cookie`; `max_age` 0 deletes it. `lax` lets it ride along on
    /// a top-level navigation from another site (the OIDC callback).
    pub fn set(&self, response: &mut Response, name: &str, value: &str, max_age: i64, lax: bool) {
        let cookie = format!(
            "{name}={value}; Path={}; Max-Age={max_age}; HttpOnly; SameSite={}{}",
            self.path,
            if lax { "Lax" } else { "Strict" },
            if self.secure { "; Secure" } else { "" },
        );
        if let Ok(value) = cookie.parse() {
            response.headers_mut().append(SET_COOKIE, value);
        }
    }
}

/// Whether the form's CSRF token matches the cookie.
pub fn csrf_ok(headers: &HeaderMap, form_token: &str) -> bool {
    match get(headers, CSRF) {
        Some(cookie) if !cookie.is_empty() => cookie.as_bytes().ct_eq(form_token.as_bytes()).into(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_by_name() {
        let mut headers = HeaderMap::new();
        headers.insert(COOKIE, "a=1; postern_csrf=tok; b=2".parse().unwrap());
        assert_eq!(get(&headers, CSRF).as_deref(), Some("tok"));
        assert_eq!(get(&headers, "b").as_deref(), Some("2"));
        assert_eq!(get(&headers, SESSION), None);
        assert!(csrf_ok(&headers, "tok"));
        assert!(!csrf_ok(&headers, "tok2"));
        assert!(!csrf_ok(&headers, ""));
        assert!(!csrf_ok(&HeaderMap::new(), ""));
    }

    #[test]
    fn cookies_are_http_only_scoped_and_secure_over_https() {
        let mut response = Response::new(axum::body::Body::empty());
        let jar = Jar {
            path: "/acme".into(),
            secure: true,
        };
        jar.set(&mut response, SESSION, "v", 60, true);
        jar.set(&mut response, CSRF, "c", 60, false);
        let set: Vec<_> = response
            .headers()
            .get_all(SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect();
        assert_eq!(
            set,
            [
                "postern_session=v; Path=/acme; Max-Age=60; HttpOnly; SameSite=Lax; Secure",
                "postern_csrf=c; Path=/acme; Max-Age=60; HttpOnly; SameSite=Strict; Secure"
            ]
        );
    }
}
