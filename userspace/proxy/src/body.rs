//! Streaming a message body from one connection to another without holding it whole: exact
//! Content-Length copies, chunked bodies decoded and re-framed (chunked or raw), and
//! close-delimited bodies. Owns the body framing rules on the wire. Must not: buffer more
//! than one read's worth of body, or judge whose fault a failure is beyond saying which side
//! failed ([`PumpError`]).

use std::time::{Duration, Instant};

use crate::http::{self, BodyFraming, ChunkEvent, ChunkedDecoder};
use crate::io::{Conn, until};

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
    /// The source closed early, reset, or stalled past the idle timeout.
    Source,
    /// The destination failed (closed or reset).
    Destination,
    /// The source's chunked framing was malformed.
    Framing,
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
/// message). Returns the number of body bytes (payload, without framing) moved. Every read
/// waits at most `idle`.
pub(crate) async fn pump(
    src: Source<'_>,
    dst: &mut Conn,
    framing: BodyFraming,
    out: OutFraming,
    idle: Duration,
    obuf: &mut Vec<u8>,
) -> Result<u64, PumpError> {
    match framing {
        BodyFraming::None => Ok(0),
        BodyFraming::ContentLength(n) => copy_length(src, dst, n, out, idle, obuf).await,
        BodyFraming::CloseDelimited => copy_to_eof(src, dst, out, idle, obuf).await,
        BodyFraming::Chunked => copy_chunked(src, dst, out, idle, obuf).await,
    }
}

/// Reads more bytes into `buf` (appending); `Ok(0)` is EOF.
async fn fill(conn: &mut Conn, buf: &mut Vec<u8>, idle: Duration) -> Result<usize, PumpError> {
    if buf.capacity() - buf.len() < STREAM_READ_BYTES / 4 {
        buf.reserve(STREAM_READ_BYTES);
    }
    let taken = std::mem::take(buf);
    match until(Instant::now() + idle, conn.read(taken)).await {
        None => Err(PumpError::Source),
        Some((res, b)) => {
            *buf = b;
            res.map_err(|_| PumpError::Source)
        }
    }
}

async fn write_out(dst: &mut Conn, obuf: &mut Vec<u8>) -> Result<(), PumpError> {
    if obuf.is_empty() {
        return Ok(());
    }
    let (res, b) = dst.write_all(std::mem::take(obuf)).await;
    *obuf = b;
    obuf.clear();
    res.map_err(|_| PumpError::Destination)
}

/// Stages `data` for the destination in `out` framing.
fn stage(data: &[u8], out: OutFraming, obuf: &mut Vec<u8>) {
    match out {
        OutFraming::Raw => obuf.extend_from_slice(data),
        OutFraming::Chunked => http::write_chunk(data, obuf),
    }
}

async fn finish(dst: &mut Conn, out: OutFraming, obuf: &mut Vec<u8>) -> Result<(), PumpError> {
    if out == OutFraming::Chunked {
        http::write_last_chunk(obuf);
    }
    write_out(dst, obuf).await
}

async fn copy_length(
    src: Source<'_>,
    dst: &mut Conn,
    n: u64,
    out: OutFraming,
    idle: Duration,
    obuf: &mut Vec<u8>,
) -> Result<u64, PumpError> {
    let Source { conn, buf, base, .. } = src;
    let mut left = n;
    loop {
        let avail = (buf.len() - base) as u64;
        let take = avail.min(left) as usize;
        if take > 0 {
            if out == OutFraming::Raw && obuf.is_empty() {
                // Zero-copy path: write straight from the read buffer.
                let (res, b) = dst.write_range(std::mem::take(buf), base..base + take).await;
                *buf = b;
                res.map_err(|_| PumpError::Destination)?;
            } else {
                stage(&buf[base..base + take], out, obuf);
                write_out(dst, obuf).await?;
            }
            buf.drain(base..base + take);
            left -= take as u64;
        }
        if left == 0 {
            if out == OutFraming::Chunked {
                finish(dst, out, obuf).await?;
            }
            return Ok(n);
        }
        if fill(conn, buf, idle).await? == 0 {
            return Err(PumpError::Source);
        }
    }
}

async fn copy_to_eof(
    src: Source<'_>,
    dst: &mut Conn,
    out: OutFraming,
    idle: Duration,
    obuf: &mut Vec<u8>,
) -> Result<u64, PumpError> {
    let Source { conn, buf, base, .. } = src;
    let mut total = 0u64;
    loop {
        if buf.len() > base {
            total += (buf.len() - base) as u64;
            stage(&buf[base..], out, obuf);
            buf.truncate(base);
            write_out(dst, obuf).await?;
        }
        if fill(conn, buf, idle).await? == 0 {
            finish(dst, out, obuf).await?;
            return Ok(total);
        }
    }
}

async fn copy_chunked(
    src: Source<'_>,
    dst: &mut Conn,
    out: OutFraming,
    idle: Duration,
    obuf: &mut Vec<u8>,
) -> Result<u64, PumpError> {
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
                    let data = &buf[pos + r.start..pos + r.end];
                    total += data.len() as u64;
                    stage(data, out, obuf);
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
            finish(dst, out, obuf).await?;
            return Ok(total);
        }
        write_out(dst, obuf).await?;
        if fill(conn, buf, idle).await? == 0 {
            return Err(PumpError::Source);
        }
    }
}
