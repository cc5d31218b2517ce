//! ChannelData framing (RFC 8656 section 12.4): a 4-byte header (channel
//! number, length) before the application data. The hot path of a relay.

/// Channel numbers our client binds (RFC 8656).
pub const CHANNEL_MIN: u16 = 0x4000;
pub const CHANNEL_MAX: u16 = 0x4FFF;
/// Channel numbers the server accepts: RFC 5766 allowed up to 0x7FFF and
/// clients of that era (coturn's own among them) still use the whole range.
pub const CHANNEL_MAX_ACCEPTED: u16 = 0x7FFF;
/// ChannelData header size.
pub const HEADER_LEN: usize = 4;

/// Whether a datagram starts like ChannelData (first two bits 01).
pub fn is_channel_data(bytes: &[u8]) -> bool {
    bytes.len() >= HEADER_LEN && bytes[0] & 0xC0 == 0x40
}

/// The channel number and the application data of a ChannelData message.
/// Over UDP the datagram may carry padding after the data; it is ignored.
pub fn parse(bytes: &[u8]) -> Option<(u16, &[u8])> {
    if !is_channel_data(bytes) {
        return None;
    }
    let channel = u16::from_be_bytes([bytes[0], bytes[1]]);
    let len = usize::from(u16::from_be_bytes([bytes[2], bytes[3]]));
    if !(CHANNEL_MIN..=CHANNEL_MAX_ACCEPTED).contains(&channel) {
        return None;
    }
    let data = bytes.get(HEADER_LEN..HEADER_LEN + len)?;
    Some((channel, data))
}

/// Writes the header for `len` bytes of data on `channel`.
pub fn header(channel: u16, len: u16) -> [u8; HEADER_LEN] {
    let mut out = [0u8; HEADER_LEN];
    out[..2].copy_from_slice(&channel.to_be_bytes());
    out[2..].copy_from_slice(&len.to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_data_round_trips_and_rejects_bad_frames() {
        let mut frame = header(0x4001, 3).to_vec();
        frame.extend_from_slice(b"abc\0");
        assert_eq!(
            parse(&frame),
            Some((0x4001, &b"abc"[..])),
            "padding ignored"
        );
        assert_eq!(parse(&frame[..6]), None, "truncated data");
        assert_eq!(
            parse(&header(0x7FFF, 0)),
            Some((0x7FFF, &b""[..])),
            "RFC 5766 range"
        );
        assert_eq!(parse(&header(0x3FFF, 0)), None, "not channel data");
        assert_eq!(parse(&[0x40, 0x00]), None, "short header");
        assert_eq!(parse(&header(0x4FFF, 0)), Some((0x4FFF, &b""[..])));
    }
}
