#![allow(clippy::unwrap_used)] // a test file: unwrap is the assertion
//! Roaming in the lab (issue 24), with real processes: the laptop leaves
//! its home network for a cafe behind another NAT (a new address, a new
//! public address and port, the old link down) and comes back. Traffic must
//! resume within 2 s of each move, and a download that runs across the
//! moves must finish intact on the same TCP connection (the tunnel
//! addresses do not change).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use postern_lab::NatKind;
use postern_lab::demo::Demo;

mod support;

const MIB: u64 = 1 << 20;

fn demo(home: NatKind, office: NatKind) -> Demo {
    support::demo(home, office, 1)
}

/// Polls small downloads until one works; how long that took.
fn until_downloads_work(demo: &Demo, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if demo.download(1024, Duration::from_millis(300)).is_ok() {
            return Some(started.elapsed());
        }
    }
    None
}

/// A download read at an app's pace (64 KiB every `pause`), every byte
/// checked, on one TCP connection from the client: how many bytes came,
/// or how it broke.
fn paced_download(demo: &Demo, size: u64, pause: Duration) -> JoinHandle<Result<u64, String>> {
    let web: SocketAddr = "10.0.1.80:80".parse().unwrap();
    let stream = demo
        .net
        .client
        .enter(move || TcpStream::connect_timeout(&web, Duration::from_secs(5)))
        .unwrap()
        .unwrap();
    std::thread::spawn(move || {
        let mut stream = stream;
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(|e| e.to_string())?;
        write!(
            stream,
            "GET /bytes/{size} HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n"
        )
        .map_err(|e| e.to_string())?;
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            stream.read_exact(&mut byte).map_err(|e| e.to_string())?;
            head.push(byte[0]);
        }
        let mut got = 0u64;
        let mut chunk = vec![0u8; 64 * 1024];
        while got < size {
            let n = stream
                .read(&mut chunk)
                .map_err(|e| format!("after {got} bytes: {e}"))?;
            if n == 0 {
                return Err(format!("closed after {got} of {size} bytes"));
            }
            for (i, b) in chunk[..n].iter().enumerate() {
                if *b != postern_lab::http::payload_byte(got + i as u64) {
                    return Err(format!("differs at byte {}", got + i as u64));
                }
            }
            got += n as u64;
            std::thread::sleep(pause);
        }
        Ok(got)
    })
}

fn moved_and_resumed(demo: &Demo, what: &str, travel: impl FnOnce()) -> Duration {
    travel();
    let resumed = until_downloads_work(demo, Duration::from_secs(15))
        .unwrap_or_else(|| panic!("traffic never resumed after {what}\n{}", demo.logs()));
    println!("traffic resumed {resumed:?} after {what}");
    resumed
}

#[test]
fn a_client_that_moves_to_a_cafe_and_back_keeps_its_access_and_its_download() {
    let demo = demo(NatKind::Cone, NatKind::Cone);
    let cafe = demo.add_cafe(NatKind::Cone).unwrap();
    demo.download(MIB, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}\n{}", demo.logs()));
    // 24 MiB at about 2.6 MB/s: it runs across both moves.
    let size = 24 * MIB;
    let long = paced_download(&demo, size, Duration::from_millis(25));
    std::thread::sleep(Duration::from_secs(1));

    let to_cafe = moved_and_resumed(&demo, "the move to the cafe", || {
        demo.move_client_to(&cafe).unwrap()
    });
    demo.wait_for_path("direct", Duration::from_secs(10))
        .unwrap_or_else(|path| panic!("not direct from the cafe: {path}\n{}", demo.logs()));
    std::thread::sleep(Duration::from_secs(1));
    let back_home = moved_and_resumed(&demo, "the move back home", || {
        demo.move_client_home(&cafe).unwrap()
    });
    let finished = long.join().unwrap();
    assert_eq!(
        finished,
        Ok(size),
        "the download across both moves\n{}",
        demo.logs()
    );
    assert!(to_cafe < Duration::from_secs(2), "{to_cafe:?}");
    assert!(back_home < Duration::from_secs(2), "{back_home:?}");
}

#[test]
fn a_client_that_moves_behind_a_symmetric_nat_goes_on_through_the_relay() {
    let demo = demo(NatKind::Cone, NatKind::Cone);
    let cafe = demo.add_cafe(NatKind::Symmetric).unwrap();
    demo.download(MIB, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}\n{}", demo.logs()));
    let resumed = moved_and_resumed(&demo, "the move behind a symmetric NAT", || {
        demo.move_client_to(&cafe).unwrap()
    });
    assert!(resumed < Duration::from_secs(2), "{resumed:?}");
    demo.wait_for_path("relayed", Duration::from_secs(10))
        .unwrap_or_else(|path| panic!("not relayed: {path}\n{}", demo.logs()));
    demo.download(4 * MIB, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}\n{}", demo.logs()));
}

