//! Link impairments: delay and loss on an interface's egress.
//!
//! This kernel family often ships without `sch_netem` (the machines this lab
//! runs on do), so the lab does not depend on it:
//! - loss is an nftables rule, `numgen random mod 10000 < N drop`, on the
//!   interface's netdev egress hook: below IP, as on a lossy wire, so a local
//!   sender sees no error (a drop in the IP hooks would fail its `sendto`
//!   with EPERM, which no real network does);
//! - delay is an NFQUEUE rule (iptables, since nftables' own `queue` needs a
//!   module these kernels lack while the xtables target is built in) feeding a
//!   "delay line": a thread inside the host's namespace that holds each queued
//!   packet's verdict for the delay, in arrival order, so a link keeps its
//!   ordering. Only metadata crosses to userspace; the packet stays in the
//!   kernel until its verdict.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::command::run;
use crate::error::{LabError, Result};
use crate::host::Interface;

/// What to do to packets leaving an interface.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Impairment {
    /// Added one-way delay.
    pub delay: Duration,
    /// Share of packets dropped, in percent (0.0 to 100.0, 0.01 resolution).
    pub loss_percent: f64,
}

impl Impairment {
    pub fn delay(delay: Duration) -> Self {
        Impairment {
            delay,
            ..Self::default()
        }
    }

    pub fn loss(loss_percent: f64) -> Self {
        Impairment {
            loss_percent,
            ..Self::default()
        }
    }
}

/// Queue numbers are per namespace, but a process-wide counter keeps them
/// distinct and simple.
static NEXT_QUEUE: AtomicU16 = AtomicU16::new(100);

/// Installs the impairment on `interface`'s egress; the returned delay line
/// (if a delay was asked for) must live as long as the impairment.
pub(crate) fn install(interface: &Interface, impairment: Impairment) -> Result<Option<DelayLine>> {
    let host = &interface.host;
    if !(0.0..=100.0).contains(&impairment.loss_percent) {
        return Err(LabError::Invalid(format!(
            "loss must be within 0..=100 percent, not {}",
            impairment.loss_percent
        )));
    }
    if impairment.loss_percent > 0.0 {
        // Truncation is intended: the ruleset has 0.01 % resolution.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let threshold = (impairment.loss_percent * 100.0).round() as u32;
        let table = format!("plab_loss_{}", interface.name);
        host.nft(&format!(
            "table netdev {table} {{\n\
               chain egress {{\n\
                 type filter hook egress device \"{name}\" priority 0; policy accept;\n\
                 numgen random mod 10000 < {threshold} drop\n\
               }}\n\
             }}\n",
            name = interface.name
        ))?;
    }
    if impairment.delay.is_zero() {
        return Ok(None);
    }
    let queue = NEXT_QUEUE.fetch_add(1, Ordering::Relaxed);
    let line = DelayLine::start(host.namespace(), queue, impairment.delay)?;
    let queue_text = queue.to_string();
    for tool in ["iptables", "ip6tables"] {
        run(
            "ip",
            &[
                "netns",
                "exec",
                host.namespace(),
                tool,
                "-t",
                "mangle",
                "-A",
                "POSTROUTING",
                "-o",
                &interface.name,
                "-j",
                "NFQUEUE",
                "--queue-num",
                &queue_text,
            ],
        )?;
    }
    Ok(Some(line))
}

/// A thread that releases queued packets after a fixed delay.
#[derive(Debug)]
pub(crate) struct DelayLine {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl DelayLine {
    fn start(namespace: &str, queue_num: u16, delay: Duration) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel::<Result<()>>();
        let namespace = namespace.to_string();
        let thread_stop = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name(format!("delay-{queue_num}"))
            .spawn(move || {
                // Open the queue socket inside the namespace: NFQUEUE
                // instances belong to the namespace the socket lives in.
                let opened = crate::namespace::enter(&namespace, || open_queue(queue_num));
                let queue = match opened.and_then(|q| q.map_err(LabError::from)) {
                    Ok(queue) => {
                        let _ = ready_tx.send(Ok(()));
                        queue
                    }
                    Err(error) => {
                        let _ = ready_tx.send(Err(error));
                        return;
                    }
                };
                run_delay_line(queue, delay, &thread_stop);
            })?;
        ready_rx
            .recv()
            .map_err(|_| LabError::Invalid("delay line thread died during setup".into()))??;
        Ok(DelayLine {
            stop,
            thread: Some(thread),
        })
    }
}

fn open_queue(queue_num: u16) -> std::io::Result<nfq::Queue> {
    let mut queue = nfq::Queue::open()?;
    queue.bind(queue_num)?;
    // Metadata only: the verdict needs the packet id, not the bytes.
    queue.set_copy_range(queue_num, 0)?;
    queue.set_queue_max_len(queue_num, 65_536)?;
    queue.set_nonblocking(true);
    Ok(queue)
}

fn run_delay_line(mut queue: nfq::Queue, delay: Duration, stop: &AtomicBool) {
    let mut pending: std::collections::VecDeque<(Instant, nfq::Message)> = Default::default();
    while !stop.load(Ordering::Relaxed) {
        loop {
            match queue.recv() {
                Ok(message) => pending.push_back((Instant::now() + delay, message)),
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(error) => {
                    tracing::warn!(%error, "delay line receive failed");
                    break;
                }
            }
        }
        let now = Instant::now();
        while pending.front().is_some_and(|(due, _)| *due <= now) {
            if let Some((_, mut message)) = pending.pop_front() {
                message.set_verdict(nfq::Verdict::Accept);
                if let Err(error) = queue.verdict(message) {
                    tracing::warn!(%error, "delay line verdict failed");
                }
            }
        }
        let idle = pending
            .front()
            .map_or(Duration::from_millis(1), |(due, _)| {
                due.saturating_duration_since(now)
            });
        std::thread::sleep(idle.min(Duration::from_millis(1)));
    }
}

impl Drop for DelayLine {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
