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
        out
    }
}
