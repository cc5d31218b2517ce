//! Relay counters and their Prometheus text endpoint.
//!
//! Each worker publishes its core's counters into its own atomics once per
//! loop turn (no sharing on the packet path); a scrape sums the workers. The
//! endpoint is `postern_sys::metrics::serve`.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;

use postern_turn::server::{DropReason, Stats};

/// Why the relay could not send a datagram.
#[derive(Clone, Copy, Debug)]
pub enum SendDrop {
    /// The socket's send buffer was full.
    BufferFull,
    /// Any other send error.
    Error,
}

impl SendDrop {
    pub const COUNT: usize = 2;
}

#[derive(Default)]
struct WorkerCounters {
    allocations: AtomicU64,
    allocations_created: AtomicU64,
    to_peer_packets: AtomicU64,
    to_peer_bytes: AtomicU64,
    to_client_packets: AtomicU64,
    to_client_bytes: AtomicU64,
    drops: [AtomicU64; DropReason::ALL.len()],
    send_drops: [AtomicU64; SendDrop::COUNT],
    send_calls: AtomicU64,
}

/// The counters of every worker.
pub struct Metrics {
    workers: Vec<WorkerCounters>,
}

impl Metrics {
    pub(crate) fn new(workers: usize) -> Self {
        Metrics {
            workers: (0..workers).map(|_| WorkerCounters::default()).collect(),
        }
    }

    pub(crate) fn record(
        &self,
        worker: usize,
        stats: &Stats,
        allocations: usize,
        send_drops: &[u64; SendDrop::COUNT],
        send_calls: u64,
    ) {
        let Some(counters) = self.workers.get(worker) else {
            return;
        };
        let set = |atomic: &AtomicU64, value: u64| atomic.store(value, Ordering::Relaxed);
        set(&counters.allocations, allocations as u64);
        set(&counters.allocations_created, stats.allocations_created);
        set(&counters.to_peer_packets, stats.to_peer_packets);
        set(&counters.to_peer_bytes, stats.to_peer_bytes);
        set(&counters.to_client_packets, stats.to_client_packets);
        set(&counters.to_client_bytes, stats.to_client_bytes);
        for (atomic, value) in counters.drops.iter().zip(stats.drops) {
            set(atomic, value);
        }
        for (atomic, value) in counters.send_drops.iter().zip(send_drops) {
            set(atomic, *value);
        }
        set(&counters.send_calls, send_calls);
    }

    fn sum(&self, pick: impl Fn(&WorkerCounters) -> &AtomicU64) -> u64 {
        self.workers
            .iter()
            .map(|w| pick(w).load(Ordering::Relaxed))
            .sum()
    }

    /// Live allocations on all workers.
    pub fn allocations(&self) -> u64 {
        self.sum(|w| &w.allocations)
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, lines: &[(String, u64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in lines {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        metric(
            "postern_relay_allocations",
            "gauge",
            "Live TURN allocations.",
            &[(String::new(), self.allocations())],
        );
        metric(
            "postern_relay_allocations_created_total",
            "counter",
            "TURN allocations created.",
            &[(String::new(), self.sum(|w| &w.allocations_created))],
        );
        metric(
            "postern_relay_packets_total",
            "counter",
            "Datagrams relayed.",
            &[
                (
                    "{direction=\"to_peer\"}".into(),
                    self.sum(|w| &w.to_peer_packets),
                ),
                (
                    "{direction=\"to_client\"}".into(),
                    self.sum(|w| &w.to_client_packets),
                ),
            ],
        );
        metric(
            "postern_relay_bytes_total",
            "counter",
            "Application bytes relayed.",
            &[
                (
                    "{direction=\"to_peer\"}".into(),
                    self.sum(|w| &w.to_peer_bytes),
                ),
                (
                    "{direction=\"to_client\"}".into(),
                    self.sum(|w| &w.to_client_bytes),
                ),
            ],
        );
        metric(
            "postern_relay_send_calls_total",
            "counter",
            "UDP send system calls (sendmmsg, each message a GSO batch): packets relayed per call show how well sends are batched.",
            &[(String::new(), self.sum(|w| &w.send_calls))],
        );
        let mut drops: Vec<(String, u64)> = DropReason::ALL
            .iter()
            .map(|reason| {
                let i = *reason as usize;
                (
                    format!("{{reason=\"{}\"}}", reason.as_str()),
                    self.sum(|w| &w.drops[i]),
                )
            })
            .collect();
        drops.push((
            "{reason=\"send_buffer_full\"}".into(),
            self.sum(|w| &w.send_drops[SendDrop::BufferFull as usize]),
        ));
        drops.push((
            "{reason=\"send_error\"}".into(),
            self.sum(|w| &w.send_drops[SendDrop::Error as usize]),
        ));
        metric(
            "postern_relay_drops_total",
            "counter",
            "Datagrams dropped, by reason.",
            &drops,
        );
        out
    }
}

/// Serves `GET /metrics` on `addr` from a thread of its own.
pub fn serve_metrics(
    addr: SocketAddr,
    metrics: std::sync::Arc<Metrics>,
) -> std::io::Result<JoinHandle<()>> {
    postern_sys::metrics::serve(addr, move || metrics.render())
}
