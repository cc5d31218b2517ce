//! Which daemon versions the channels take. Every daemon sends its own
//! version (`version=` in the channel query); one outside the window is
//! refused before the WebSocket upgrade with HTTP 426 and a reason the
//! daemon prints before it stops.
//!
//! The window is the portal's own major.minor, any patch: `0.1.0` to
//! `0.1.x` for portal 0.1.y. Before 1.0 a minor release may change the
//! control protocol (semver gives 0.x minors that right), while patch
//! releases only fix things and the protocol stays forward compatible
//! within a minor (unknown message types are ignored). Kept this simple on
//! purpose: one rule both sides can state in one line; widen it when a
//! release promises more.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::problem::Problem;

/// The portal's own version.
const PORTAL: &str = env!("CARGO_PKG_VERSION");

/// `MAJOR.MINOR.PATCH` with an optional `-pre` or `+build` after the patch.
fn parse(version: &str) -> Option<(u64, u64, u64)> {
    let core = version.split(['-', '+']).next().unwrap_or(version);
    let mut parts = core.split('.');
    let mut number = || -> Option<u64> {
        let part = parts.next()?;
        if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        part.parse().ok()
    };
    let parsed = (number()?, number()?, number()?);
    parts.next().is_none().then_some(parsed)
}

/// Why a daemon of `version` may not join, or `None` if it may.
/// `Some(Err(_))` is a version that does not parse.
fn refusal_for(portal: &str, version: &str) -> Option<Result<String, ()>> {
    let Some((major, minor, _)) = parse(portal) else {
        // The portal's own version always parses (Cargo checks it); were it
        // not to, nobody is refused over it.
        return None;
    };
    let Some(daemon) = parse(version) else {
        return Some(Err(()));
    };
    if (daemon.0, daemon.1) == (major, minor) {
        return None;
    }
    let advice = if (daemon.0, daemon.1) < (major, minor) {
        "update postern on this machine".to_string()
    } else {
        format!("update the portal, or run postern {major}.{minor}.x here")
    };
    Some(Ok(format!(
        "this portal ({portal}) accepts daemons {major}.{minor}.0 to {major}.{minor}.x; \
         this one is {version}: {advice}"
    )))
}

/// `None` when a daemon of `version` may join; otherwise the answer to send
/// instead of upgrading: 426 with the reason, or 400 for a version that
/// does not parse. A missing version (daemons from before it was sent) is
/// taken and logged.
pub(super) fn refusal(version: Option<&str>, who: &str) -> Option<Response> {
    let Some(version) = version else {
        tracing::info!(
            who,
            "a daemon joined without saying its version (older than {PORTAL}?)"
        );
        return None;
    };
    match refusal_for(PORTAL, version) {
        None => None,
        Some(Err(())) => {
            let mut problem = Problem::new(
                StatusCode::BAD_REQUEST,
                "version: MAJOR.MINOR.PATCH, as in 0.1.0",
            );
            problem.field = Some("version".into());
            Some(problem.into_response())
        }
        Some(Ok(reason)) => {
            tracing::warn!(who, version, "refused a daemon of another version");
            let mut response = Problem::new(StatusCode::UPGRADE_REQUIRED, reason).into_response();
            // A 426 names what to upgrade to (RFC 9110, 15.5.22).
            if let Some((major, minor, _)) = parse(PORTAL)
                && let Ok(value) = HeaderValue::from_str(&format!("postern/{major}.{minor}"))
            {
                response.headers_mut().insert(header::UPGRADE, value);
            }
            Some(response)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_strictly() {
        assert_eq!(parse("0.1.0"), Some((0, 1, 0)));
        assert_eq!(parse("1.20.3-rc.1+abc"), Some((1, 20, 3)));
        for bad in [
            "", "0.1", "0.1.0.0", "v0.1.0", "0.1.x", "0..1", " 0.1.0", "0.1.-1",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_window_is_the_portals_major_minor() {
        for same in ["0.1.0", "0.1.7", "0.1.0-rc.1", "0.1.99+build"] {
            assert_eq!(refusal_for("0.1.3", same), None, "{same}");
        }
        let old = refusal_for("0.2.0", "0.1.9").unwrap().unwrap();
        assert!(old.contains("accepts daemons 0.2.0 to 0.2.x"), "{old}");
        assert!(old.contains("update postern"), "{old}");
        let new = refusal_for("0.1.3", "0.2.0").unwrap().unwrap();
        assert!(new.contains("this one is 0.2.0"), "{new}");
        assert!(new.contains("update the portal"), "{new}");
        assert_eq!(refusal_for("1.2.0", "2.2.0").map(|r| r.is_ok()), Some(true));
        assert_eq!(refusal_for("0.1.0", "zero"), Some(Err(())));
    }
}