/// How long the client stays frozen: a laptop's lid closed over a meeting.
const FROZEN_FOR: Duration = Duration::from_secs(120);

#[test]
fn a_client_frozen_for_two_minutes_recovers_within_two_seconds_of_waking() {
    use nix::sys::signal::Signal;
    let demo = demo(NatKind::Cone, NatKind::Cone);
    demo.download(MIB, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}\n{}", demo.logs()));
    let client = demo.client_process.as_ref().unwrap();
    // Suspended: the process does not run and its network is gone (what
    // was in flight, the NAT's mappings, the portal's patience).
    demo.net
        .client
        .nft(
            "table inet asleep {
               chain in { type filter hook input priority -300; policy accept; iifname \"eth0\" drop; }
               chain out { type filter hook output priority -300; policy accept; oifname \"eth0\" drop; }
             }",
        )
        .unwrap();
    client.signal(Signal::SIGSTOP).unwrap();
    std::thread::sleep(FROZEN_FOR);
    demo.net.client.nft("delete table inet asleep").unwrap();
    client.signal(Signal::SIGCONT).unwrap();
    let resumed = until_downloads_work(&demo, Duration::from_secs(30))
        .unwrap_or_else(|| panic!("never recovered after waking\n{}", demo.logs()));
    println!("traffic resumed {resumed:?} after {FROZEN_FOR:?} frozen");
    assert!(
        resumed < Duration::from_secs(2),
        "{resumed:?}\n{}",
        demo.logs()
    );
}

#[test]
fn with_two_links_up_the_preferred_one_going_down_moves_traffic_to_the_other() {
    let demo = demo(NatKind::Cone, NatKind::Cone);
    let cafe = demo.add_cafe(NatKind::Cone).unwrap();
    demo.add_backup_link(&cafe).unwrap();
    demo.download(MIB, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}\n{}", demo.logs()));
    let resumed = moved_and_resumed(&demo, "the home link went down", || {
        demo.drop_home_link().unwrap()
    });
    assert!(resumed < Duration::from_secs(2), "{resumed:?}");
    demo.download(4 * MIB, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}\n{}", demo.logs()));
}

/// Two gateways with one device id (gateway-2 started from a copy of
/// gateway-1's state directory, as from a cloned VM image): the portal
/// refuses the second with `duplicate_device`, which it prints, and the
/// first keeps serving without a single reconnect.
#[test]
fn a_second_gateway_with_a_copied_device_id_is_refused_and_the_first_never_flaps() {
    let mut demo = support::demo(NatKind::Cone, NatKind::Cone, 2);
    demo.download(MIB, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}\n{}", demo.logs()));
    let serving = demo.serving_gateway().unwrap();
    let copy = 1 - serving;
    demo.stop_gateway(copy).unwrap();
    let id_file = |n: usize| {
        demo.data_dir()
            .join(demo.net.gateways[n].name())
            .join("gateway-device-id")
    };
    std::fs::copy(id_file(serving), id_file(copy)).unwrap();
    let connects = |demo: &Demo| {
        demo.gateway_processes[serving]
            .as_ref()
            .unwrap()
            .stderr()
            .matches("connected to the portal")
            .count()
    };
    let before = connects(&demo);
    demo.gateway_processes[copy] = Some(demo.spawn_gateway(copy).unwrap());

    // Traffic through the first goes on while the copy keeps trying.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(6) {
        demo.download(64 * 1024, Duration::from_secs(2))
            .unwrap_or_else(|e| panic!("a download failed: {e}\n{}", demo.logs()));
        std::thread::sleep(Duration::from_millis(100));
    }
    let copy_log = demo.gateway_processes[copy].as_ref().unwrap().stderr();
    assert!(
        copy_log.contains("another device with the same device id"),
        "the copy says why it is refused:\n{copy_log}"
    );
    assert_eq!(
        connects(&demo),
        before,
        "the first never reconnected\n{}",
        demo.logs()
    );
    let portal_log = demo.processes[0].stderr();
    assert!(
        portal_log.contains("refused a second device with the same device id"),
        "{portal_log}"
    );
    // The portal lists the id once, online, under the first's name.
    let gateways = demo
        .api_ok(
            "GET",
            &format!("/api/v1/sites/{}/gateways", demo.setup.site_id),
            None,
        )
        .unwrap();
    let first_name = demo.net.gateways[serving].name();
    let listed: serde_json::Value = serde_json::from_str(&gateways).unwrap();
    let online: Vec<&serde_json::Value> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| g["online"] == true)
        .collect();
    assert_eq!(online.len(), 1, "{gateways}");
    assert_eq!(
        online[0]["name"], first_name,
        "the refused copy did not rename the first: {gateways}"
    );
}
