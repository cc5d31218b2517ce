//! A validated, borrowed view of a STUN message.

use std::net::SocketAddr;

use hmac::{Hmac, KeyInit, Mac};
use sha1::Sha1;
use sha2::Sha256;

use super::address::{decode_address, decode_xor_address};
use super::{Class, HEADER_LEN, MAGIC_COOKIE, TransactionId, attr, split_message_type};

/// Why bytes are not a STUN message. Everything here is untrusted input, so
/// each case is an error value, never a panic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("shorter than a STUN header")]
    TooShort,
    #[error("the first two bits are not zero")]
    NotStun,
    #[error("no magic cookie")]
    NoCookie,
    #[error("the length field does not match the datagram")]
    BadLength,
    #[error("an attribute runs past the end of the message")]
    TruncatedAttribute,
    #[error("FINGERPRINT is not the last attribute")]
    FingerprintNotLast,
}

/// The outcome of checking a message's integrity with a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Integrity {
    /// No MESSAGE-INTEGRITY(-SHA256) attribute.
    Missing,
    /// MESSAGE-INTEGRITY (HMAC-SHA1) verified.
    Sha1,
    /// MESSAGE-INTEGRITY-SHA256 verified.
    Sha256,
    /// An integrity attribute is present and wrong.
    Invalid,
}

/// A STUN message whose header and attribute framing were checked.
#[derive(Clone, Copy, Debug)]
pub struct Message<'a> {
    bytes: &'a [u8],
    method: u16,
    class: Class,
    /// Offset of the MESSAGE-INTEGRITY attribute header, if present.
    integrity_sha1: Option<usize>,
    /// Offset of the MESSAGE-INTEGRITY-SHA256 attribute header, if present.
    integrity_sha256: Option<usize>,
    /// End of the attributes that count: those after an integrity attribute
    /// (except the other integrity and FINGERPRINT) must be ignored.
    counted_end: usize,
}

