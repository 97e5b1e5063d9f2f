//! The frame-rate guard beneath an HTTP/2 client connection. The h2 server answers every PING
//! and SETTINGS, and reads RST_STREAM, PRIORITY, empty DATA and WINDOW_UPDATE frames as fast
//! as a client can write them; none of them moves a request forward, so a flood of them is a
//! worker's time spent on one client (CVE-2019-9512, -9515, -9518 and their kin). [`Guarded`]
//! wraps the connection's socket below h2: it finds the frame boundaries in the bytes as they
//! pass, in both directions (9-byte headers, payload lengths, whatever the read and write
//! chunking), and charges each incoming frame that does no work to a token bucket. When the
//! bucket is empty the read fails: h2 sees an I/O error, the connection closes, and the
//! flooder alone pays ([`Verdict`] tells the connection why, for the metric).
//!
//! What costs (see [`inbound_cost`]): SETTINGS, GOAWAY and DATA carrying nothing without
//! END_STREAM take a token each. PING, WINDOW_UPDATE, PRIORITY and unknown extension frames are
//! paid first from credit the connection earns as weir sends it response frames (HEADERS,
//! DATA with data): real clients send window updates as they consume data and BDP-estimating
//! clients (gRPC) a PING per burst of data received, so those frames are plausible in
//! proportion to what weir sent; beyond the credit they take tokens too. An RST_STREAM is free
//! for each stream the client opened (a cancelled call, a deadline: up to the stream limit
//! saved up), a token beyond. Streams themselves (HEADERS, CONTINUATION) are bounded by h2
//! (concurrent streams, header list size, the CONTINUATION count, streams reset before they
//! were accepted) and by h2down (streams still running after their reset), not here.
//!
//! The numbers ([`BURST`] tokens at once, [`RATE_PER_SEC`] a second after that,
//! [`CREDIT_PER_FRAME`] per response frame, a reset per stream opened) leave real clients far
//! below the limit: grpcio, grpc-go, grpc-js, curl, nghttp and h2load send a handful of
//! SETTINGS and PRIORITY frames per connection, window updates and BDP pings with the data they
//! receive, and one RST_STREAM per call they cancel; a flood of work-free frames at wire speed
//! still ends within a millisecond or so.
//!
//! Must not: allocate (its state is a few words per connection, the shared [`Verdict`] made
//! once by the caller), buffer (it looks at bytes as they pass), read the clock for frames that
//! cost nothing, or change a byte.

use std::cell::Cell;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use weir_core::stats::Http2Close;

use crate::io::PollIo;

/// Work-free frames a connection may send at once (a full bucket)…
pub(crate) const BURST: u32 = 1000;
/// …and a second after that, sustained.
pub(crate) const RATE_PER_SEC: u32 = 250;
/// Credit each response frame weir sends (HEADERS, DATA with data) earns for the client's
/// PING, WINDOW_UPDATE and PRIORITY frames: a window update for the stream and one for the
/// connection, a BDP ping, and one to spare.
pub(crate) const CREDIT_PER_FRAME: u32 = 4;
/// Credit saved up at most.
pub(crate) const CREDIT_MAX: u32 = 16 * 1024;

/// The length of a frame header (RFC 9113 4.1).
const HEADER_LEN: usize = 9;
/// The client connection preface precedes the client's first frame.
const PREFACE_LEN: usize = 24;

// Frame types (RFC 9113 6).
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const PRIORITY: u8 = 0x2;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PUSH_PROMISE: u8 = 0x5;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;

// Flags.
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const PADDED: u8 = 0x8;

/// One frame's header, as the tracker saw it pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Frame {
    pub kind: u8,
    pub flags: u8,
    /// Payload length.
    pub len: u32,
    pub stream: u32,
    /// DATA: payload bytes that are data (padding and its length byte excluded); 0 otherwise.
    pub data: u32,
}

/// Finds frame boundaries in one direction of a connection, fed its bytes in any pieces.
#[derive(Debug)]
pub(crate) struct FrameTracker {
    /// Bytes to pass before the next frame header: the preface, or the rest of a payload.
    skip: u64,
    head: [u8; HEADER_LEN],
    have: usize,
    /// A padded DATA frame whose pad-length byte (its payload's first) is still to come.
    awaiting_pad: Option<Frame>,
}

