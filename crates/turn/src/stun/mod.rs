//! STUN messages (RFC 8489) with the TURN (RFC 8656) methods and attributes.
//!
//! Written by hand rather than with `stun_codec`: that crate decodes into
//! owned attribute values through `bytecodec` (an allocation per message and a
//! re-encode to check integrity) and lacks MESSAGE-INTEGRITY-SHA256 and the
//! RFC 8656 address-family attributes. Here [`Message`] is a validated view
//! over the received bytes, and [`MessageWriter`] builds replies.

mod address;
mod message;
mod writer;

pub use address::{decode_address, decode_xor_address, encode_xor_address};
pub use message::{Integrity, Message, ParseError};
pub use writer::MessageWriter;

/// The fixed value in every STUN header (RFC 8489 section 5).
pub const MAGIC_COOKIE: u32 = 0x2112_A442;
/// STUN header size.
pub const HEADER_LEN: usize = 20;

/// A 96-bit transaction id.
pub type TransactionId = [u8; 12];

/// The class bits of a message type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    Request,
    Indication,
    Success,
    Error,
}

/// STUN and TURN methods.
pub mod method {
    pub const BINDING: u16 = 0x001;
    pub const ALLOCATE: u16 = 0x003;
    pub const REFRESH: u16 = 0x004;
    pub const SEND: u16 = 0x006;
    pub const DATA: u16 = 0x007;
    pub const CREATE_PERMISSION: u16 = 0x008;
    pub const CHANNEL_BIND: u16 = 0x009;
}

/// Attribute types (RFC 8489 section 18.3, RFC 8656 section 18).
pub mod attr {
    pub const MAPPED_ADDRESS: u16 = 0x0001;
    pub const USERNAME: u16 = 0x0006;
    pub const MESSAGE_INTEGRITY: u16 = 0x0008;
    pub const ERROR_CODE: u16 = 0x0009;
    pub const UNKNOWN_ATTRIBUTES: u16 = 0x000A;
    pub const CHANNEL_NUMBER: u16 = 0x000C;
    pub const LIFETIME: u16 = 0x000D;
    pub const XOR_PEER_ADDRESS: u16 = 0x0012;
    pub const DATA: u16 = 0x0013;
    pub const REALM: u16 = 0x0014;
    pub const NONCE: u16 = 0x0015;
    pub const XOR_RELAYED_ADDRESS: u16 = 0x0016;
    pub const REQUESTED_ADDRESS_FAMILY: u16 = 0x0017;
    pub const EVEN_PORT: u16 = 0x0018;
    pub const REQUESTED_TRANSPORT: u16 = 0x0019;
    pub const DONT_FRAGMENT: u16 = 0x001A;
    pub const MESSAGE_INTEGRITY_SHA256: u16 = 0x001C;
    pub const PASSWORD_ALGORITHM: u16 = 0x001D;
    pub const USERHASH: u16 = 0x001E;
    pub const XOR_MAPPED_ADDRESS: u16 = 0x0020;
    pub const RESERVATION_TOKEN: u16 = 0x0022;
    pub const PRIORITY: u16 = 0x0024;
    pub const USE_CANDIDATE: u16 = 0x0025;
    pub const ADDITIONAL_ADDRESS_FAMILY: u16 = 0x8000;
    pub const ADDRESS_ERROR_CODE: u16 = 0x8001;
    pub const PASSWORD_ALGORITHMS: u16 = 0x8002;
    pub const SOFTWARE: u16 = 0x8022;
    pub const ALTERNATE_SERVER: u16 = 0x8023;
    pub const FINGERPRINT: u16 = 0x8028;
    pub const ICE_CONTROLLED: u16 = 0x8029;
    pub const ICE_CONTROLLING: u16 = 0x802A;
    pub const RESPONSE_ORIGIN: u16 = 0x802B;
    pub const OTHER_ADDRESS: u16 = 0x802C;

    /// Types 0x0000-0x7FFF must be understood; an agent that does not must
    /// reject the request (420 with UNKNOWN-ATTRIBUTES).
    pub fn is_comprehension_required(ty: u16) -> bool {
        ty < 0x8000
    }
}

