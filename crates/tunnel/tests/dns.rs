#![allow(clippy::unwrap_used)] // a test file: unwrap is the assertion
//! The client's DNS stub: which names get proxy addresses, how they look,
//! that they stay put, what goes elsewhere, and that no input makes it panic.

use std::collections::HashSet;
use std::net::IpAddr;
use std::str::FromStr;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use postern_model::plan::{DNS_PROXY_V4, DNS_PROXY_V6, DNS_SENTINEL_V4};
use postern_model::protocol::ResourceDescription;
use postern_model::resource::ResourceType;
use postern_model::{ResourceAddress, ResourceId, SiteId};
use postern_tunnel::dns::{DnsStub, PROXIES_PER_FAMILY, PROXY_TTL, StubAnswer};
use proptest::prelude::*;

fn dns_resource(id: u128, pattern: &str) -> ResourceDescription {
    ResourceDescription {
        id: ResourceId::from_u128(id),
        name: pattern.to_string(),
        address: ResourceAddress::parse(ResourceType::Dns, Some(pattern)).unwrap(),
        address_description: None,
        filters: vec![],
        site_id: SiteId::from_u128(99),
    }
}

fn query(id: u16, name: &str, kind: RecordType) -> Vec<u8> {
    let mut message = Message::new(id, MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(Name::from_str(name).unwrap(), kind));
    message.to_vec().unwrap()
}

fn answer(stub: &mut DnsStub, id: u16, name: &str, kind: RecordType) -> Message {
    match stub.handle_query(&query(id, name, kind)) {
        StubAnswer::Reply(bytes) => Message::from_vec(&bytes).unwrap(),
        other => panic!("{name} {kind}: expected a reply, got {other:?}"),
    }
}

fn addresses(message: &Message) -> Vec<IpAddr> {
    message
        .answers
        .iter()
        .map(|record| match &record.data {
            RData::A(a) => IpAddr::V4(a.0),
            RData::AAAA(aaaa) => IpAddr::V6(aaaa.0),
            other => panic!("unexpected answer {other:?}"),
        })
        .collect()
}

fn stub() -> DnsStub {
    let mut stub = DnsStub::new();
    stub.set_resources(&[
        dns_resource(1, "*.apps.corp.test"),
        dns_resource(2, "**.corp.test"),
        dns_resource(3, "db?.corp.test"),
        dns_resource(4, "exact.apps.corp.test"),
    ]);
    stub
}

#[test]
fn a_resource_name_gets_four_proxies_per_family_with_a_one_second_ttl() {
    let mut stub = stub();
    let v4 = answer(&mut stub, 7, "web.apps.corp.test.", RecordType::A);
    assert_eq!(v4.metadata.id, 7);
    assert_eq!(v4.metadata.message_type, MessageType::Response);
    assert_eq!(v4.metadata.response_code, ResponseCode::NoError);
    assert_eq!(
        v4.queries,
        query_of(7, "web.apps.corp.test.", RecordType::A).queries
    );
    let ipv4 = addresses(&v4);
    assert_eq!(ipv4.len(), PROXIES_PER_FAMILY);
    for (record, ip) in v4.answers.iter().zip(&ipv4) {
        assert_eq!(record.ttl, PROXY_TTL);
        let IpAddr::V4(ip) = ip else { panic!() };
        assert!(DNS_PROXY_V4.contains(ip) && *ip != DNS_SENTINEL_V4, "{ip}");
    }
    let v6 = answer(&mut stub, 8, "web.apps.corp.test.", RecordType::AAAA);
    let ipv6 = addresses(&v6);
    assert_eq!(ipv6.len(), PROXIES_PER_FAMILY);
    for ip in &ipv6 {
        let IpAddr::V6(ip) = ip else { panic!() };
        assert!(DNS_PROXY_V6.contains(ip), "{ip}");
    }
    // The gateway hears of the name once, with all eight proxies.
    let assigned = stub.poll_assigned().unwrap();
    assert_eq!(assigned.name, "web.apps.corp.test");
    assert_eq!(assigned.resource, ResourceId::from_u128(1));
    let all: Vec<IpAddr> = ipv4.iter().chain(&ipv6).copied().collect();
    assert_eq!(assigned.addresses(), all);
    assert_eq!(stub.poll_assigned(), None);
    // Each proxy leads back to the name.
    for ip in all {
        assert_eq!(stub.assignment_of(ip).unwrap().name, "web.apps.corp.test");
    }
}

fn query_of(id: u16, name: &str, kind: RecordType) -> Message {
    Message::from_vec(&query(id, name, kind)).unwrap()
}

#[test]
fn proxies_stay_put_per_name_and_differ_between_names() {
    let mut stub = stub();
    let first = addresses(&answer(&mut stub, 1, "web.apps.corp.test.", RecordType::A));
    let again = addresses(&answer(&mut stub, 2, "WEB.Apps.Corp.Test.", RecordType::A));
    assert_eq!(first, again, "case does not matter, answers are stable");
    let other = addresses(&answer(&mut stub, 3, "mail.apps.corp.test.", RecordType::A));
    let overlap: HashSet<_> = first.iter().filter(|ip| other.contains(ip)).collect();
    assert!(overlap.is_empty(), "{first:?} vs {other:?}");
    // Many names later the first one still has its proxies.
    for n in 0..500 {
        answer(
            &mut stub,
            4,
            &format!("host{n}.apps.corp.test."),
            RecordType::A,
        );
    }
    assert_eq!(
        addresses(&answer(&mut stub, 5, "web.apps.corp.test.", RecordType::A)),
        first
    );
}

