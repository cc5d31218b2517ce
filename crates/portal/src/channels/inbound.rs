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

    /// A gateway's fullest flow log message fits the message limit.
    #[test]
    fn a_full_batch_of_the_longest_flows_fits_one_message() {
        use postern_model::protocol::{FlowRecord, MAX_FLOWS_PER_BATCH};
        // With a scope id, the longest an address prints.
        let longest = std::net::SocketAddr::V6(std::net::SocketAddrV6::new(
            std::net::Ipv6Addr::from(u128::MAX),
            u16::MAX,
            0,
            u32::MAX,
        ));
        let flow = FlowRecord {
            client_id: postern_model::ClientId(uuid::Uuid::max()),
            resource_id: postern_model::ResourceId(uuid::Uuid::max()),
            protocol: u8::MAX,
            source: longest,
            destination: longest,
            bytes_out: u64::MAX,
            bytes_in: u64::MAX,
            started_ms: i64::MIN,
            ended_ms: i64::MIN,
        };
        let message = GatewayToPortal::Flows {
            batch: u64::MAX,
            flows: vec![flow; MAX_FLOWS_PER_BATCH],
        };
        let text = serde_json::to_string(&message).unwrap();
        assert!(text.len() <= MAX_MESSAGE, "{} bytes", text.len());
        assert!(matches!(
            parse(Speaker::Gateway, &text),
            Inbound::Gateway(GatewayToPortal::Flows { flows, .. }) if flows.len() == MAX_FLOWS_PER_BATCH
        ));
    }
}
