//! The portal's Prometheus text (F32): who is online, how access requests
//! end. Counters are atomics bumped where the hub decides; presence is read
//! at scrape time.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use postern_model::protocol::DenyReason;

#[derive(Debug, Default)]
pub struct PortalMetrics {
    pub access_granted: AtomicU64,
    pub denied_forbidden: AtomicU64,
    pub denied_offline: AtomicU64,
    pub denied_not_found: AtomicU64,
    pub channels_opened: AtomicU64,
    /// Cluster bus messages dropped, by why (see `channels::seal`).
    pub cluster_unsigned: AtomicU64,
    pub cluster_bad_mac: AtomicU64,
    pub cluster_stale: AtomicU64,
    pub cluster_replayed: AtomicU64,
    pub cluster_malformed: AtomicU64,
    /// Channels disconnected for sending too much (see `channels::socket`).
    pub channels_rate_limited: AtomicU64,
}

impl PortalMetrics {
    pub fn denied(&self, reason: DenyReason) {
        let counter = match reason {
            DenyReason::Forbidden => &self.denied_forbidden,
            DenyReason::Offline => &self.denied_offline,
            DenyReason::NotFound => &self.denied_not_found,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// A cluster message dropped, by reason.
    pub fn cluster_rejected(&self, reason: &str) {
        let counter = match reason {
            "unsigned" => &self.cluster_unsigned,
            "bad_mac" => &self.cluster_bad_mac,
            "stale" => &self.cluster_stale,
            "replayed" => &self.cluster_replayed,
            _ => &self.cluster_malformed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The text, with the presence gauges given by the caller.
    pub fn render(&self, gateways_online: usize, clients_online: usize) -> String {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP postern_portal_online devices connected to this portal node\n\
             # TYPE postern_portal_online gauge\n\
             postern_portal_online{{party=\"gateway\"}} {gateways_online}\n\
             postern_portal_online{{party=\"client\"}} {clients_online}"
        );
        let _ = writeln!(
            out,
            "# HELP postern_portal_channels_opened_total channels accepted (clients, gateways, relays)\n\
             # TYPE postern_portal_channels_opened_total counter\n\
             postern_portal_channels_opened_total {}",
            load(&self.channels_opened)
        );
        let _ = writeln!(
            out,
            "# HELP postern_portal_access_requests_total access requests by outcome\n\
             # TYPE postern_portal_access_requests_total counter\n\
             postern_portal_access_requests_total{{outcome=\"granted\"}} {}\n\
             postern_portal_access_requests_total{{outcome=\"forbidden\"}} {}\n\
             postern_portal_access_requests_total{{outcome=\"offline\"}} {}\n\
             postern_portal_access_requests_total{{outcome=\"not_found\"}} {}",
            load(&self.access_granted),
            load(&self.denied_forbidden),
            load(&self.denied_offline),
            load(&self.denied_not_found),
        );
        let _ = writeln!(
            out,
            "# HELP postern_portal_cluster_messages_rejected_total cluster bus messages dropped (unsealed, forged, stale, replayed)\n\
             # TYPE postern_portal_cluster_messages_rejected_total counter\n\
             postern_portal_cluster_messages_rejected_total{{reason=\"unsigned\"}} {}\n\
             postern_portal_cluster_messages_rejected_total{{reason=\"bad_mac\"}} {}\n\
             postern_portal_cluster_messages_rejected_total{{reason=\"stale\"}} {}\n\
             postern_portal_cluster_messages_rejected_total{{reason=\"replayed\"}} {}\n\
             postern_portal_cluster_messages_rejected_total{{reason=\"malformed\"}} {}",
            load(&self.cluster_unsigned),
            load(&self.cluster_bad_mac),
            load(&self.cluster_stale),
            load(&self.cluster_replayed),
            load(&self.cluster_malformed),
        );
        let _ = writeln!(
            out,
            "# HELP postern_portal_channels_rate_limited_total channels disconnected for sending too many messages\n\
             # TYPE postern_portal_channels_rate_limited_total counter\n\
             postern_portal_channels_rate_limited_total {}",
            load(&self.channels_rate_limited),
        );
        out
    }
}
