#![allow(clippy::unwrap_used)] // a test file: unwrap is the assertion
//! Issue 19, SPEC 7.5: the flow log. The gateway tracks each flow it
//! forwards (client, resource, protocol, addresses and ports, start, end,
//! bytes each way), reports ended ones in batches, and the portal serves
//! them at `GET /api/v1/flows`, filtered.

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use postern_lab::NatKind;
use postern_lab::demo::{Demo, DemoOptions};

fn start() -> Demo {
    Demo::start(DemoOptions {
        postern: env!("CARGO_BIN_EXE_postern").into(),
        home_nat: NatKind::Cone,
        office_nat: NatKind::Cone,
        gateways: 1,
        client_in_office: false,
        ipv6: Default::default(),
    })
    .unwrap_or_else(|e| panic!("the lab did not start: {e}"))
}

/// Every flow of the web resource the portal has, all pages.
fn flows(demo: &Demo, query: &str) -> Vec<serde_json::Value> {
    let mut all = Vec::new();
    let mut cursor = String::new();
    loop {
        let path = format!("/api/v1/flows?limit=1000{query}{cursor}");
        let body = demo.api_ok("GET", &path, None).unwrap();
        let page: serde_json::Value = serde_json::from_str(&body).unwrap();
        all.extend(page["data"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => return all,
        }
    }
}

fn resident_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn a_download_and_ten_thousand_short_connections_are_in_the_flow_log() {
    let demo = start();
    let resource = demo.setup.resource_id.clone();
    let by_resource = format!("&resource_id={resource}");

    // One 16 MiB download: its flow, with its bytes, within seconds.
    demo.download(16 << 20, Duration::from_secs(30)).unwrap();
    let finished = Instant::now();
    let download = loop {
        let found = flows(&demo, &by_resource)
            .into_iter()
            .find(|f| f["bytes_in"].as_i64().unwrap_or(0) >= 16 << 20);
        if let Some(flow) = found {
            break flow;
        }
        assert!(
            finished.elapsed() < Duration::from_secs(10),
            "no flow with the download's bytes after 10 s: {:?}\n{}",
            flows(&demo, ""),
            demo.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    println!(
        "the 16 MiB download's flow was in the log {} ms after it finished: {download}",
        finished.elapsed().as_millis()
    );
    assert_eq!(download["protocol"], 6);
    assert_eq!(download["destination"], "10.0.1.80:80");
    assert_eq!(download["actor_id"], demo.setup.actor_id.as_str());
    assert!(download["bytes_out"].as_i64().unwrap() > 0);
    assert!(download["ended_at"].is_string());
    // Filters: another resource has none of it; by actor and time it is there.
    let other = format!("&resource_id={}", demo.setup.dns_resource_id);
    assert!(flows(&demo, &other).is_empty());
    let actor = format!(
        "&actor_id={}&since=2000-01-01T00:00:00Z",
        demo.setup.actor_id
    );
    assert!(!flows(&demo, &actor).is_empty());
    assert!(flows(&demo, &format!("{by_resource}&until=2000-01-01T00:00:00Z")).is_empty());
    let bad = demo
        .api("GET", "/api/v1/flows?since=yesterday", None)
        .unwrap();
    assert_eq!(bad.status, 422, "{}", bad.text());
    assert!(
        bad.text().contains("since"),
        "names the field: {}",
        bad.text()
    );

    // 10,000 short connections, each its own flow: all counted.
    let gateway = demo.gateway_processes[0].as_ref().unwrap().pid();
    let before = flows(&demo, &by_resource).len();
    let rss_before = resident_kib(gateway);
    let web: SocketAddr = "10.0.1.80:80".parse().unwrap();
    let started = Instant::now();
    let failed = demo
        .net
        .client
        .enter(move || {
            (0..10_000)
                .filter(|_| TcpStream::connect_timeout(&web, Duration::from_secs(5)).is_err())
                .count()
        })
        .unwrap();
    assert_eq!(failed, 0);
    let rss_busy = resident_kib(gateway);
    println!(
        "10,000 connections in {} ms; gateway resident {} KiB before, {} KiB after",
        started.elapsed().as_millis(),
        rss_before,
        rss_busy
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut counted = 0;
    while Instant::now() < deadline {
        counted = flows(&demo, &by_resource).len() - before;
        if counted >= 10_000 {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    println!(
        "{counted} of 10,000 flows in the log {} ms after the first connection",
        started.elapsed().as_millis()
    );
    assert_eq!(counted, 10_000, "{}", demo.logs());
}
