use super::*;

/// RFC 5769 section 2.1: sample request with short-term credentials
/// (password "VOkJxbRl1RmTxUk/WvJxBt"), MESSAGE-INTEGRITY and FINGERPRINT.
const RFC5769_REQUEST: [u8; 108] = [
    0x00, 0x01, 0x00, 0x58, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86,
    0xfa, 0x87, 0xdf, 0xae, 0x80, 0x22, 0x00, 0x10, 0x53, 0x54, 0x55, 0x4e, 0x20, 0x74, 0x65, 0x73,
    0x74, 0x20, 0x63, 0x6c, 0x69, 0x65, 0x6e, 0x74, 0x00, 0x24, 0x00, 0x04, 0x6e, 0x00, 0x01, 0xff,
    0x80, 0x29, 0x00, 0x08, 0x93, 0x2f, 0xf9, 0xb1, 0x51, 0x26, 0x3b, 0x36, 0x00, 0x06, 0x00, 0x09,
    0x65, 0x76, 0x74, 0x6a, 0x3a, 0x68, 0x36, 0x76, 0x59, 0x20, 0x20, 0x20, 0x00, 0x08, 0x00, 0x14,
    0x9a, 0xea, 0xa7, 0x0c, 0xbf, 0xd8, 0xcb, 0x56, 0x78, 0x1e, 0xf2, 0xb5, 0xb2, 0xd3, 0xf2, 0x49,
    0xc1, 0xb5, 0x71, 0xa2, 0x80, 0x28, 0x00, 0x04, 0xe5, 0x7a, 0x3b, 0xcf,
];

#[test]
fn rfc5769_sample_request_verifies() {
    let message = Message::parse(&RFC5769_REQUEST).unwrap();
    assert_eq!(message.class(), Class::Request);
    assert_eq!(message.method(), method::BINDING);
    assert_eq!(message.get_str(attr::SOFTWARE), Some("STUN test client"));
    assert_eq!(message.get_str(attr::USERNAME), Some("evtj:h6vY"));
    assert_eq!(
        message.verify_integrity(b"VOkJxbRl1RmTxUk/WvJxBt"),
        Integrity::Sha1
    );
    assert_eq!(message.verify_integrity(b"wrong"), Integrity::Invalid);
    assert_eq!(message.verify_fingerprint(), Some(true));

    let mut tampered = RFC5769_REQUEST;
    tampered[30] ^= 1; // inside SOFTWARE
    let message = Message::parse(&tampered).unwrap();
    assert_eq!(
        message.verify_integrity(b"VOkJxbRl1RmTxUk/WvJxBt"),
        Integrity::Invalid
    );
    assert_eq!(message.verify_fingerprint(), Some(false));
}

#[test]
fn written_messages_parse_back_with_both_integrity_kinds() {
    let tid = [7u8; 12];
    let peer: std::net::SocketAddr = "[2001:db8::9]:4000".parse().unwrap();
    for sha256 in [false, true] {
        let mut buf = Vec::new();
        let mut writer = MessageWriter::new(&mut buf, method::CHANNEL_BIND, Class::Request, tid);
        writer
            .attr(attr::USERNAME, b"1700000000:alice")
            .u32(attr::CHANNEL_NUMBER, 0x4001_0000)
            .xor_address(attr::XOR_PEER_ADDRESS, peer);
        if sha256 {
            writer.integrity_sha256(b"key");
        } else {
            writer.integrity_sha1(b"key");
        }
        writer.fingerprint();
        let message = Message::parse(&buf).unwrap();
        assert_eq!(message.transaction_id(), tid);
        assert_eq!(message.get_u32(attr::CHANNEL_NUMBER), Some(0x4001_0000));
        assert_eq!(
            message.get_xor_address(attr::XOR_PEER_ADDRESS),
            Some(Some(peer))
        );
        let expected = if sha256 {
            Integrity::Sha256
        } else {
            Integrity::Sha1
        };
        assert_eq!(message.verify_integrity(b"key"), expected);
        assert_eq!(message.verify_integrity(b"other"), Integrity::Invalid);
        assert_eq!(message.verify_fingerprint(), Some(true));
    }
}

