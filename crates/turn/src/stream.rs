//! TURN over a stream (TCP, TLS: RFC 8656 section 3.1): the messages a
//! datagram would carry, back to back. A STUN message says its length in
//! its header; ChannelData too, and over a stream it is padded to a
//! multiple of four bytes (section 12.5). Both ends of Postern (the relay,
//! the devices' fallback when UDP is blocked) cut the stream here.

use crate::channel;

/// STUN's header size.
const STUN_HEADER: usize = 20;

/// Longest message either end accepts on a stream: a ChannelData or STUN
/// message carries at most 64 KiB.
pub const MAX_FRAME: usize = 4 + 65_535 + 3;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Neither STUN (first two bits 00) nor ChannelData (01): the stream
    /// is not TURN, or lost its place; it must be closed.
    #[error("the stream carries neither STUN nor ChannelData")]
    NotTurn,
}

/// The first message in `buffer`: `Ok(Some((message, taken)))` with the
/// message's bytes (without padding) and how many bytes it used up;
/// `Ok(None)` until it has fully arrived.
pub fn next_frame(buffer: &[u8]) -> Result<Option<(&[u8], usize)>, FrameError> {
    let Some(header) = buffer.get(..4) else {
        return Ok(None);
    };
    let length = usize::from(u16::from_be_bytes([header[2], header[3]]));
    let (message, taken) = match header[0] & 0xC0 {
        0x00 => (STUN_HEADER + length, STUN_HEADER + length),
        0x40 => {
            let message = channel::HEADER_LEN + length;
            (message, message + padding(message))
        }
        _ => return Err(FrameError::NotTurn),
    };
    if buffer.len() < taken {
        return Ok(None);
    }
    Ok(Some((&buffer[..message], taken)))
}

/// Zero bytes that follow a message of `length` bytes on a stream: only
/// ChannelData is padded (STUN lengths are multiples of four already).
pub fn padding(length: usize) -> usize {
    (4 - length % 4) % 4
}

/// Appends `message` to `out` as a stream carries it.
pub fn push_frame(out: &mut Vec<u8>, message: &[u8]) {
    out.extend_from_slice(message);
    if channel::is_channel_data(message) {
        out.extend(std::iter::repeat_n(0, padding(message.len())));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_cut_where_they_end_and_channel_data_skips_its_padding() {
        let mut stream = Vec::new();
        let mut stun = vec![0x00, 0x01, 0x00, 0x04, 0x21, 0x12, 0xa4, 0x42];
        stun.extend_from_slice(&[7; 12]);
        stun.extend_from_slice(&[1, 2, 3, 4]);
        push_frame(&mut stream, &stun);
        let mut data = channel::header(0x4001, 5).to_vec();
        data.extend_from_slice(b"hello");
        push_frame(&mut stream, &data);
        assert_eq!(stream.len(), 24 + 12, "9 bytes of ChannelData padded to 12");
        let (first, taken) = next_frame(&stream).unwrap().unwrap();
        assert_eq!((first, taken), (&stun[..], 24));
        let (second, taken) = next_frame(&stream[24..]).unwrap().unwrap();
        assert_eq!((second, taken), (&data[..], 12));
        // Partial messages wait.
        assert_eq!(next_frame(&stream[24..30]).unwrap(), None);
        assert_eq!(next_frame(&stream[..3]).unwrap(), None);
        assert_eq!(next_frame(&[0xC0, 0, 0, 0]), Err(FrameError::NotTurn));
    }
}