impl<'a> Message<'a> {
    /// Parses and validates the framing of a whole datagram.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, ParseError> {
        if bytes.len() < HEADER_LEN {
            return Err(ParseError::TooShort);
        }
        if bytes[0] & 0xC0 != 0 {
            return Err(ParseError::NotStun);
        }
        if bytes[4..8] != MAGIC_COOKIE.to_be_bytes() {
            return Err(ParseError::NoCookie);
        }
        let length = usize::from(u16::from_be_bytes([bytes[2], bytes[3]]));
        if length % 4 != 0 || HEADER_LEN + length != bytes.len() {
            return Err(ParseError::BadLength);
        }
        let (method, class) = split_message_type(u16::from_be_bytes([bytes[0], bytes[1]]));
        let mut message = Message {
            bytes,
            method,
            class,
            integrity_sha1: None,
            integrity_sha256: None,
            counted_end: bytes.len(),
        };
        let mut offset = HEADER_LEN;
        let mut after_integrity = false;
        while offset < bytes.len() {
            let (ty, value_len) = attribute_header(bytes, offset)?;
            let next = offset + 4 + padded(value_len);
            if next > bytes.len() {
                return Err(ParseError::TruncatedAttribute);
            }
            match ty {
                attr::MESSAGE_INTEGRITY if message.integrity_sha1.is_none() && !after_integrity => {
                    message.integrity_sha1 = Some(offset);
                    message.counted_end = offset;
                    after_integrity = true;
                }
                attr::MESSAGE_INTEGRITY_SHA256 if message.integrity_sha256.is_none() => {
                    message.integrity_sha256 = Some(offset);
                    if !after_integrity {
                        message.counted_end = offset;
                        after_integrity = true;
                    }
                }
                attr::FINGERPRINT if next != bytes.len() => {
                    return Err(ParseError::FingerprintNotLast);
                }
                _ => {}
            }
            offset = next;
        }
        Ok(message)
    }

    pub fn method(&self) -> u16 {
        self.method
    }

    pub fn class(&self) -> Class {
        self.class
    }

    pub fn transaction_id(&self) -> TransactionId {
        let mut id = [0u8; 12];
        id.copy_from_slice(&self.bytes[8..20]);
        id
    }

    /// The raw bytes of the message.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The attributes that count (those before any integrity attribute), as
    /// (type, value) pairs.
    pub fn attributes(&self) -> impl Iterator<Item = (u16, &'a [u8])> + 'a {
        let bytes = self.bytes;
        let end = self.counted_end;
        let mut offset = HEADER_LEN;
        std::iter::from_fn(move || {
            if offset >= end {
                return None;
            }
            // Framing was validated by `parse`.
            let (ty, len) = attribute_header(bytes, offset).ok()?;
            let value = bytes.get(offset + 4..offset + 4 + len)?;
            offset += 4 + padded(len);
            Some((ty, value))
        })
    }

    /// The first counted attribute of a type.
    pub fn get(&self, ty: u16) -> Option<&'a [u8]> {
        self.attributes().find(|(t, _)| *t == ty).map(|(_, v)| v)
    }

    /// A UTF-8 attribute (USERNAME, REALM, NONCE, SOFTWARE).
    pub fn get_str(&self, ty: u16) -> Option<&'a str> {
        std::str::from_utf8(self.get(ty)?).ok()
    }

    /// A 32-bit attribute (LIFETIME).
    pub fn get_u32(&self, ty: u16) -> Option<u32> {
        let value: [u8; 4] = self.get(ty)?.try_into().ok()?;
        Some(u32::from_be_bytes(value))
    }

    /// An XOR address attribute; `Some(None)` when present but malformed.
    pub fn get_xor_address(&self, ty: u16) -> Option<Option<SocketAddr>> {
        let tid = self.transaction_id();
        self.get(ty).map(|value| decode_xor_address(value, &tid))
    }

    /// Every counted XOR address attribute of a type (CreatePermission may
    /// carry several XOR-PEER-ADDRESS).
    pub fn xor_addresses(&self, ty: u16) -> impl Iterator<Item = Option<SocketAddr>> + 'a {
        let tid = self.transaction_id();
        self.attributes()
            .filter(move |(t, _)| *t == ty)
            .map(move |(_, value)| decode_xor_address(value, &tid))
    }

    /// A plain address attribute (MAPPED-ADDRESS).
    pub fn get_address(&self, ty: u16) -> Option<SocketAddr> {
        decode_address(self.get(ty)?)
    }

    /// ERROR-CODE as (code, reason).
    pub fn error_code(&self) -> Option<(u16, &'a str)> {
        let value = self.get(attr::ERROR_CODE)?;
        if value.len() < 4 {
            return None;
        }
        let code = u16::from(value[2] & 0x07) * 100 + u16::from(value[3]);
        Some((code, std::str::from_utf8(&value[4..]).unwrap_or("")))
    }

    /// Comprehension-required attributes not in `known` (for a 420 answer).
    pub fn unknown_required(&self, known: &[u16]) -> Vec<u16> {
        let mut unknown: Vec<u16> = self
            .attributes()
            .map(|(ty, _)| ty)
            .filter(|ty| attr::is_comprehension_required(*ty) && !known.contains(ty))
            .collect();
        unknown.dedup();
        unknown
    }

    /// Whether the message carries an integrity attribute at all.
    pub fn has_integrity(&self) -> bool {
        self.integrity_sha1.is_some() || self.integrity_sha256.is_some()
    }

    /// Checks MESSAGE-INTEGRITY-SHA256 if present (the stronger one),
    /// otherwise MESSAGE-INTEGRITY, with the long-term or short-term key.
    pub fn verify_integrity(&self, key: &[u8]) -> Integrity {
        if let Some(offset) = self.integrity_sha256 {
            return match self
                .hmac_input(offset, 32)
                .zip(self.bytes.get(offset + 4..offset + 36))
            {
                Some((ok_input, expected)) if hmac_sha256_parts(key, &ok_input) == expected => {
                    Integrity::Sha256
                }
                _ => Integrity::Invalid,
            };
        }
        if let Some(offset) = self.integrity_sha1 {
            return match self
                .hmac_input(offset, 20)
                .zip(self.bytes.get(offset + 4..offset + 24))
            {
                Some((input, expected)) if hmac_sha1_parts(key, &input) == expected => {
                    Integrity::Sha1
                }
                _ => Integrity::Invalid,
            };
        }
        Integrity::Missing
    }

    /// The pieces the HMAC covers: the header with its length set as if the
    /// integrity attribute (of `value_len` bytes) ended the message, then the
    /// attributes before it.
    fn hmac_input(&self, offset: usize, value_len: usize) -> Option<HmacInput<'a>> {
        let value_len_in_attr = attribute_header(self.bytes, offset).ok()?.1;
        if value_len_in_attr != value_len {
            return None;
        }
        let length = u16::try_from(offset + 4 + value_len - HEADER_LEN).ok()?;
        let mut header = [0u8; HEADER_LEN];
        header.copy_from_slice(&self.bytes[..HEADER_LEN]);
        header[2..4].copy_from_slice(&length.to_be_bytes());
        Some(HmacInput {
            header,
            body: &self.bytes[HEADER_LEN..offset],
        })
    }

    /// Checks FINGERPRINT if present; `None` when absent.
    pub fn verify_fingerprint(&self) -> Option<bool> {
        let offset = self.bytes.len().checked_sub(8)?;
        if offset < HEADER_LEN
            || attribute_header(self.bytes, offset).ok()? != (attr::FINGERPRINT, 4)
        {
            return None;
        }
        let expected = u32::from_be_bytes(self.bytes[offset + 4..offset + 8].try_into().ok()?);
        Some(fingerprint(&self.bytes[..offset]) == expected)
    }
}

pub(crate) struct HmacInput<'a> {
    pub header: [u8; HEADER_LEN],
    pub body: &'a [u8],
}

pub(crate) fn hmac_sha1_parts(key: &[u8], input: &HmacInput<'_>) -> [u8; 20] {
    let mut mac = <Hmac<Sha1> as KeyInit>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(&input.header);
    mac.update(input.body);
    mac.finalize().into_bytes().into()
}

pub(crate) fn hmac_sha256_parts(key: &[u8], input: &HmacInput<'_>) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(&input.header);
    mac.update(input.body);
    mac.finalize().into_bytes().into()
}

/// CRC-32 of the message before FINGERPRINT, XORed with 0x5354554e. The
/// length field must already count the FINGERPRINT attribute.
pub(crate) fn fingerprint(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes) ^ 0x5354_554E
}

fn attribute_header(bytes: &[u8], offset: usize) -> Result<(u16, usize), ParseError> {
    let header = bytes
        .get(offset..offset + 4)
        .ok_or(ParseError::TruncatedAttribute)?;
    Ok((
        u16::from_be_bytes([header[0], header[1]]),
        usize::from(u16::from_be_bytes([header[2], header[3]])),
    ))
}

pub(crate) fn padded(len: usize) -> usize {
    (len + 3) & !3
}
