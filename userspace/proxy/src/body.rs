//! Streaming a message body from one connection to another without holding it whole: exact
//! Content-Length copies, chunked bodies decoded and re-framed (chunked or raw), and
//! close-delimited bodies. Owns the body framing rules on the wire. Must not: buffer more
//! than one read's worth of body, or judge whose fault a failure is beyond saying which side
//! failed, and whether by timing out ([`PumpError`]).

use crate::http::{self, BodyFraming, ChunkEvent, ChunkedDecoder};
use crate::io::{Conn, Wait};

/// Bytes read per receive while streaming a body.
pub(crate) const STREAM_READ_BYTES: usize = 64 * 1024;

/// How the destination wants the body framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OutFraming {
    /// Raw bytes (Content-Length bodies, or close-delimited to an HTTP/1.0 client).
    Raw,
    /// Re-chunked.
    Chunked,
}

/// Why a body could not be streamed completely.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PumpError {
    /// The source closed early or reset.
    Source,
    /// The source sent nothing within its wait.
    SourceTimeout,
    /// The destination failed (closed or reset).
    Destination,
    /// The destination took nothing within its wait (it stopped reading).
    DestinationTimeout,
    /// The source's chunked framing was malformed.
    Framing,
}

/// How long each side of a pump may wait.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Waits {
    /// Each read from the source.
    pub src: Wait,
    /// Each write to the destination.
    pub dst: Wait,
}

/// A body source: a connection plus its read buffer, whose bytes from `base` on are pending
/// body input (bytes before `base`, e.g. a request head still needed for retries, are kept).
pub(crate) struct Source<'a> {
    pub conn: &'a mut Conn,
    pub buf: &'a mut Vec<u8>,
    pub base: usize,
}

/// Copies a body framed as `framing` from `src` to `dst`, re-framed as `out`. On success,
/// `src.buf` holds exactly `base` bytes plus whatever followed the body (a pipelined next
/// message). Returns the number of body bytes (payload, without framing) moved. `moved`
/// counts them as they go (so a caller can tell how far a failed pump got).
pub(crate) async fn pump(
    src: Source<'_>,
    dst: &mut Conn,
    framing: BodyFraming,
    out: OutFraming,
    waits: Waits,
    obuf: &mut Vec<u8>,
    moved: &std::cell::Cell<u64>,
) -> Result<u64, PumpError> {
    let p = Pump { dst, out, waits, obuf, moved };
    match framing {
        BodyFraming::None => Ok(0),
        BodyFraming::ContentLength(n) => p.copy_length(src, n).await,
        BodyFraming::CloseDelimited => p.copy_to_eof(src).await,
        BodyFraming::Chunked => p.copy_chunked(src).await,
    }
}

/// The destination side of one pump.
struct Pump<'a> {
    dst: &'a mut Conn,
    out: OutFraming,
    waits: Waits,
    obuf: &'a mut Vec<u8>,
    moved: &'a std::cell::Cell<u64>,
}

fn dst_error(e: &std::io::Error) -> PumpError {
    if e.kind() == std::io::ErrorKind::TimedOut { PumpError::DestinationTimeout } else { PumpError::Destination }
}

/// Reads more bytes into `buf` (appending) within `wait`; `Ok(0)` is EOF.
async fn fill(conn: &mut Conn, buf: &mut Vec<u8>, wait: Wait) -> Result<usize, PumpError> {
    if buf.capacity() - buf.len() < STREAM_READ_BYTES / 4 {
        buf.reserve(STREAM_READ_BYTES);
    }
    let taken = std::mem::take(buf);
    match conn.read_by(taken, wait).await {
        None => Err(PumpError::SourceTimeout),
        Some((res, b)) => {
            *buf = b;
            res.map_err(|_| PumpError::Source)
        }
    }
}