#[test]
fn the_most_specific_pattern_owns_a_name() {
    let stub = stub();
    let owner = |name: &str| stub.resource_for(name).map(|id| id.0.as_u128());
    assert_eq!(owner("exact.apps.corp.test"), Some(4), "exact beats *");
    assert_eq!(owner("web.apps.corp.test"), Some(1), "* beats **");
    assert_eq!(
        owner("apps.corp.test"),
        Some(1),
        "a leading * also matches the bare name"
    );
    assert_eq!(owner("a.b.c.corp.test"), Some(2), "** spans labels");
    assert_eq!(owner("db1.corp.test"), Some(3), "? beats **");
    assert_eq!(owner("db12.corp.test"), Some(2), "? is one character");
    assert_eq!(owner("corp.test.example"), None);
    assert_eq!(owner("example.com"), None);
}

#[test]
fn other_names_go_upstream_and_other_questions_to_the_gateway() {
    let mut stub = stub();
    assert_eq!(
        stub.handle_query(&query(1, "example.com.", RecordType::A)),
        StubAnswer::Upstream
    );
    assert_eq!(
        stub.handle_query(&query(2, "web.apps.corp.test.", RecordType::MX)),
        StubAnswer::Gateway {
            resource: ResourceId::from_u128(1)
        }
    );
    assert_eq!(
        stub.handle_query(&query(3, "x.corp.test.", RecordType::TXT)),
        StubAnswer::Gateway {
            resource: ResourceId::from_u128(2)
        }
    );
    // Nothing was assigned for those.
    assert_eq!(stub.poll_assigned(), None);
    // A resource the client loses is a plain name again.
    stub.set_resources(&[dns_resource(2, "**.corp.test")]);
    assert_eq!(
        stub.resource_for("web.apps.corp.test")
            .map(|id| id.0.as_u128()),
        Some(2)
    );
    stub.set_resources(&[]);
    assert_eq!(
        stub.handle_query(&query(4, "web.apps.corp.test.", RecordType::A)),
        StubAnswer::Upstream
    );
}

#[test]
fn the_firefox_canary_gets_nxdomain() {
    let mut stub = stub();
    let reply = answer(&mut stub, 9, "use-application-dns.net.", RecordType::A);
    assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);
    assert!(reply.answers.is_empty());
}

#[test]
fn malformed_and_unusual_queries_are_answered_or_dropped_never_forwarded() {
    let mut stub = stub();
    // Two questions in one message.
    let mut two = Message::new(5, MessageType::Query, OpCode::Query);
    two.add_query(Query::query(
        Name::from_str("a.corp.test.").unwrap(),
        RecordType::A,
    ));
    two.add_query(Query::query(
        Name::from_str("b.corp.test.").unwrap(),
        RecordType::A,
    ));
    let StubAnswer::Reply(bytes) = stub.handle_query(&two.to_vec().unwrap()) else {
        panic!("two questions get an answer")
    };
    assert_eq!(
        Message::from_vec(&bytes).unwrap().metadata.response_code,
        ResponseCode::FormErr
    );
    // Not a query.
    let mut notify = query_of(6, "a.corp.test.", RecordType::SOA);
    notify.metadata.op_code = OpCode::Notify;
    let StubAnswer::Reply(bytes) = stub.handle_query(&notify.to_vec().unwrap()) else {
        panic!("a notify gets an answer")
    };
    assert_eq!(
        Message::from_vec(&bytes).unwrap().metadata.response_code,
        ResponseCode::NotImp
    );
    // A response is not a query: dropped (no reflection loops).
    let mut response = query_of(7, "a.corp.test.", RecordType::A);
    response.metadata.message_type = MessageType::Response;
    assert_eq!(
        stub.handle_query(&response.to_vec().unwrap()),
        StubAnswer::Drop
    );
    // A header followed by garbage: FORMERR with the same id.
    let mut garbage = vec![0x12, 0x34, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0];
    garbage.extend_from_slice(&[0xff; 5]);
    let StubAnswer::Reply(bytes) = stub.handle_query(&garbage) else {
        panic!("a broken query gets FORMERR")
    };
    let reply = Message::from_vec(&bytes).unwrap();
    assert_eq!(
        (reply.metadata.id, reply.metadata.response_code),
        (0x1234, ResponseCode::FormErr)
    );
    // Too short to be DNS.
    assert_eq!(stub.handle_query(&[1, 2, 3]), StubAnswer::Drop);
}

proptest! {
    #[test]
    fn no_bytes_make_the_stub_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let mut stub = stub();
        let _ = stub.handle_query(&bytes);
    }

    #[test]
    fn mutated_queries_never_panic(
        flips in proptest::collection::vec((0usize..64, any::<u8>()), 1..8),
        cut in 0usize..80,
    ) {
        let mut stub = stub();
        let mut bytes = query(1, "web.apps.corp.test.", RecordType::A);
        for (at, value) in flips {
            if let Some(byte) = bytes.get_mut(at) {
                *byte = value;
            }
        }
        bytes.truncate(cut.max(1));
        let _ = stub.handle_query(&bytes);
    }
}
