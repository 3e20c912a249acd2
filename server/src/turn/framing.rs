//! Where one TURN message ends on a TCP or TLS stream (RFC 8656 §12.5).
//!
//! A client to server stream carries STUN messages and ChannelData messages back to back,
//! without a length prefix of its own: STUN messages say their length in their header (20
//! bytes plus the attributes' length, a multiple of 4), ChannelData messages in theirs (4 bytes
//! plus the data), and over TCP a ChannelData message is padded to a multiple of 4. The first
//! byte tells them apart (RFC 8656 §12: `0x00`–`0x3f` STUN, whose magic cookie follows;
//! `0x40`–`0x4f` ChannelData, channel numbers 0x4000–0x4fff); anything else is not TURN, and
//! the connection is closed.
//!
//! Written here because it is these few lines: the STUN and TURN crates we use (`rtc`'s) parse
//! one message from a buffer but do not split a stream.

use bytes::{Buf, BytesMut};

/// STUN header (RFC 8489 §5).
const STUN_HEADER: usize = 20;
/// ChannelData header (RFC 8656 §12.4).
const CHANNEL_HEADER: usize = 4;
const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];

enum Kind {
    Stun,
    Channel,
}

fn kind(first: u8) -> Option<Kind> {
    match first {
        0x00..=0x3f => Some(Kind::Stun),
        0x40..=0x4f => Some(Kind::Channel),
        _ => None,
    }
}

/// The stream does not carry TURN: its next byte starts neither STUN nor ChannelData.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "not a STUN or ChannelData message (first byte {first:#04x}, {offset} bytes into the stream)"
)]
pub struct NotTurn {
    pub first: u8,
    pub offset: u64,
}

/// The length of the message at the start of `buf` (padding included), once all of it is
/// there; `Ok(None)` while more bytes are needed.
pub fn message_len(buf: &[u8]) -> Result<Option<usize>, u8> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let kind = kind(first).ok_or(first)?;
    if matches!(kind, Kind::Stun) && buf.len() >= 8 && buf[4..8] != MAGIC_COOKIE {
        return Err(first);
    }
    if buf.len() < CHANNEL_HEADER {
        return Ok(None);
    }
    let declared = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
    let total = match kind {
        Kind::Stun => STUN_HEADER + declared,
        Kind::Channel => CHANNEL_HEADER + declared.next_multiple_of(4),
    };
    Ok((buf.len() >= total).then_some(total))
}

/// Splits a byte stream into TURN messages.
#[derive(Debug, Default)]
pub struct Framer {
    buf: BytesMut,
    /// Bytes taken off the stream so far (for error messages).
    consumed: u64,
}

impl Framer {
    /// Appends what was read.
    pub fn extend(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The buffer to read into directly (tokio's `read_buf`).
    pub fn buffer(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// The next whole message: a STUN message, or a ChannelData message without its padding.
    pub fn next_message(&mut self) -> Result<Option<BytesMut>, NotTurn> {
        let len = match message_len(&self.buf) {
            Ok(Some(len)) => len,
            Ok(None) => return Ok(None),
            Err(first) => {
                return Err(NotTurn {
                    first,
                    offset: self.consumed,
                })
            }
        };
        let mut msg = self.buf.split_to(len);
        self.consumed += len as u64;
        if matches!(kind(msg[0]), Some(Kind::Channel)) {
            // ChannelData: what its header declares, without the stream padding.
            let declared = usize::from(u16::from_be_bytes([msg[2], msg[3]]));
            msg.truncate(CHANNEL_HEADER + declared);
        }
        Ok(Some(msg))
    }

    /// Bytes held that are not a whole message yet.
    pub fn pending(&self) -> usize {
        self.buf.remaining()
    }
}

/// Appends `msg` to a stream: ChannelData padded to a multiple of 4 (RFC 8656 §12.5).
pub fn put(out: &mut BytesMut, msg: &[u8]) {
    out.extend_from_slice(msg);
    if msg
        .first()
        .is_some_and(|&b| matches!(kind(b), Some(Kind::Channel)))
    {
        let pad = msg.len().next_multiple_of(4) - msg.len();
        out.extend_from_slice(&[0u8; 3][..pad]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stun(len: u16) -> Vec<u8> {
        let mut m = vec![0x00, 0x01];
        m.extend_from_slice(&len.to_be_bytes());
        m.extend_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
        m.extend_from_slice(&[7; 12]);
        m.extend(std::iter::repeat_n(0xaa, len as usize));
        m
    }

    fn channel(n: u16, data: &[u8]) -> Vec<u8> {
        let mut m = n.to_be_bytes().to_vec();
        m.extend_from_slice(&(data.len() as u16).to_be_bytes());
        m.extend_from_slice(data);
        m
    }

    #[test]
    fn splits_stun_and_padded_channel_data_however_it_arrives() {
        let messages = [
            stun(8),
            channel(0x4000, b"hello"),
            channel(0x4001, b""),
            stun(0),
            channel(0x4fff, &[1; 1201]),
        ];
        let mut stream = BytesMut::new();
        for m in &messages {
            put(&mut stream, m);
        }
        assert_eq!(stream.len() % 4, 0, "everything padded to 4");
        for step in [1, 3, 7, 64, stream.len()] {
            let mut f = Framer::default();
            let mut out = Vec::new();
            for chunk in stream.chunks(step) {
                f.extend(chunk);
                while let Some(m) = f.next_message().unwrap() {
                    out.push(m.to_vec());
                }
            }
            assert_eq!(out, messages.to_vec(), "read {step} bytes at a time");
            assert_eq!(f.pending(), 0);
        }
    }

    #[test]
    fn anything_else_is_not_turn() {
        for first in [0x80u8, 0x50, 0xc0, 0x16] {
            let mut f = Framer::default();
            f.extend(&channel(0x4000, b"ok!!"));
            assert!(f.next_message().unwrap().is_some());
            // 0x16 (a TLS record) looks like STUN until its cookie is missing.
            f.extend(&[first, 3, 1, 0, 0x20, 0, 0, 0]);
            let e = f.next_message().unwrap_err();
            assert_eq!((e.first, e.offset), (first, 8), "{e}");
        }
        // The start of a STUN message: still waiting.
        assert_eq!(message_len(&[0, 1, 0, 4, 0x21]), Ok(None));
        assert_eq!(message_len(&[0x40, 0, 0, 1, 9, 0, 0, 0]), Ok(Some(8)));
    }
}
