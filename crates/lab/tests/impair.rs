//! Link impairments show up in what is measured across the link.

#![allow(clippy::unwrap_used)] // a test file: unwrap is the assertion

mod support;

use std::time::Duration;

use postern_lab::probe::median_rtt;
use postern_lab::{Impairment, Lab};
use support::*;

fn pair() -> (
    Lab,
    postern_lab::Host,
    postern_lab::Host,
    postern_lab::Interface,
    postern_lab::Interface,
) {
    let lab = lab();
    let a = lab.add_host("a").unwrap();
    let b = lab.add_host("b").unwrap();
    let (a_if, b_if) = lab
        .link(
            &a,
            &["10.77.0.1/24", "fd00:77::1/64"],
            &b,
            &["10.77.0.2/24", "fd00:77::2/64"],
        )
        .unwrap();
    (lab, a, b, a_if, b_if)
}

#[test]
fn added_delay_shows_up_in_round_trip_time() {
    let (lab, a, b, a_if, b_if) = pair();
    let reflector = reflector(&b, "10.77.0.2:7000");
    let socket = socket_in(&a, "10.77.0.1:0");

    let before = median_rtt(&socket, reflector.addr, 11).expect("answers");
    assert!(
        before < Duration::from_millis(10),
        "baseline RTT {before:?}"
    );

    let delay = Duration::from_millis(25);
    lab.impair(&a_if, Impairment::delay(delay)).unwrap();
    lab.impair(&b_if, Impairment::delay(delay)).unwrap();
    let after = median_rtt(&socket, reflector.addr, 11).expect("answers");
    assert!(
        after >= 2 * delay && after < 2 * delay + Duration::from_millis(30),
        "RTT {after:?} with {delay:?} added each way (baseline {before:?})"
    );
    eprintln!("rtt without delay {before:?}, with 2 x {delay:?}: {after:?}");
}

#[test]
fn delay_applies_to_ipv6_too() {
    let (lab, a, b, a_if, _) = pair();
    let reflector = reflector(&b, "[fd00:77::2]:7000");
    let socket = socket_in(&a, "[fd00:77::1]:0");
    lab.impair(&a_if, Impairment::delay(Duration::from_millis(30)))
        .unwrap();
    let rtt = median_rtt(&socket, reflector.addr, 5).expect("answers");
    assert!(rtt >= Duration::from_millis(30), "IPv6 RTT {rtt:?}");
}

#[test]
fn loss_drops_about_the_asked_share() {
    let (lab, a, b, a_if, _) = pair();
    // A receive-only counter (a reflector that also answers can overflow
    // its buffer when its thread is descheduled, which is not link loss).
    let counter = socket_in(&b, "10.77.0.2:7001");
    let socket = socket_in(&a, "10.77.0.1:0");
    // Resolve the neighbour first: with loss on, ARP requests are lost too
    // and the first packets would wait on ARP retries, which is not what
    // this test measures.
    socket.send_to(b"warm up", "10.77.0.2:7001").unwrap();
    counter
        .recv_from(&mut [0u8; 64])
        .expect("the link works before loss");
    lab.impair(&a_if, Impairment::loss(30.0)).unwrap();

    let sent = 1000;
    let receiver = std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        let mut received = 0;
        // 100 ms read timeout: stop after the first quiet period past the start.
        let mut quiet = 0;
        while quiet < 5 {
            match counter.recv_from(&mut buf) {
                Ok(_) => {
                    received += 1;
                    quiet = 0;
                }
                Err(_) => quiet += 1,
            }
        }
        received
    });
    for i in 0..sent {
        socket.send_to(b"count me", "10.77.0.2:7001").unwrap();
        if i % 5 == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let received = receiver.join().unwrap();
    // Binomial(1000, 0.7): mean 700, sd 14.5; the bounds are 6 sd away.
    assert!(
        (610..=790).contains(&received),
        "{received} of {sent} arrived with 30% loss"
    );
}

#[test]
fn impossible_loss_is_refused() {
    let (lab, _, _, a_if, _) = pair();
    assert!(lab.impair(&a_if, Impairment::loss(120.0)).is_err());
}