impl FrameTracker {
    /// A tracker for what a client sends: the connection preface, then frames.
    pub(crate) fn client_to_server() -> FrameTracker {
        FrameTracker { skip: PREFACE_LEN as u64, ..FrameTracker::server_to_client() }
    }

    /// A tracker for what the server sends: frames from the first byte.
    pub(crate) fn server_to_client() -> FrameTracker {
        FrameTracker { skip: 0, head: [0; HEADER_LEN], have: 0, awaiting_pad: None }
    }

    /// Passes `bytes` (the next ones of the stream), calling `on_frame` for each frame whose
    /// header (and, for padded DATA, pad length) completes in them.
    pub(crate) fn feed(&mut self, mut bytes: &[u8], mut on_frame: impl FnMut(Frame)) {
        while !bytes.is_empty() {
            if let Some(mut f) = self.awaiting_pad.take() {
                let pad = u32::from(bytes[0]);
                f.data = f.len.saturating_sub(1 + pad);
                on_frame(f);
                self.skip = u64::from(f.len - 1);
                bytes = &bytes[1..];
                continue;
            }
            if self.skip > 0 {
                let n = (self.skip.min(bytes.len() as u64)) as usize;
                self.skip -= n as u64;
                bytes = &bytes[n..];
                continue;
            }
            let n = (HEADER_LEN - self.have).min(bytes.len());
            self.head[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have < HEADER_LEN {
                break;
            }
            self.have = 0;
            let h = &self.head;
            let len = u32::from_be_bytes([0, h[0], h[1], h[2]]);
            let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
            let f = Frame { kind: h[3], flags: h[4], len, stream, data: 0 };
            if f.kind == DATA && f.flags & PADDED != 0 && len > 0 {
                self.awaiting_pad = Some(f);
            } else {
                on_frame(if f.kind == DATA { Frame { data: len, ..f } } else { f });
                self.skip = u64::from(len);
            }
        }
    }
}

/// What an incoming frame costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cost {
    /// It moves a request forward, or h2 bounds it itself.
    Free,
    /// Plausible in proportion to what weir sent: paid from credit, else a token.
    Credit,
    /// A stream reset: free once for each stream the client opened, else a token.
    Reset,
    /// A token.
    Token,
}

/// What the client's frame `f` costs.
pub(crate) fn inbound_cost(f: &Frame) -> Cost {
    match f.kind {
        DATA if f.data == 0 && f.flags & END_STREAM == 0 => Cost::Token,
        DATA | HEADERS | CONTINUATION | PUSH_PROMISE => Cost::Free,
        SETTINGS if f.flags & ACK != 0 => Cost::Free,
        SETTINGS | GOAWAY => Cost::Token,
        RST_STREAM => Cost::Reset,
        PING | WINDOW_UPDATE | PRIORITY => Cost::Credit,
        _ => Cost::Credit,
    }
}

/// Whether weir's frame `f` earns the client credit.
fn earns(f: &Frame) -> bool {
    f.kind == HEADERS || (f.kind == DATA && f.data > 0)
}

/// A token bucket of [`BURST`] tokens refilled at [`RATE_PER_SEC`], kept as the time at which
/// it would be full again (no counter to refill, one clock reading per charged frame).
#[derive(Debug, Default)]
pub(crate) struct Bucket {
    /// When the bucket is full again; `None` (or a past instant): full now.
    full_at: Option<Instant>,
}

/// The time one token takes to come back.
const TOKEN_TIME: Duration = Duration::from_nanos(1_000_000_000 / RATE_PER_SEC as u64);

impl Bucket {
    /// Takes a token at `now`; false when the bucket is empty.
    pub(crate) fn take(&mut self, now: Instant) -> bool {
        let full_at = self.full_at.map_or(now, |t| t.max(now)) + TOKEN_TIME;
        if full_at > now + TOKEN_TIME * BURST {
            return false;
        }
        self.full_at = Some(full_at);
        true
    }
}

/// A connection's budget: the bucket, the credit earned, the resets owed.
#[derive(Debug)]
pub(crate) struct Budget {
    bucket: Bucket,
    credit: u32,
    /// Streams the client opened and may still reset for free…
    resets: u32,
    /// …at most this many (the connection's stream limit).
    resets_max: u32,
}

impl Budget {
    /// The budget of a connection allowing `max_streams` concurrent streams.
    pub(crate) fn new(max_streams: u32) -> Budget {
        Budget { bucket: Bucket::default(), credit: 0, resets: 0, resets_max: max_streams }
    }

