//! How fast one core moves packets through a WireGuard peer pair in memory
//! (encrypt into a buffer, decrypt into another): the ceiling the data plane
//! works under before any syscall. `cargo run --release -p postern-tunnel
//! --example wireguard-loop [PACKETS] [SIZE]`.

use std::time::Instant;

use postern_tunnel::wireguard::{Action, WireguardPeer, public_key};

fn main() {
    let mut args = std::env::args().skip(1);
    let packets: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(500_000);
    let size: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1280);
    let (client_secret, gateway_secret, psk) = ([1u8; 32], [2u8; 32], [3u8; 32]);
    let mut client = WireguardPeer::new(client_secret, public_key(gateway_secret), psk, 1);
    let mut gateway = WireguardPeer::new(gateway_secret, public_key(client_secret), psk, 2);
    let mut packet = vec![0u8; size];
    packet[0] = 0x45;
    packet[2..4].copy_from_slice(&(size as u16).to_be_bytes());
    let mut wire = vec![0u8; size + 64];
    let mut plain = vec![0u8; size + 64];
    let now = Instant::now();
    // Handshake: initiation, response, then the queued packet.
    let Ok(Action::Network(n)) = client.send(&packet, now, &mut wire) else {
        panic!("no initiation")
    };
    let Ok(Action::Network(m)) = gateway.receive(None, &wire[..n], now, &mut plain) else {
        panic!("no response")
    };
    let response = plain[..m].to_vec();
    let _ = client.receive(None, &response, now, &mut wire);
    while let Ok(Action::Network(n)) = client.flush(&mut wire) {
        let _ = gateway.receive(None, &wire[..n], now, &mut plain);
    }
    let started = Instant::now();
    let mut delivered = 0usize;
    for _ in 0..packets {
        if let Ok(Action::Network(n)) = client.send(&packet, now, &mut wire)
            && let Ok(Action::Tunnel(_)) = gateway.receive(None, &wire[..n], now, &mut plain)
        {
            delivered += 1;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!(delivered, packets, "every packet must arrive");
    println!(
        "wireguard loop: {packets} packets of {size} bytes encrypted and decrypted in {seconds:.2} s on one core = {:.0} packets/s, {:.2} Gbit/s",
        packets as f64 / seconds,
        (packets * size * 8) as f64 / seconds / 1e9
    );
}
