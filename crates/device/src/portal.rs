//! The portal channel as the loop sees it: up or not, and what an event
//! means. The first connection failing is fatal (a clear error at start,
//! SPEC section 6); later losses are retried by the channel while the data
//! plane goes on (F22). Frames are parsed into the role's typed messages
//! here, at the edge, once.

use postern_sys::channel::Incoming;
use serde::de::DeserializeOwned;

#[derive(Debug, Default)]
pub struct PortalLink {
    pub connected: bool,
    ever_connected: bool,
}

/// What the loop does with a channel event.
pub enum LinkEvent<M> {
    /// A message for the role.
    Message(M),
    /// The channel came up or went down.
    Connected(bool),
    /// Stop with this error.
    Fatal(String),
    /// Nothing to do (logged here).
    Nothing,
}

impl PortalLink {
    /// `portal` and `sign_in_again` go into messages; `meanwhile` says what
    /// keeps working while the portal is away.
    pub fn on<M: DeserializeOwned>(
        &mut self,
        incoming: Option<Incoming>,
        portal: &str,
        sign_in_again: &str,
        meanwhile: &str,
    ) -> LinkEvent<M> {
        match incoming {
            None => LinkEvent::Fatal("the portal channel stopped".into()),
            Some(Incoming::Unauthorized) => LinkEvent::Fatal(format!(
                "the portal refused the token (401): {sign_in_again}"
            )),
            Some(Incoming::VersionRefused(reason)) => {
                LinkEvent::Fatal(format!("the portal refused this version (426): {reason}"))
            }
            Some(Incoming::Connected) => {
                self.connected = true;
                self.ever_connected = true;
                tracing::info!("connected to the portal");
                LinkEvent::Connected(true)
            }
            // Dropped on purpose (the host moved): connecting again at once,
            // also while the first connection was still being made.
            Some(Incoming::Lost { error, retry_in }) if retry_in.is_zero() => {
                self.connected = false;
                tracing::info!(%error, "portal connection dropped; {meanwhile}");
                LinkEvent::Connected(false)
            }
            Some(Incoming::Lost { error, .. }) if !self.ever_connected => {
                LinkEvent::Fatal(format!("cannot reach the portal at {portal}: {error}"))
            }
            Some(Incoming::Lost { error, retry_in }) => {
                self.connected = false;
                tracing::warn!(
                    %error, retry_in_ms = retry_in.as_millis() as u64,
                    "portal connection lost; {meanwhile}"
                );
                LinkEvent::Connected(false)
            }
            Some(Incoming::Text(text)) => parse(&text),
        }
    }
}

/// A frame as the role's message. Unknown message types are what a newer portal
/// sends (forward compatibility, docs/architecture.md, control protocol):
/// ignored quietly. A known type that does not parse is a portal bug: said
/// loudly.
fn parse<M: DeserializeOwned>(text: &str) -> LinkEvent<M> {
    match serde_json::from_str::<M>(text) {
        Ok(message) => LinkEvent::Message(message),
        Err(error) => {
            let kind = serde_json::from_str::<serde_json::Value>(text)
                .ok()
                .and_then(|v| v.get("type")?.as_str().map(str::to_string))
                .unwrap_or_default();
            if error.to_string().contains("unknown variant") {
                tracing::debug!(%kind, "ignoring a message type this version does not know");
            } else {
                tracing::warn!(%kind, %error, "the portal sent a message that does not parse; ignored");
            }
            LinkEvent::Nothing
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a test: unwrap is the assertion
    use super::*;
    use postern_model::protocol::PortalToClient;

    #[test]
    fn frames_parse_once_and_unknown_types_are_ignored() {
        let mut link = PortalLink::default();
        let text =
            r#"{"type": "access_revoked", "resource_id": "00000000-0000-0000-0000-000000000001"}"#;
        let event: LinkEvent<PortalToClient> =
            link.on(Some(Incoming::Text(text.into())), "p", "s", "m");
        assert!(matches!(
            event,
            LinkEvent::Message(PortalToClient::AccessRevoked { .. })
        ));
        for ignored in [
            r#"{"type": "teleport"}"#,
            "not json",
            r#"{"type": "access_revoked"}"#,
        ] {
            let event: LinkEvent<PortalToClient> =
                link.on(Some(Incoming::Text(ignored.into())), "p", "s", "m");
            assert!(matches!(event, LinkEvent::Nothing), "{ignored}");
        }
    }

    #[test]
    fn a_refused_version_is_fatal_with_the_portals_reason() {
        let mut link = PortalLink::default();
        assert!(matches!(
            link.on::<PortalToClient>(Some(Incoming::Connected), "p", "s", "m"),
            LinkEvent::Connected(true)
        ));
        let refused = Incoming::VersionRefused("accepts 0.1.0 to 0.1.x; update postern".into());
        assert!(matches!(
            link.on::<PortalToClient>(Some(refused), "p", "s", "m"),
            LinkEvent::Fatal(message)
                if message == "the portal refused this version (426): accepts 0.1.0 to 0.1.x; update postern"
        ));
    }

    #[test]
    fn the_first_failure_and_a_refused_token_are_fatal_later_losses_are_not() {
        let mut link = PortalLink::default();
        let lost = || Incoming::Lost {
            error: "refused".into(),
            retry_in: std::time::Duration::from_secs(1),
        };
        assert!(matches!(
            link.on::<PortalToClient>(Some(lost()), "http://p", "s", "m"),
            LinkEvent::Fatal(message) if message.contains("http://p")
        ));
        assert!(matches!(
            link.on::<PortalToClient>(Some(Incoming::Connected), "p", "s", "m"),
            LinkEvent::Connected(true)
        ));
        assert!(matches!(
            link.on::<PortalToClient>(Some(lost()), "p", "s", "m"),
            LinkEvent::Connected(false)
        ));
        assert!(matches!(
            link.on::<PortalToClient>(Some(Incoming::Unauthorized), "p", "sign in", "m"),
            LinkEvent::Fatal(message) if message.contains("sign in")
        ));
    }
}