    /// Charges the client's frame `f`; false when it is over the limit. `now` is read once, and
    /// only when a token is needed.
    pub(crate) fn charge(&mut self, f: &Frame, now: &mut impl FnMut() -> Instant) -> bool {
        if f.kind == HEADERS {
            self.resets = (self.resets + 1).min(self.resets_max);
        }
        match inbound_cost(f) {
            Cost::Free => true,
            Cost::Credit if self.credit > 0 => {
                self.credit -= 1;
                true
            }
            Cost::Reset if self.resets > 0 => {
                self.resets -= 1;
                true
            }
            Cost::Credit | Cost::Reset | Cost::Token => self.bucket.take(now()),
        }
    }

    /// Credits weir's frame `f`.
    pub(crate) fn earn(&mut self, f: &Frame) {
        if earns(f) {
            self.credit = (self.credit + CREDIT_PER_FRAME).min(CREDIT_MAX);
        }
    }
}

/// Whether the guard closed the connection: shared between [`Guarded`] (inside h2) and the
/// connection's loop, which counts the close.
#[derive(Debug, Clone, Default)]
pub(crate) struct Verdict(Rc<Cell<bool>>);

impl Verdict {
    /// Whether the client flooded the connection.
    pub(crate) fn flooded(&self) -> bool {
        self.0.get()
    }
}

/// Why a connection that ended with `error` was closed for the client's behaviour, if it was:
/// the guard's verdict first, then the GOAWAY h2 sent.
pub(crate) fn close_reason(error: &h2::Error, verdict: &Verdict) -> Option<Http2Close> {
    if verdict.flooded() {
        return Some(Http2Close::ControlFlood);
    }
    if !(error.is_go_away() && error.is_library()) {
        return None; // the client's own GOAWAY, or its socket failing
    }
    match error.reason() {
        Some(h2::Reason::NO_ERROR) | None => None,
        Some(h2::Reason::ENHANCE_YOUR_CALM) => Some(Http2Close::EnhanceYourCalm),
        Some(_) => Some(Http2Close::ProtocolError),
    }
}

/// Whether a stream just accepted is to be served, with `running` streams of the connection
/// still being served and `max_streams` its concurrency limit. A stream the client reset
/// before weir took it (rapid reset: HEADERS and RST_STREAM read together) is dropped, never
/// forwarded. A reset frees the client's concurrency slot at once while weir's work for that
/// stream goes on until its attempt ends, so a client resetting streams as soon as weir took
/// them could keep any number of them running: beyond twice the limit, a new stream is
/// refused (`REFUSED_STREAM`: the client knows it was not processed and may retry it).
pub(crate) fn admit<B: bytes::Buf>(
    respond: &mut h2::server::SendResponse<B>,
    running: usize,
    max_streams: u32,
) -> bool {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    if respond.poll_reset(&mut cx).is_ready() {
        return false;
    }
    if running >= 2 * max_streams as usize {
        respond.send_reset(h2::Reason::REFUSED_STREAM);
        return false;
    }
    true
}

/// An HTTP/2 client connection's socket with the guard on its way: see the module doc.
#[derive(Debug)]
pub(crate) struct Guarded {
    io: PollIo,
    inbound: FrameTracker,
    outbound: FrameTracker,
    budget: Budget,
    verdict: Verdict,
}

impl Guarded {
    /// Guards `io` (which starts with the client's preface) of a connection allowing
    /// `max_streams` concurrent streams; `verdict` learns if it trips.
    pub(crate) fn new(io: PollIo, max_streams: u32, verdict: Verdict) -> Guarded {
        Guarded {
            io,
            inbound: FrameTracker::client_to_server(),
            outbound: FrameTracker::server_to_client(),
            budget: Budget::new(max_streams),
            verdict,
        }
    }
}

fn flood() -> io::Error {
    io::Error::other("HTTP/2 frames that do no work beyond the connection's budget")
}

impl tokio::io::AsyncRead for Guarded {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut tokio::io::ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.verdict.flooded() {
            return Poll::Ready(Err(flood()));
        }
        let before = buf.filled().len();
        std::task::ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
        let (budget, mut within) = (&mut this.budget, true);
        let mut clock = None;
        let mut now = || *clock.get_or_insert_with(Instant::now);
        this.inbound.feed(&buf.filled()[before..], |f| within &= budget.charge(&f, &mut now));
        if !within {
            this.verdict.0.set(true);
            return Poll::Ready(Err(flood()));
        }
        Poll::Ready(Ok(()))
    }
}

