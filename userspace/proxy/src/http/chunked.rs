//! Streaming decoder for the chunked transfer coding (RFC 9112 7.1). Owns: chunk-size,
//! chunk-extension and trailer syntax. Must not: buffer body bytes (data is returned as ranges
//! of the caller's input) or allocate.
//!
//! Chunk extensions are validated (`;name[=token|quoted-string]`, BWS only where the grammar
//! has it) and then discarded. Trailer fields are validated and discarded (RFC 9110 6.5.1 lets
//! a recipient that removes the chunked coding drop them); the caller ends its re-chunked
//! body with a bare [`crate::http::LAST_CHUNK`].

use std::ops::Range;

use super::ChunkError;
use super::syntax::{is_field_vchar, is_ows, is_tchar};

/// Longest chunk-size line (size digits + extensions) accepted.
pub const MAX_CHUNK_LINE_BYTES: u32 = 4096;
/// Largest trailer section accepted (all field lines, excluding the final CRLF).
pub const MAX_TRAILER_BYTES: u32 = 16 * 1024;
/// 16 hex digits fill a u64.
const MAX_SIZE_DIGITS: u8 = 16;

/// What one [`ChunkedDecoder::decode`] call produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChunkEvent {
    /// Body bytes: this range of the input passed to `decode`.
    Data(Range<usize>),
    /// All input was consumed (framing only); call again with more bytes.
    NeedMore,
    /// The body is complete (last chunk, trailers and final CRLF consumed). Bytes after
    /// `consumed` belong to the next message.
    End,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum State {
    #[default]
    SizeStart,
    Size,
    SizeWs,
    ExtBeforeName,
    ExtName,
    ExtNameWs,
    ExtBeforeValue,
    ExtValue,
    ExtQuoted,
    ExtQuotedEscape,
    ExtAfterValue,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    TrailerName,
    TrailerValue,
    TrailerLf,
    FinalLf,
    Done,
}

impl State {
    fn in_size_line(self) -> bool {
        use State::*;
        matches!(
            self,
            SizeStart
                | Size
                | SizeWs
                | ExtBeforeName
                | ExtName
                | ExtNameWs
                | ExtBeforeValue
                | ExtValue
                | ExtQuoted
                | ExtQuotedEscape
                | ExtAfterValue
                | SizeLf
        )
    }
}

/// Incremental chunked-body decoder; one per body, `reset` to reuse.
#[derive(Clone, Debug, Default)]
pub struct ChunkedDecoder {
    state: State,
    size: u64,
    digits: u8,
    remaining: u64,
    line_len: u32,
    trailer_len: u32,
}

impl ChunkedDecoder {
    /// A decoder at the start of a body.
    pub fn new() -> Self {
        Self::default()
    }

    /// Start a new body.
    pub fn reset(&mut self) {
        *self = Self::default();
    }

    /// Whether the final CRLF has been consumed.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decode from `input`. Returns how many bytes of `input` were consumed (always
    /// `<= input.len()`) and an event. Loop: handle the event, drop the consumed bytes, call
    /// again with the rest until [`ChunkEvent::NeedMore`] (read more) or [`ChunkEvent::End`].
    /// A [`ChunkEvent::Data`] range always ends at `consumed`.
    pub fn decode(&mut self, input: &[u8]) -> Result<(usize, ChunkEvent), ChunkError> {
        let mut i = 0;
        loop {
            match self.state {
                State::Done => return Ok((i, ChunkEvent::End)),
                State::Data => {
                    let avail = (input.len() - i) as u64;
                    if avail == 0 {
                        return Ok((i, ChunkEvent::NeedMore));
                    }
                    let n = self.remaining.min(avail);
                    self.remaining -= n;
                    if self.remaining == 0 {
                        self.state = State::DataCr;
                    }
                    // n <= avail, which came from a usize.
                    let end = i + n as usize;
                    return Ok((end, ChunkEvent::Data(i..end)));
                }
                _ => {
                    let Some(&b) = input.get(i) else {
                        return Ok((i, ChunkEvent::NeedMore));
                    };
                    i += 1;
                    self.step(b)?;
                }
            }
        }
    }