impl Pump<'_> {
    async fn write_out(&mut self) -> Result<(), PumpError> {
        if self.obuf.is_empty() {
            return Ok(());
        }
        let (res, b) = self.dst.write_all_by(std::mem::take(self.obuf), self.waits.dst).await;
        *self.obuf = b;
        self.obuf.clear();
        res.map_err(|e| dst_error(&e))
    }

    /// Stages `data` for the destination in `out` framing.
    fn stage(&mut self, data: &[u8]) {
        self.moved.set(self.moved.get() + data.len() as u64);
        match self.out {
            OutFraming::Raw => self.obuf.extend_from_slice(data),
            OutFraming::Chunked => http::write_chunk(data, self.obuf),
        }
    }

    async fn finish(&mut self) -> Result<(), PumpError> {
        if self.out == OutFraming::Chunked {
            http::write_last_chunk(self.obuf);
        }
        self.write_out().await
    }

    async fn copy_length(mut self, src: Source<'_>, n: u64) -> Result<u64, PumpError> {
        let Source { conn, buf, base, .. } = src;
        let mut left = n;
        loop {
            let avail = (buf.len() - base) as u64;
            let take = avail.min(left) as usize;
            if take > 0 {
                if self.out == OutFraming::Raw && self.obuf.is_empty() {
                    // Zero-copy path: write straight from the read buffer.
                    self.moved.set(self.moved.get() + take as u64);
                    let wait = Some(self.waits.dst);
                    let (res, b) = self.dst.write_range_by(std::mem::take(buf), base..base + take, wait).await;
                    *buf = b;
                    res.map_err(|e| dst_error(&e))?;
                } else {
                    self.stage(&buf[base..base + take]);
                    self.write_out().await?;
                }
                buf.drain(base..base + take);
                left -= take as u64;
            }
            if left == 0 {
                if self.out == OutFraming::Chunked {
                    self.finish().await?;
                }
                return Ok(n);
            }
            if fill(conn, buf, self.waits.src).await? == 0 {
                return Err(PumpError::Source);
            }
        }
    }

    async fn copy_to_eof(mut self, src: Source<'_>) -> Result<u64, PumpError> {
        let Source { conn, buf, base, .. } = src;
        let mut total = 0u64;
        loop {
            if buf.len() > base {
                total += (buf.len() - base) as u64;
                self.stage(&buf[base..]);
                buf.truncate(base);
                self.write_out().await?;
            }
            if fill(conn, buf, self.waits.src).await? == 0 {
                self.finish().await?;
                return Ok(total);
            }
        }
    }

    async fn copy_chunked(mut self, src: Source<'_>) -> Result<u64, PumpError> {
        let Source { conn, buf, base, .. } = src;
        let mut decoder = ChunkedDecoder::new();
        let mut total = 0u64;
        loop {
            // Decode everything buffered; stage the data, keep partial framing.
            let mut pos = base;
            let ended = loop {
                let (consumed, event) = decoder.decode(&buf[pos..]).map_err(|_| PumpError::Framing)?;
                match event {
                    ChunkEvent::Data(r) => {
                        let (start, end) = (pos + r.start, pos + r.end);
                        total += (end - start) as u64;
                        self.moved.set(self.moved.get() + (end - start) as u64);
                        match self.out {
                            OutFraming::Raw => self.obuf.extend_from_slice(&buf[start..end]),
                            OutFraming::Chunked => http::write_chunk(&buf[start..end], self.obuf),
                        }
                        pos += consumed;
                    }
                    ChunkEvent::NeedMore => {
                        pos += consumed;
                        break false;
                    }
                    ChunkEvent::End => {
                        pos += consumed;
                        break true;
                    }
                }
            };
            buf.drain(base..pos);
            if ended {
                self.finish().await?;
                return Ok(total);
            }
            self.write_out().await?;
            if fill(conn, buf, self.waits.src).await? == 0 {
                return Err(PumpError::Source);
            }
        }
    }
}