impl tokio::io::AsyncWrite for Guarded {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = std::task::ready!(Pin::new(&mut this.io).poll_write(cx, data))?;
        let budget = &mut this.budget;
        this.outbound.feed(&data[..n], |f| budget.earn(&f));
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame's bytes: header and `payload`.
    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut out = len.to_be_bytes()[1..].to_vec();
        out.extend_from_slice(&[kind, flags]);
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    /// A client's byte stream: the preface, then a mix of frames (padded DATA included), and
    /// the frames the tracker must report.
    fn client_stream() -> (Vec<u8>, Vec<Frame>) {
        let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        let mut want = Vec::new();
        let mut push = |kind, flags, stream, payload: &[u8], data| {
            bytes.extend(frame(kind, flags, stream, payload));
            want.push(Frame { kind, flags, len: payload.len() as u32, stream, data });
        };
        push(SETTINGS, 0, 0, &[0, 4, 0, 0, 0, 0], 0);
        push(WINDOW_UPDATE, 0, 0, &[0, 0xf, 0, 1], 0);
        push(HEADERS, 0x4, 1, &[0x82, 0x86, 0x84], 0);
        push(DATA, 0, 1, &[7; 300], 300);
        push(DATA, PADDED, 1, &[5, 1, 2, 0, 0, 0, 0, 0], 2);
        push(DATA, PADDED, 1, &[0], 0);
        push(DATA, PADDED | END_STREAM, 1, &[200; 201], 0);
        push(PING, 0, 0, &[1; 8], 0);
        push(RST_STREAM, 0, 0x8000_0003, &[0, 0, 0, 8], 0);
        push(DATA, 0, 3, &[], 0);
        push(0x42, 0, 0, &[9; 17], 0);
        push(DATA, 0, 5, &[1; 20_000], 20_000);
        (bytes, want)
    }

    fn track(bytes: &[u8], chunks: impl Iterator<Item = usize>) -> Vec<Frame> {
        let mut t = FrameTracker::client_to_server();
        let mut seen = Vec::new();
        let mut rest = bytes;
        for n in chunks {
            let n = n.min(rest.len());
            t.feed(&rest[..n], |f| seen.push(f));
            rest = &rest[n..];
            if rest.is_empty() {
                break;
            }
        }
        assert!(rest.is_empty(), "the chunks did not cover the stream");
        seen
    }

    #[test]
    fn frames_are_found_whatever_the_chunking() {
        let (bytes, mut want) = client_stream();
        want[8].stream = 3; // the reserved bit is not part of the stream id
        assert_eq!(track(&bytes, std::iter::once(bytes.len())), want, "whole");
        for size in [1, 2, 3, 8, 9, 10, 23, 24, 25, 4096] {
            assert_eq!(track(&bytes, std::iter::repeat(size)), want, "chunks of {size}");
        }
        // Arbitrary chunking: a small deterministic generator (xorshift), many seeds.
        for seed in 1..200u64 {
            let mut x = seed;
            let sizes = std::iter::from_fn(move || {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                Some((x % 40) as usize)
            });
            assert_eq!(track(&bytes, sizes), want, "seed {seed}");
        }
    }

    #[test]
    fn what_each_frame_costs() {
        let f = |kind, flags, data| Frame { kind, flags, len: data, stream: 1, data };
        assert_eq!(inbound_cost(&f(DATA, 0, 0)), Cost::Token, "empty DATA without END_STREAM");
        assert_eq!(inbound_cost(&f(DATA, END_STREAM, 0)), Cost::Free);
        assert_eq!(inbound_cost(&f(DATA, 0, 1)), Cost::Free);
        assert_eq!(inbound_cost(&f(HEADERS, 0, 0)), Cost::Free);
        assert_eq!(inbound_cost(&f(CONTINUATION, 0, 0)), Cost::Free);
        assert_eq!(inbound_cost(&f(SETTINGS, 0, 0)), Cost::Token);
        assert_eq!(inbound_cost(&f(SETTINGS, ACK, 0)), Cost::Free);
        assert_eq!(inbound_cost(&f(RST_STREAM, 0, 0)), Cost::Reset);
        assert_eq!(inbound_cost(&f(GOAWAY, 0, 0)), Cost::Token);
        assert_eq!(inbound_cost(&f(PING, 0, 0)), Cost::Credit);
        assert_eq!(inbound_cost(&f(PING, ACK, 0)), Cost::Credit);
        assert_eq!(inbound_cost(&f(WINDOW_UPDATE, 0, 0)), Cost::Credit);
        assert_eq!(inbound_cost(&f(PRIORITY, 0, 0)), Cost::Credit);
        assert_eq!(inbound_cost(&f(0x10, 0, 0)), Cost::Credit, "an unknown extension frame");
    }