    /// Advance the framing state machine by one byte.
    fn step(&mut self, b: u8) -> Result<(), ChunkError> {
        use State::*;
        if self.state.in_size_line() {
            self.line_len += 1;
            if self.line_len > MAX_CHUNK_LINE_BYTES {
                return Err(ChunkError::ExtensionTooLong);
            }
        } else if matches!(self.state, TrailerStart | TrailerName | TrailerValue | TrailerLf) {
            self.trailer_len += 1;
            if self.trailer_len > MAX_TRAILER_BYTES {
                return Err(ChunkError::TrailersTooLarge);
            }
        }
        let ext = ChunkError::InvalidExtension;
        self.state = match (self.state, b) {
            (SizeStart, _) => {
                let d = hex(b).ok_or(ChunkError::InvalidChunkSize)?;
                self.size = d;
                self.digits = 1;
                Size
            }
            (Size, _) if b.is_ascii_hexdigit() => {
                self.digits += 1;
                if self.digits > MAX_SIZE_DIGITS {
                    return Err(ChunkError::ChunkSizeTooLong);
                }
                self.size = (self.size << 4) | hex(b).unwrap_or(0);
                Size
            }
            (Size, b'\r') => SizeLf,
            (Size, b';') => ExtBeforeName,
            (Size, _) if is_ows(b) => SizeWs,
            (Size, _) => return Err(ChunkError::InvalidChunkSize),
            // BWS after the size only when an extension follows.
            (SizeWs, _) if is_ows(b) => SizeWs,
            (SizeWs, b';') => ExtBeforeName,
            (SizeWs, _) => return Err(ChunkError::InvalidChunkSize),
            (ExtBeforeName, _) if is_ows(b) => ExtBeforeName,
            (ExtBeforeName | ExtName, _) if is_tchar(b) => ExtName,
            (ExtName, b'=') | (ExtNameWs, b'=') => ExtBeforeValue,
            (ExtName | ExtNameWs | ExtValue | ExtAfterValue, b';') => ExtBeforeName,
            (ExtName | ExtValue | ExtAfterValue, b'\r') => SizeLf,
            (ExtName | ExtNameWs, _) if is_ows(b) => ExtNameWs,
            (ExtBeforeValue, _) if is_ows(b) => ExtBeforeValue,
            (ExtBeforeValue, b'"') => ExtQuoted,
            (ExtBeforeValue | ExtValue, _) if is_tchar(b) => ExtValue,
            (ExtQuoted, b'"') => ExtAfterValue,
            (ExtQuoted, b'\\') => ExtQuotedEscape,
            (ExtQuoted | ExtQuotedEscape, _) if is_field_vchar(b) => ExtQuoted,
            // BWS after a value only before the next ';'.
            (ExtValue | ExtAfterValue, _) if is_ows(b) => ExtAfterValue,
            (ExtBeforeName | ExtName | ExtNameWs | ExtBeforeValue, _) => return Err(ext),
            (ExtValue | ExtQuoted | ExtQuotedEscape | ExtAfterValue, _) => return Err(ext),
            (SizeLf, b'\n') => {
                self.line_len = 0;
                self.remaining = self.size;
                if self.size == 0 { TrailerStart } else { Data }
            }
            (DataCr, b'\r') => DataLf,
            (DataLf, b'\n') => SizeStart,
            (TrailerLf, b'\n') => TrailerStart,
            (FinalLf, b'\n') => Done,
            (SizeLf | DataCr | DataLf | TrailerLf | FinalLf, _) => {
                return Err(ChunkError::InvalidLineEnding);
            }
            (TrailerStart, b'\r') => FinalLf,
            (TrailerStart | TrailerName, _) if is_tchar(b) => TrailerName,
            (TrailerName, b':') => TrailerValue,
            (TrailerValue, b'\r') => TrailerLf,
            (TrailerValue, _) if is_field_vchar(b) => TrailerValue,
            (TrailerStart | TrailerName | TrailerValue, _) => {
                return Err(ChunkError::InvalidTrailer);
            }
            // Data and Done never reach step().
            (Data | Done, _) => self.state,
        };
        Ok(())
    }
}

fn hex(b: u8) -> Option<u64> {
    (b as char).to_digit(16).map(u64::from)
}