/// Error codes used by the relay (RFC 8489 section 14.8, RFC 8656 section 19).
pub mod code {
    pub const TRY_ALTERNATE: u16 = 300;
    pub const BAD_REQUEST: u16 = 400;
    pub const UNAUTHORIZED: u16 = 401;
    pub const FORBIDDEN: u16 = 403;
    pub const UNKNOWN_ATTRIBUTE: u16 = 420;
    pub const ALLOCATION_MISMATCH: u16 = 437;
    pub const STALE_NONCE: u16 = 438;
    pub const ADDRESS_FAMILY_NOT_SUPPORTED: u16 = 440;
    pub const WRONG_CREDENTIALS: u16 = 441;
    pub const UNSUPPORTED_TRANSPORT: u16 = 442;
    pub const PEER_ADDRESS_FAMILY_MISMATCH: u16 = 443;
    pub const ALLOCATION_QUOTA_REACHED: u16 = 486;
    pub const SERVER_ERROR: u16 = 500;
    pub const INSUFFICIENT_CAPACITY: u16 = 508;

    /// The reason phrase the RFCs suggest.
    pub fn reason(code: u16) -> &'static str {
        match code {
            TRY_ALTERNATE => "Try Alternate",
            BAD_REQUEST => "Bad Request",
            UNAUTHORIZED => "Unauthorized",
            FORBIDDEN => "Forbidden",
            UNKNOWN_ATTRIBUTE => "Unknown Attribute",
            ALLOCATION_MISMATCH => "Allocation Mismatch",
            STALE_NONCE => "Stale Nonce",
            ADDRESS_FAMILY_NOT_SUPPORTED => "Address Family not Supported",
            WRONG_CREDENTIALS => "Wrong Credentials",
            UNSUPPORTED_TRANSPORT => "Unsupported Transport Protocol",
            PEER_ADDRESS_FAMILY_MISMATCH => "Peer Address Family Mismatch",
            ALLOCATION_QUOTA_REACHED => "Allocation Quota Reached",
            INSUFFICIENT_CAPACITY => "Insufficient Capacity",
            _ => "Server Error",
        }
    }
}

/// Address family codes in address attributes and REQUESTED-ADDRESS-FAMILY.
pub const FAMILY_IPV4: u8 = 0x01;
pub const FAMILY_IPV6: u8 = 0x02;

/// The 16-bit message type for a method and class (RFC 8489 section 5).
pub fn message_type(method: u16, class: Class) -> u16 {
    let c: u16 = match class {
        Class::Request => 0b00,
        Class::Indication => 0b01,
        Class::Success => 0b10,
        Class::Error => 0b11,
    };
    (method & 0x000F)
        | ((method & 0x0070) << 1)
        | ((method & 0x0F80) << 2)
        | ((c & 0b01) << 4)
        | ((c & 0b10) << 7)
}

/// Splits a message type into method and class.
pub fn split_message_type(ty: u16) -> (u16, Class) {
    let method = (ty & 0x000F) | ((ty >> 1) & 0x0070) | ((ty >> 2) & 0x0F80);
    let class = match ((ty >> 4) & 0b01) | ((ty >> 7) & 0b10) {
        0b00 => Class::Request,
        0b01 => Class::Indication,
        0b10 => Class::Success,
        _ => Class::Error,
    };
    (method, class)
}

/// Whether a datagram looks like STUN (first two bits zero and the cookie),
/// the cheap test used to demultiplex STUN from ChannelData and WireGuard.
pub fn is_stun(bytes: &[u8]) -> bool {
    bytes.len() >= HEADER_LEN && bytes[0] & 0xC0 == 0 && bytes[4..8] == MAGIC_COOKIE.to_be_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_types_match_the_rfc_values() {
        assert_eq!(message_type(method::BINDING, Class::Request), 0x0001);
        assert_eq!(message_type(method::BINDING, Class::Success), 0x0101);
        assert_eq!(message_type(method::BINDING, Class::Error), 0x0111);
        assert_eq!(message_type(method::ALLOCATE, Class::Request), 0x0003);
        assert_eq!(message_type(method::ALLOCATE, Class::Error), 0x0113);
        assert_eq!(message_type(method::SEND, Class::Indication), 0x0016);
        assert_eq!(message_type(method::DATA, Class::Indication), 0x0017);
        assert_eq!(message_type(method::CHANNEL_BIND, Class::Success), 0x0109);
        for method in 0..0x1000 {
            for class in [
                Class::Request,
                Class::Indication,
                Class::Success,
                Class::Error,
            ] {
                assert_eq!(
                    split_message_type(message_type(method, class)),
                    (method, class)
                );
            }
        }
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod wire_tests;
