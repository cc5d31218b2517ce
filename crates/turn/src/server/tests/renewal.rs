//! Short-lived credentials: the portal renews a device's TURN REST
//! credentials and the device moves its live allocation to them; when they
//! lapse without renewal (a revoked device), the allocation ends with them;
//! and a revocation from the portal ends it at once.

use super::*;

/// Credentials for `id` valid `valid_for` seconds from the harness's now.
fn credentials_now(h: &Harness, valid_for: u64, id: &str) -> (String, String) {
    let username = rest_username(h.now().unix_secs + valid_for, id);
    let password = rest_password(SECRET, &username);
    (username, password)
}

fn allocated_as(h: &mut Harness, from: SocketAddr, valid_for: u64, id: &str) -> Client {
    let (username, password) = credentials_now(h, valid_for, id);
    let server = "198.18.0.3:3478".parse().unwrap();
    let mut client = Client::new(server, &username, &password, 11, h.now().instant);
    h.exchange(&mut client, from);
    match client.poll_event() {
        Some(ClientEvent::Allocated { .. }) => client,
        other => panic!("expected an allocation, got {other:?}"),
    }
}

/// Binds a channel from `client` to [`peer`].
fn bind(h: &mut Harness, client: &mut Client, from: SocketAddr) {
    client.bind_channel(peer(), h.now().instant);
    h.exchange(client, from);
    assert!(matches!(
        client.poll_event(),
        Some(ClientEvent::ChannelBound { .. })
    ));
}

/// Whether `client`'s ChannelData to [`peer`] is relayed now.
fn relays(h: &mut Harness, client: &mut Client, from: SocketAddr) -> bool {
    let mut frame = Vec::new();
    assert!(client.encode_to_peer(peer(), b"data", &mut frame));
    let now = h.now();
    matches!(
        h.server.handle_client(now, from, &frame, &mut h.sockets),
        ClientAction::Relay { .. }
    )
}

/// Time passes in `step`s; the client runs its timers and talks to the
/// server.
fn run(h: &mut Harness, client: &mut Client, from: SocketAddr, step: Duration) {
    h.advance(step);
    client.handle_timeout(h.now().instant);
    h.exchange(client, from);
}

#[test]
fn renewed_credentials_keep_a_live_allocation_past_the_old_expiry() {
    let mut h = Harness::new(config());
    // Ten-minute credentials, renewed by the portal at half-life.
    let mut client = allocated_as(&mut h, alice(), 600, "device-1");
    let relayed = client.relayed_address().unwrap();
    bind(&mut h, &mut client, alice());
    for step in 1..=120 {
        run(&mut h, &mut client, alice(), Duration::from_secs(30));
        if step % 10 == 0 {
            let (username, password) = credentials_now(&h, 600, "device-1");
            client.set_credentials(&username, &password, h.now().instant);
            h.exchange(&mut client, alice());
        }
        assert!(relays(&mut h, &mut client, alice()), "at {:?}", h.elapsed);
    }
    // An hour later: the same allocation, port and channel, no failure.
    assert_eq!(client.relayed_address(), Some(relayed));
    assert_eq!(h.server.allocation_count(), 1);
    assert!(client.is_allocated());
    assert_eq!(client.poll_event(), None);
}

#[test]
fn credentials_that_lapse_without_renewal_end_the_allocation_with_them() {
    let mut h = Harness::new(config());
    // A revoked device: the portal renews nothing, the device keeps
    // refreshing with what it has.
    let mut client = allocated_as(&mut h, alice(), 600, "revoked-device");
    bind(&mut h, &mut client, alice());
    while h.elapsed < Duration::from_secs(595) {
        run(&mut h, &mut client, alice(), Duration::from_secs(5));
        assert!(relays(&mut h, &mut client, alice()), "at {:?}", h.elapsed);
    }
    run(&mut h, &mut client, alice(), Duration::from_secs(6));
    assert_eq!(h.server.allocation_count(), 0, "ended with the credentials");
    assert!(!relays(&mut h, &mut client, alice()));
    assert_eq!(h.drops(DropReason::NoAllocation), 1);
    // Refreshing with the lapsed credentials gets nowhere either.
    for _ in 0..30 {
        run(&mut h, &mut client, alice(), Duration::from_secs(30));
    }
    assert!(!client.is_allocated());
    assert!(matches!(
        client.poll_event(),
        Some(ClientEvent::Failed { .. })
    ));
    assert_eq!(h.server.allocation_count(), 0);
}

