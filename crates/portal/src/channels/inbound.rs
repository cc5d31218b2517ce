//! Frames in: each socket task parses what its channel sends, for the role
//! its token has, so the hub's task gets typed messages (and spends no time
//! on JSON). What does not parse becomes `Inbound::Invalid`, which the hub
//! answers with an `error` frame naming the problem (and the `ref`, if the
//! frame had one).

use postern_model::protocol::{ClientToPortal, GatewayToPortal, RelayToPortal};
use serde::de::DeserializeOwned;

use super::hub::Inbound;

/// Messages bigger than this are refused (the socket also caps frames).
pub(super) const MAX_MESSAGE: usize = 64 * 1024;

/// Which messages a channel sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Speaker {
    Client,
    Gateway,
    Relay,
}

pub(super) fn parse(speaker: Speaker, text: &str) -> Inbound {
    match speaker {
        Speaker::Client => typed::<ClientToPortal>(text).map_or_else(|e| e, Inbound::Client),
        Speaker::Gateway => typed::<GatewayToPortal>(text).map_or_else(|e| e, Inbound::Gateway),
        Speaker::Relay => typed::<RelayToPortal>(text).map_or_else(|e| e, Inbound::Relay),
    }
}

fn typed<T: DeserializeOwned>(text: &str) -> Result<T, Inbound> {
    if text.len() > MAX_MESSAGE {
        return Err(Inbound::Invalid {
            reference: None,
            message: format!("message larger than {MAX_MESSAGE} bytes"),
        });
    }
    serde_json::from_str::<T>(text).map_err(|error| {
        let value: Option<serde_json::Value> = serde_json::from_str(text).ok();
        let reference = value
            .as_ref()
            .and_then(|v| v.get("ref"))
            .and_then(|r| r.as_str())
            .map(str::to_string);
        let kind = value
            .as_ref()
            .and_then(|v| v.get("type"))
            .and_then(|t| t.as_str())
            .map(str::to_string);
        let message = match (value, kind) {
            (None, _) => format!("not a JSON message: {error}"),
            (Some(_), None) => "a message needs a \"type\"".to_string(),
            (Some(_), Some(kind)) => format!("cannot handle {kind:?}: {error}"),
        };
        Inbound::Invalid { reference, message }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_frames_become_errors_that_keep_the_ref() {
        let Inbound::Invalid { reference, message } =
            parse(Speaker::Client, r#"{"type":"request_access","ref":"r1"}"#)
        else {
            panic!("a request without a resource parsed");
        };
        assert_eq!(reference.as_deref(), Some("r1"));
        assert!(
            message.starts_with("cannot handle \"request_access\""),
            "{message}"
        );
        // A gateway's message on a client channel is not a client message.
        assert!(matches!(
            parse(Speaker::Client, r#"{"type":"authorized","ref":"r2"}"#),
            Inbound::Invalid { reference: Some(r), .. } if r == "r2"
        ));
        assert!(matches!(
            parse(Speaker::Relay, "not json"),
            Inbound::Invalid { reference: None, message } if message.starts_with("not a JSON message")
        ));
        let huge = format!(
            r#"{{"type":"register","pad":"{}"}}"#,
            "x".repeat(MAX_MESSAGE)
        );
        assert!(matches!(
            parse(Speaker::Relay, &huge),
            Inbound::Invalid { message, .. } if message.contains("larger than")
        ));
        assert!(matches!(
            parse(Speaker::Gateway, r#"{"type":"authorized","ref":"r3"}"#),
            Inbound::Gateway(GatewayToPortal::Authorized { reference }) if reference == "r3"
        ));
    }
}