#[test]
fn attributes_after_integrity_are_ignored() {
    let mut buf = Vec::new();
    MessageWriter::new(&mut buf, method::ALLOCATE, Class::Request, [1; 12])
        .attr(attr::USERNAME, b"u")
        .integrity_sha1(b"k")
        .attr(attr::LIFETIME, &0u32.to_be_bytes());
    let message = Message::parse(&buf).unwrap();
    assert_eq!(
        message.get(attr::LIFETIME),
        None,
        "an attribute after MESSAGE-INTEGRITY counts"
    );
    assert_eq!(message.verify_integrity(b"k"), Integrity::Sha1);
}

#[test]
fn error_codes_and_unknown_attributes() {
    let mut buf = Vec::new();
    MessageWriter::new(&mut buf, method::ALLOCATE, Class::Error, [2; 12])
        .error_code(code::UNKNOWN_ATTRIBUTE)
        .unknown_attributes(&[0x7777]);
    let message = Message::parse(&buf).unwrap();
    assert_eq!(message.error_code(), Some((420, "Unknown Attribute")));

    let mut buf = Vec::new();
    MessageWriter::new(&mut buf, method::ALLOCATE, Class::Request, [3; 12])
        .attr(0x7777, b"x")
        .attr(0x8777, b"optional")
        .attr(attr::LIFETIME, &[0, 0, 0, 1]);
    let message = Message::parse(&buf).unwrap();
    assert_eq!(message.unknown_required(&[attr::LIFETIME]), vec![0x7777]);
}

#[test]
fn malformed_framing_is_rejected() {
    let good = RFC5769_REQUEST;
    assert_eq!(
        Message::parse(&good[..19]).unwrap_err(),
        ParseError::TooShort
    );
    let mut bad = good;
    bad[0] = 0x40;
    assert_eq!(Message::parse(&bad).unwrap_err(), ParseError::NotStun);
    let mut bad = good;
    bad[5] = 0;
    assert_eq!(Message::parse(&bad).unwrap_err(), ParseError::NoCookie);
    assert_eq!(
        Message::parse(&good[..100]).unwrap_err(),
        ParseError::BadLength
    );
    let mut bad = good;
    bad[23] = 0x50; // SOFTWARE claims 80 bytes
    assert_eq!(
        Message::parse(&bad).unwrap_err(),
        ParseError::TruncatedAttribute
    );
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            if let Ok(message) = Message::parse(&bytes) {
                let _ = message.verify_integrity(b"key");
                let _ = message.verify_fingerprint();
                let _ = message.error_code();
                let _ = message.get_xor_address(attr::XOR_PEER_ADDRESS);
                for (_, value) in message.attributes() {
                    prop_assert!(value.len() <= bytes.len());
                }
            }
        }

        #[test]
        fn stun_headed_garbage_never_panics(body in proptest::collection::vec(any::<u8>(), 0..400), ty in any::<u16>()) {
            // A valid header over random attributes exercises the attribute walk.
            let len = body.len() / 4 * 4;
            let mut bytes = Vec::new();
            bytes.extend_from_slice(&(ty & 0x3FFF).to_be_bytes());
            bytes.extend_from_slice(&(len as u16).to_be_bytes());
            bytes.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
            bytes.extend_from_slice(&[9; 12]);
            bytes.extend_from_slice(&body[..len]);
            if let Ok(message) = Message::parse(&bytes) {
                let _ = message.verify_integrity(b"key");
                let _ = message.unknown_required(&[]);
                let _ = message.xor_addresses(attr::XOR_PEER_ADDRESS).count();
            }
        }
    }
}