    #[test]
    fn the_bucket_allows_its_burst_then_its_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::default();
        assert!((0..BURST).all(|_| b.take(t0)), "a full bucket gives its burst at once");
        assert!(!b.take(t0), "then it is empty");
        // A second later, RATE_PER_SEC tokens more, not one beyond.
        let t1 = t0 + Duration::from_secs(1);
        assert!((0..RATE_PER_SEC).all(|_| b.take(t1)));
        assert!(!b.take(t1));
        // Idle long enough, it is full again, and no fuller.
        let t2 = t1 + TOKEN_TIME * (BURST + 100);
        assert!((0..BURST).all(|_| b.take(t2)));
        assert!(!b.take(t2));
        // A steady sender at the rate is never refused.
        let mut b = Bucket::default();
        assert!((0..10 * RATE_PER_SEC).all(|i| b.take(t0 + TOKEN_TIME * i)));
    }

    #[test]
    fn response_frames_earn_credit_for_pings_and_window_updates() {
        let t0 = Instant::now();
        let mut now = || t0;
        let mut budget = Budget::new(100);
        let ping = Frame { kind: PING, flags: 0, len: 8, stream: 0, data: 0 };
        let rst = Frame { kind: RST_STREAM, flags: 0, len: 4, stream: 1, data: 0 };
        // 10 000 DATA frames sent earn 40 000 pings and window updates (up to the cap).
        for _ in 0..10_000 {
            budget.earn(&Frame { kind: DATA, flags: 0, len: 100, stream: 1, data: 100 });
            budget.earn(&Frame { kind: DATA, flags: 0, len: 0, stream: 1, data: 0 }); // earns nothing
        }
        assert!((0..CREDIT_MAX + BURST).all(|_| budget.charge(&ping, &mut now)));
        assert!(!budget.charge(&ping, &mut now), "credit and bucket both spent");
        // Credit never pays for a reset.
        let mut budget = Budget::new(100);
        budget.earn(&Frame { kind: HEADERS, flags: 0, len: 3, stream: 1, data: 0 });
        assert!((0..BURST).all(|_| budget.charge(&rst, &mut now)));
        assert!(!budget.charge(&rst, &mut now));
        assert!((0..CREDIT_PER_FRAME).all(|_| budget.charge(&ping, &mut now)), "the credit is still there");
    }

    #[test]
    fn a_reset_is_free_once_for_each_stream_opened_up_to_the_stream_limit() {
        let t0 = Instant::now();
        let mut now = || t0;
        let mut budget = Budget::new(10);
        let headers = Frame { kind: HEADERS, flags: 0x5, len: 3, stream: 1, data: 0 };
        let rst = Frame { kind: RST_STREAM, flags: 0, len: 4, stream: 1, data: 0 };
        // 20 000 calls, each cancelled: never a token.
        for _ in 0..20_000 {
            assert!(budget.charge(&headers, &mut now) && budget.charge(&rst, &mut now));
        }
        assert!((0..BURST).all(|_| budget.charge(&rst, &mut now)), "the bucket is still full");
        assert!(!budget.charge(&rst, &mut now));
        // Streams opened earn at most the stream limit in resets.
        let mut budget = Budget::new(10);
        assert!((0..1000).all(|_| budget.charge(&headers, &mut now)));
        assert!((0..10 + BURST).all(|_| budget.charge(&rst, &mut now)));
        assert!(!budget.charge(&rst, &mut now));
    }

    #[test]
    fn free_frames_never_read_the_clock() {
        let mut budget = Budget::new(100);
        let mut now = || -> Instant { panic!("the clock was read for a free frame") };
        let (bytes, _) = client_stream();
        let mut t = FrameTracker::client_to_server();
        let mut charged = 0;
        t.feed(&bytes, |f| {
            if inbound_cost(&f) == Cost::Free {
                assert!(budget.charge(&f, &mut now));
                charged += 1;
            }
        });
        assert_eq!(charged, 5, "HEADERS and the DATA frames with data or END_STREAM");
    }
}
