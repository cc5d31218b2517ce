#![allow(clippy::unwrap_used)] // a test file: unwrap is the assertion
//! End to end in the lab (issue 6): real `postern` processes in network
//! namespaces behind NAT routers, configured through the REST API.

use std::time::Duration;

use postern_lab::NatKind;
use postern_lab::demo::{Demo, DemoOptions};

fn demo(home: NatKind, office: NatKind, gateways: usize) -> Demo {
    match Demo::start(DemoOptions {
        postern: env!("CARGO_BIN_EXE_postern").into(),
        home_nat: home,
        office_nat: office,
        gateways,
    }) {
        Ok(demo) => demo,
        Err(error) => panic!("the lab did not start: {error}"),
    }
}

#[test]
fn a_download_through_cone_nats_takes_the_direct_path() {
    let demo = demo(NatKind::Cone, NatKind::Cone, 1);
    let took = demo
        .download(1 << 20, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}\n{}", demo.logs()));
    println!("1 MiB in {took:?}");
    let status = demo.client_status().unwrap();
    println!("{status}\n{}", demo.logs());
    assert!(status.contains("\"path\": \"direct\""), "{status}");
}
