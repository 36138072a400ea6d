//! Decoding of `Transfer-Encoding: chunked` response bodies from HTTP/1.1
//! backends. The decoder never buffers: it hands out each chunk's bytes as
//! slices of the connection's read buffer, and skips extensions and
//! trailers byte by byte, so a backend cannot make it hold more than one
//! read's worth.

use bytes::{Buf, Bytes, BytesMut};

/// Where in the chunked framing the decoder stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading hex digits of a chunk size (`digits` so far).
    Size {
        digits: u8,
    },
    /// After the size: optional whitespace and `;extension`, up to CR.
    Extension,
    /// Expecting the LF that ends a size line.
    SizeLf,
    /// Inside a chunk's data.
    Data,
    /// Expecting the CR, then the LF, after a chunk's data.
    DataCr,
    DataLf,
    /// At the start of a trailer line (or of the final empty line).
    TrailerStart,
    /// Inside a trailer field, skipped up to its CR.
    TrailerLine,
    /// Expecting the LF that ends a trailer field.
    TrailerLf,
    /// Expecting the LF of the final empty line.
    EndLf,
    Done,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("the backend's chunked body is malformed: {0}")]
pub struct Malformed(&'static str);

#[derive(Debug)]
pub struct Decoder {
    state: State,
    /// Bytes left in the current chunk.
    remaining: u64,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder {
            state: State::Size { digits: 0 },
            remaining: 0,
        }
    }
}

impl Decoder {
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Consumes framing from `buf` and returns the next piece of body data,
    /// `None` when `buf` holds no more (read more, unless done).
    /// Once done, it takes nothing more: what follows is not this body's.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, Malformed> {
        while !buf.is_empty() && self.state != State::Done {
            if self.state == State::Data {
                let n = buf
                    .len()
                    .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
                self.remaining -= n as u64;
                if self.remaining == 0 {
                    self.state = State::DataCr;
                }
                return Ok(Some(buf.split_to(n).freeze()));
            }
            let b = buf[0];
            buf.advance(1);
            self.state = match (self.state, b) {
                (State::Size { digits }, _) if b.is_ascii_hexdigit() => {
                    if digits == 16 {
                        return Err(Malformed("chunk size too large"));
                    }
                    let d = (b as char).to_digit(16).expect("a hex digit") as u64;
                    self.remaining = self.remaining << 4 | d;
                    State::Size { digits: digits + 1 }
                }
                (State::Size { digits: 0 }, _) => return Err(Malformed("chunk size expected")),
                (State::Size { .. } | State::Extension, b'\r') => State::SizeLf,
                (State::Size { .. }, b' ' | b'\t' | b';') => State::Extension,
                (State::Size { .. }, _) => return Err(Malformed("invalid chunk size")),
                (State::Extension, b'\n') => return Err(Malformed("bare LF in chunk size line")),
                (State::Extension, _) => State::Extension,
                (State::SizeLf, b'\n') if self.remaining == 0 => State::TrailerStart,
                (State::SizeLf, b'\n') => State::Data,
                (State::DataCr, b'\r') => State::DataLf,
                (State::DataLf, b'\n') => State::Size { digits: 0 },
                (State::TrailerStart, b'\r') => State::EndLf,
                (State::TrailerStart | State::TrailerLine, b'\n') => {
                    return Err(Malformed("bare LF in the trailer section"))
                }
                (State::TrailerLine, b'\r') => State::TrailerLf,
                (State::TrailerStart | State::TrailerLine, _) => State::TrailerLine,
                (State::TrailerLf, b'\n') => State::TrailerStart,
                (State::EndLf, b'\n') => {
                    self.state = State::Done;
                    return Ok(None);
                }
                _ => return Err(Malformed("CRLF expected")),
            };
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces of `step` bytes and collects the body.
    fn decode_in_steps(input: &[u8], step: usize) -> Result<(Vec<u8>, bool), Malformed> {
        let mut d = Decoder::default();
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        for piece in input.chunks(step) {
            buf.extend_from_slice(piece);
            while let Some(data) = d.decode(&mut buf)? {
                body.extend_from_slice(&data);
            }
        }
        Ok((body, d.is_done()))
    }

    #[test]
    fn decodes_whatever_the_read_boundaries() {
        let input = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nx-trailer: yes\r\n\r\n";
        for step in 1..=input.len() {
            let (body, done) = decode_in_steps(input, step).unwrap();
            assert_eq!(body, b"hello, world", "step {step}");
            assert!(done, "step {step}");
        }
    }

    #[test]
    fn stops_at_the_end_and_leaves_what_follows() {
        let mut d = Decoder::default();
        let mut buf = BytesMut::from(&b"1\r\na\r\n0\r\n\r\nHTTP/1.1 200"[..]);
        assert_eq!(d.decode(&mut buf).unwrap().unwrap(), "a");
        assert_eq!(d.decode(&mut buf).unwrap(), None);
        assert!(d.is_done());
        assert_eq!(&buf[..], b"HTTP/1.1 200");
        assert_eq!(d.decode(&mut buf).unwrap(), None, "asked again");
        assert_eq!(&buf[..], b"HTTP/1.1 200", "nothing more is taken");
    }

    #[test]
    fn refuses_malformed_framing() {
        for bad in [
            &b"x\r\n"[..],
            b"\r\n",
            b"5\r\nhelloXX",
            b"5\nhello\r\n",
            b"11111111111111111\r\n",
            b"5;ext\n",
            b"0\r\n\n",
            b"0\r\nx-t: 1\n\r\n",
        ] {
            assert!(decode_in_steps(bad, bad.len()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn an_unfinished_body_is_not_done() {
        let (body, done) = decode_in_steps(b"3\r\nabc\r\n", 4).unwrap();
        assert_eq!((body.as_slice(), done), (&b"abc"[..], false));
    }
}