#[test]
fn another_device_s_credentials_cannot_take_an_allocation_over() {
    let mut h = Harness::new(config());
    let mut client = allocated_as(&mut h, alice(), 600, "device-1");
    let first = h.server.allocations[&alice()].username.clone();
    // Valid credentials of device-2 on device-1's 5-tuple: 441, and the
    // client goes back to its own (as it would with coturn, which refuses
    // any change of username).
    let (username, password) = credentials_now(&h, 600, "device-2");
    client.set_credentials(&username, &password, h.now().instant);
    let request = client.poll_transmit().unwrap();
    let reply = h.send(alice(), &request).unwrap();
    assert_eq!(error_of(&reply), code::WRONG_CREDENTIALS);
    assert!(client.handle_packet(&reply, h.now().instant).is_none());
    h.exchange(&mut client, alice());
    assert!(client.is_allocated());
    assert_eq!(client.poll_event(), None);
    assert_eq!(h.server.allocations[&alice()].username, first);
    // Still on device-1's credentials: they lapse at 600 s.
    for _ in 0..21 {
        run(&mut h, &mut client, alice(), Duration::from_secs(30));
    }
    assert_eq!(h.server.allocation_count(), 0);
}

#[test]
fn answers_to_requests_signed_before_a_renewal_are_still_accepted() {
    let mut h = Harness::new(config());
    let mut client = allocated_as(&mut h, alice(), 600, "device-1");
    // A CreatePermission under way when new credentials arrive: its answer
    // is signed with the old key.
    client.create_permission(peer().ip(), h.now().instant);
    let (username, password) = credentials_now(&h, 900, "device-1");
    client.set_credentials(&username, &password, h.now().instant);
    h.exchange(&mut client, alice());
    assert_eq!(
        client.poll_event(),
        Some(ClientEvent::PermissionCreated(peer().ip()))
    );
    assert_eq!(h.server.allocations[&alice()].username, username);
}

#[test]
fn a_revocation_ends_the_device_s_allocations_at_once_and_refuses_its_old_credentials() {
    let mut h = Harness::new(config());
    let bob: SocketAddr = "198.18.0.11:40000".parse().unwrap();
    let mut revoked = allocated_as(&mut h, alice(), 600, "device-1");
    let port = revoked.relayed_address().unwrap().port();
    bind(&mut h, &mut revoked, alice());
    let mut other = allocated_as(&mut h, bob, 600, "device-2");
    bind(&mut h, &mut other, bob);
    // The portal revokes device-1: every credential it issued so far expires
    // by now + 600 s.
    let now = h.now();
    let ended = h.server.revoke(
        now,
        &["device-1".to_string()],
        now.unix_secs + 600,
        &mut h.sockets,
    );
    assert_eq!(ended, 1);
    assert!(h.sockets.closed.contains(&port));
    assert!(!relays(&mut h, &mut revoked, alice()));
    assert!(relays(&mut h, &mut other, bob), "other devices go on");
    // Credentials issued before the revocation are refused from any
    // address; ones issued after it (a device signed in again) work.
    let (username, password) = credentials_now(&h, 300, "device-1");
    let server = "198.18.0.3:3478".parse().unwrap();
    let carol: SocketAddr = "198.18.0.12:1".parse().unwrap();
    let mut stale = Client::new(server, &username, &password, 12, h.now().instant);
    h.exchange(&mut stale, carol);
    assert!(matches!(
        stale.poll_event(),
        Some(ClientEvent::Failed { code: 401, .. })
    ));
    h.advance(Duration::from_secs(1));
    allocated_as(&mut h, carol, 600, "device-1");
}

#[test]
fn quotas_count_devices_not_usernames() {
    let mut config = config();
    config.max_allocations_per_user = 2;
    let mut h = Harness::new(config);
    // Three usernames of one device (different expiries): one too many.
    allocated_as(&mut h, "198.18.0.10:1".parse().unwrap(), 600, "device-1");
    allocated_as(&mut h, "198.18.0.10:2".parse().unwrap(), 700, "device-1");
    let (username, password) = credentials_now(&h, 800, "device-1");
    let server = "198.18.0.3:3478".parse().unwrap();
    let mut third = Client::new(server, &username, &password, 13, h.now().instant);
    h.exchange(&mut third, "198.18.0.10:3".parse().unwrap());
    assert!(matches!(
        third.poll_event(),
        Some(ClientEvent::Failed { code: 486, .. })
    ));
}
