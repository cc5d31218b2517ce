//! Building STUN messages.

use std::net::SocketAddr;

use super::address::{encode_address, encode_xor_address};
use super::message::{HmacInput, fingerprint, hmac_sha1_parts, hmac_sha256_parts, padded};
use super::{Class, HEADER_LEN, MAGIC_COOKIE, TransactionId, attr, code, message_type};

/// Appends a STUN message to a buffer, attribute by attribute; the header's
/// length is kept current so integrity and fingerprint can be added last.
pub struct MessageWriter<'b> {
    buf: &'b mut Vec<u8>,
    start: usize,
    transaction: TransactionId,
}

impl<'b> MessageWriter<'b> {
    /// Starts a message at the end of `buf`.
    pub fn new(
        buf: &'b mut Vec<u8>,
        method: u16,
        class: Class,
        transaction: TransactionId,
    ) -> Self {
        let start = buf.len();
        buf.extend_from_slice(&message_type(method, class).to_be_bytes());
        buf.extend_from_slice(&[0, 0]);
        buf.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        buf.extend_from_slice(&transaction);
        MessageWriter {
            buf,
            start,
            transaction,
        }
    }

    /// Continues a message that starts at `start` in `buf`, to append more
    /// attributes (SOFTWARE, integrity, FINGERPRINT) after its body.
    pub fn resume(buf: &'b mut Vec<u8>, start: usize) -> Self {
        let mut transaction = [0u8; 12];
        if let Some(id) = buf.get(start + 8..start + HEADER_LEN) {
            transaction.copy_from_slice(id);
        }
        MessageWriter {
            buf,
            start,
            transaction,
        }
    }

    fn set_length(&mut self) {
        let length = u16::try_from(self.buf.len() - self.start - HEADER_LEN).unwrap_or(u16::MAX);
        self.buf[self.start + 2..self.start + 4].copy_from_slice(&length.to_be_bytes());
    }

    /// Adds an attribute with zero padding.
    pub fn attr(&mut self, ty: u16, value: &[u8]) -> &mut Self {
        let len = u16::try_from(value.len()).unwrap_or(u16::MAX);
        self.buf.extend_from_slice(&ty.to_be_bytes());
        self.buf.extend_from_slice(&len.to_be_bytes());
        self.buf.extend_from_slice(value);
        self.buf
            .resize(self.buf.len() + padded(value.len()) - value.len(), 0);
        self.set_length();
        self
    }

    pub fn u32(&mut self, ty: u16, value: u32) -> &mut Self {
        self.attr(ty, &value.to_be_bytes())
    }

    pub fn xor_address(&mut self, ty: u16, addr: SocketAddr) -> &mut Self {
        let mut value = [0u8; 20];
        let n = encode_xor_address(addr, &self.transaction, &mut value);
        self.attr(ty, &value[..n])
    }

    pub fn address(&mut self, ty: u16, addr: SocketAddr) -> &mut Self {
        let mut value = [0u8; 20];
        let n = encode_address(addr, &mut value);
        self.attr(ty, &value[..n])
    }

    /// ERROR-CODE with the RFC's reason phrase.
    pub fn error_code(&mut self, error: u16) -> &mut Self {
        let reason = code::reason(error);
        let mut value = Vec::with_capacity(4 + reason.len());
        // The hundreds digit fits in 3 bits and the rest in a byte for every
        // code the RFCs define (300-699).
        value.extend_from_slice(&[0, 0, (error / 100) as u8 & 0x07, (error % 100) as u8]);
        value.extend_from_slice(reason.as_bytes());
        self.attr(attr::ERROR_CODE, &value)
    }

    pub fn unknown_attributes(&mut self, types: &[u16]) -> &mut Self {
        let value: Vec<u8> = types.iter().flat_map(|t| t.to_be_bytes()).collect();
        self.attr(attr::UNKNOWN_ATTRIBUTES, &value)
    }

    fn hmac_input(&mut self, value_len: usize) -> HmacInput<'_> {
        let length = self.buf.len() - self.start - HEADER_LEN + 4 + value_len;
        let mut header = [0u8; HEADER_LEN];
        header.copy_from_slice(&self.buf[self.start..self.start + HEADER_LEN]);
        header[2..4].copy_from_slice(&u16::try_from(length).unwrap_or(u16::MAX).to_be_bytes());
        HmacInput {
            header,
            body: &self.buf[self.start + HEADER_LEN..],
        }
    }

    /// MESSAGE-INTEGRITY (HMAC-SHA1) over everything written so far.
    pub fn integrity_sha1(&mut self, key: &[u8]) -> &mut Self {
        let mac = hmac_sha1_parts(key, &self.hmac_input(20));
        self.attr(attr::MESSAGE_INTEGRITY, &mac)
    }

    /// MESSAGE-INTEGRITY-SHA256 over everything written so far.
    pub fn integrity_sha256(&mut self, key: &[u8]) -> &mut Self {
        let mac = hmac_sha256_parts(key, &self.hmac_input(32));
        self.attr(attr::MESSAGE_INTEGRITY_SHA256, &mac)
    }

    /// FINGERPRINT; must be the last attribute.
    pub fn fingerprint(&mut self) -> &mut Self {
        let length = self.buf.len() - self.start - HEADER_LEN + 8;
        self.buf[self.start + 2..self.start + 4]
            .copy_from_slice(&u16::try_from(length).unwrap_or(u16::MAX).to_be_bytes());
        let crc = fingerprint(&self.buf[self.start..]);
        self.attr(attr::FINGERPRINT, &crc.to_be_bytes())
    }
}
