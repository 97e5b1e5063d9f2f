//! What HTTP/2 needs that HTTP/1.1's fast path does not: a codec-neutral request description
//! ([`ReqParts`]), the header translation both ways (RFC 9113 8.2.2: connection-specific
//! fields never cross into HTTP/2, and `Host` becomes `:authority`), body sources that yield
//! chunks (an HTTP/1.1 connection decoding its framing, an HTTP/2 stream releasing flow
//! control only as its data is passed on), sinks that take them (HTTP/1.1 framing, HTTP/2 DATA
//! frames within the peer's window), and a replay buffer that keeps a copy of a request body,
//! up to the service's limit, while it streams. Must not: touch per-worker state, or decide
//! retries (the attempt loop does).

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::body::{OutFraming, PumpError};
use crate::http::{self as h1, BodyFraming, ChunkEvent, ChunkedDecoder, RequestHead, ResponseHead, Version};
use crate::io::{Conn, Wait};

/// A request, codec-neutral: what an HTTP/2 upstream attempt sends.
#[derive(Debug, Clone)]
pub(crate) struct ReqParts {
    pub method: http::Method,
    /// Origin-form path and query (`/` at least).
    pub path: Bytes,
    /// `:authority` (from the target, `Host`, or the endpoint).
    pub authority: Bytes,
    /// End-to-end fields only.
    pub headers: HeaderMap,
}

impl ReqParts {
    /// The request of an HTTP/1.1 client, its end-to-end fields only, with `extra` added.
    pub(crate) fn from_h1(head: &RequestHead, src: &[u8], extra: &[(&[u8], &[u8])]) -> Option<ReqParts> {
        let method = http::Method::from_bytes(head.method_span.get(src)).ok()?;
        let path = match head.path.get(src) {
            p if p.first() == Some(&b'/') => Bytes::copy_from_slice(p),
            // An absolute-form target with an empty path, or only a query (RFC 9112 3.2.2).
            p => Bytes::from([&b"/"[..], p].concat()),
        };
        let authority = Bytes::copy_from_slice(head.host.map_or(&b""[..], |h| h.get(src)));
        let mut headers = HeaderMap::with_capacity(head.headers.len() + extra.len());
        let mut te_trailers = false;
        for f in &head.headers {
            let name = f.name.get(src);
            if name.eq_ignore_ascii_case(b"te") {
                // The one TE HTTP/2 allows (RFC 9113 8.2.2), and gRPC endpoints require.
                te_trailers |= f.value.get(src).split(|b| *b == b',').any(|t| {
                    t.split(|b| *b == b';').next().is_some_and(|c| c.trim_ascii().eq_ignore_ascii_case(b"trailers"))
                });
            }
            if !f.forward || name.eq_ignore_ascii_case(b"host") {
                continue;
            }
            if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(f.value.get(src))) {
                headers.append(n, v);
            }
        }
        if te_trailers {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        }
        add_extra(&mut headers, extra);
        Some(ReqParts { method, path, authority, headers })
    }

    /// The request of an HTTP/2 client, with `extra` added (HTTP/2 never carries
    /// connection-specific fields; a `host` field is folded into `:authority`).
    pub(crate) fn from_h2(parts: &http::request::Parts, extra: &[(&[u8], &[u8])]) -> ReqParts {
        let path = parts
            .uri
            .path_and_query()
            .map_or(Bytes::from_static(b"/"), |p| Bytes::copy_from_slice(p.as_str().as_bytes()));
        let authority = match parts.uri.authority() {
            Some(a) => Bytes::copy_from_slice(a.as_str().as_bytes()),
            None => Bytes::copy_from_slice(parts.headers.get(header::HOST).map_or(&b""[..], |h| h.as_bytes())),
        };
        let mut headers = parts.headers.clone();
        headers.remove(header::HOST);
        strip_connection_specific(&mut headers);
        add_extra(&mut headers, extra);
        ReqParts { method: parts.method.clone(), path, authority, headers }
    }

    /// This request for an HTTP/2 endpoint.
    pub(crate) fn to_h2(&self, endpoint: std::net::SocketAddr) -> Option<http::Request<()>> {
        let authority: &[u8] = if self.authority.is_empty() { b"" } else { &self.authority };
        let uri = if authority.is_empty() {
            http::Uri::builder()
                .scheme("http")
                .authority(endpoint.to_string())
                .path_and_query(self.path.as_ref())
                .build()
        } else {
            http::Uri::builder().scheme("http").authority(authority).path_and_query(self.path.as_ref()).build()
        }
        .ok()?;
        let mut req = http::Request::builder().method(self.method.clone()).uri(uri).body(()).ok()?;
        *req.headers_mut() = self.headers.clone();
        Some(req)
    }

    /// This request as an HTTP/1.1 head for an endpoint (framing: `body`).
    pub(crate) fn write_h1(&self, endpoint: std::net::SocketAddr, body: BodyFraming, out: &mut Vec<u8>) {
        out.extend_from_slice(self.method.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(&self.path);
        out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
        if self.authority.is_empty() {
            out.extend_from_slice(endpoint.to_string().as_bytes());
        } else {
            out.extend_from_slice(&self.authority);
        }
        out.extend_from_slice(b"\r\n");
        for (name, value) in &self.headers {
            if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING || name == header::TE {
                continue; // framing is weir's
            }
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        match body {
            BodyFraming::ContentLength(n) => {
                out.extend_from_slice(b"content-length: ");
                out.extend_from_slice(n.to_string().as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            BodyFraming::Chunked | BodyFraming::CloseDelimited => {
                out.extend_from_slice(b"transfer-encoding: chunked\r\n")
            }
            BodyFraming::None => {}
        }
        out.extend_from_slice(b"\r\n");
    }

    /// Adds the fields weir computed (`via`, forwarding headers), replacing the client's own
    /// `x-forwarded-for` and `forwarded` (whose values the computed ones already include).
    pub(crate) fn add_fields(&mut self, fields: &[(&'static [u8], Vec<u8>)]) {
        for (n, v) in fields {
            if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(n), HeaderValue::from_bytes(v)) {
                if n == "x-forwarded-for" || n == header::FORWARDED {
                    self.headers.remove(&n);
                }
                self.headers.append(n, v);
            }
        }
    }
}

fn add_extra(headers: &mut HeaderMap, extra: &[(&[u8], &[u8])]) {
    for &(n, v) in extra {
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(n), HeaderValue::from_bytes(v)) {
            headers.append(n, v);
        }
    }
}

/// Removes the fields HTTP/2 forbids (RFC 9113 8.2.2): `Connection` and every field it names,
/// `Keep-Alive`, `Proxy-Connection`, `Transfer-Encoding`, `Upgrade`, and `TE` other than
/// `trailers`.
pub(crate) fn strip_connection_specific(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in listed {
        headers.remove(n);
    }
    for n in [header::CONNECTION, header::TRANSFER_ENCODING, header::UPGRADE] {
        headers.remove(n);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
    if headers.get(header::TE).is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"trailers")) {
        headers.remove(header::TE);
    }
}

/// An HTTP/1.1 endpoint's response head for an HTTP/2 client (its body framing is the
/// stream's; `content-length` is kept when it holds).
pub(crate) fn h1_response_to_h2(resp: &ResponseHead, src: &[u8]) -> http::Response<()> {
    let mut out = http::Response::builder().status(resp.code).body(()).unwrap_or_default();
    let headers = out.headers_mut();
    for f in resp.headers.iter().filter(|f| f.forward) {
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(f.name.get(src)), HeaderValue::from_bytes(f.value.get(src))) {
            headers.append(n, v);
        }
    }
    if let Some(n) = resp.content_length.filter(|_| resp.code != 204 && resp.code != 304) {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    strip_connection_specific(headers);
    headers.append(header::VIA, HeaderValue::from_static(via_str(resp.minor)));
    out
}

fn via_str(minor: u8) -> &'static str {
    std::str::from_utf8(crate::plan::via(minor)).unwrap_or("1.1 weir")
}

/// An HTTP/2 endpoint's response head as HTTP/1.1 for a client speaking `client`; returns the
/// framing of the body towards the client. `has_body`: the stream has data to come.
pub(crate) fn h2_response_to_h1(
    parts: &http::response::Parts,
    client: Version,
    close: bool,
    has_body: bool,
    out: &mut Vec<u8>,
) -> h1::DownstreamBody {
    let code = parts.status.as_u16();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(parts.status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(parts.status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let length = parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    for (name, value) in &parts.headers {
        if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING || name == header::CONNECTION {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"via: 2 weir\r\n");
    let no_body = code == 204 || code == 304 || (100..200).contains(&code);
    let mut res = h1::DownstreamBody { framing: BodyFraming::None, close };
    if no_body {
    } else if let Some(n) = length {
        out.extend_from_slice(format!("content-length: {n}\r\n").as_bytes());
        res.framing = BodyFraming::ContentLength(n);
    } else if !has_body {
        out.extend_from_slice(b"content-length: 0\r\n");
        res.framing = BodyFraming::ContentLength(0);
    } else if client == Version::Http11 {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        res.framing = BodyFraming::Chunked;
    } else {
        res = h1::DownstreamBody { framing: BodyFraming::CloseDelimited, close: true };
    }
    if res.close {
        out.extend_from_slice(b"connection: close\r\n");
    } else if client == Version::Http10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    res
}

/// Where a body's chunks come from.
pub(crate) enum Source<'a> {
    /// An HTTP/1.1 connection, its framing decoded; bytes from `buf[base..]` first.
    H1 { conn: &'a mut Conn, buf: &'a mut Vec<u8>, base: usize, left: H1Left, wait: Wait },
    /// An HTTP/2 stream: flow control is released as each chunk is taken.
    H2 { stream: &'a mut h2::RecvStream, wait: Wait },
}

/// What remains of an HTTP/1.1 body.
#[derive(Debug)]
pub(crate) enum H1Left {
    Length(u64),
    Chunked(ChunkedDecoder),
    ToEof,
    Done,
}

impl H1Left {
    /// The state for a body framed as `framing`.
    pub(crate) fn of(framing: BodyFraming) -> H1Left {
        match framing {
            BodyFraming::None | BodyFraming::ContentLength(0) => H1Left::Done,
            BodyFraming::ContentLength(n) => H1Left::Length(n),
            BodyFraming::Chunked => H1Left::Chunked(ChunkedDecoder::new()),
            BodyFraming::CloseDelimited => H1Left::ToEof,
        }
    }
}

impl Source<'_> {
    /// The next chunk; `None` at the end of the body.
    pub(crate) async fn next(&mut self) -> Result<Option<Bytes>, PumpError> {
        match self {
            Source::H2 { stream, wait } => {
                let data = match stream.data_by(*wait).await {
                    None => return Ok(None),
                    Some(Err(_)) => return Err(PumpError::Source),
                    Some(Ok(d)) => d,
                };
                let _ = stream.flow_control().release_capacity(data.len());
                Ok(Some(data))
            }
            Source::H1 { conn, buf, base, left, wait } => loop {
                let avail = buf.len() - *base;
                match left {
                    H1Left::Done => return Ok(None),
                    H1Left::Length(n) if avail > 0 => {
                        let take = (avail as u64).min(*n) as usize;
                        let chunk = Bytes::copy_from_slice(&buf[*base..*base + take]);
                        buf.drain(*base..*base + take);
                        *n -= take as u64;
                        if *n == 0 {
                            *left = H1Left::Done;
                        }
                        return Ok(Some(chunk));
                    }
                    H1Left::ToEof if avail > 0 => {
                        let chunk = Bytes::copy_from_slice(&buf[*base..]);
                        buf.truncate(*base);
                        return Ok(Some(chunk));
                    }
                    H1Left::Chunked(dec) if avail > 0 => {
                        let (consumed, event) = dec.decode(&buf[*base..]).map_err(|_| PumpError::Framing)?;
                        let chunk = match event {
                            ChunkEvent::Data(r) => Some(Bytes::copy_from_slice(&buf[*base + r.start..*base + r.end])),
                            ChunkEvent::End => {
                                *left = H1Left::Done;
                                None
                            }
                            ChunkEvent::NeedMore => None,
                        };
                        buf.drain(*base..*base + consumed);
                        match (chunk, &left) {
                            (Some(c), _) => return Ok(Some(c)),
                            (None, H1Left::Done) => return Ok(None),
                            // NeedMore consumed what it could: read more below.
                            (None, _) if consumed > 0 && buf.len() > *base => continue,
                            (None, _) => {}
                        }
                    }
                    _ => {}
                }
                if buf.capacity() - buf.len() < 16 * 1024 {
                    buf.reserve(crate::body::STREAM_READ_BYTES);
                }
                match conn.read_by(std::mem::take(*buf), *wait).await {
                    None => return Err(PumpError::SourceTimeout),
                    Some((res, b)) => {
                        **buf = b;
                        match res {
                            Ok(0) if matches!(left, H1Left::ToEof) => {
                                *left = H1Left::Done;
                                return Ok(None);
                            }
                            Ok(0) | Err(_) => return Err(PumpError::Source),
                            Ok(_) => {}
                        }
                    }
                }
            },
        }
    }

    /// The trailers after the end of an HTTP/2 body (an HTTP/1.1 body's are not kept).
    pub(crate) async fn trailers(&mut self) -> Option<HeaderMap> {
        match self {
            Source::H2 { stream, .. } => stream.trailers().await.ok().flatten(),
            Source::H1 { .. } => None,
        }
    }
}

/// An HTTP/2 receive stream, waited on within a deadline.
trait DataBy {
    async fn data_by(&mut self, wait: Wait) -> Option<Result<Bytes, h2::Error>>;
}

impl DataBy for h2::RecvStream {
    async fn data_by(&mut self, wait: Wait) -> Option<Result<Bytes, h2::Error>> {
        let deadline = match wait {
            Wait::Until(t) => t,
            Wait::Idle(d) => crate::io::now() + d,
        };
        match crate::io::until(deadline, self.data()).await {
            Some(r) => r,
            None => Some(Err(h2::Error::from(h2::Reason::CANCEL))),
        }
    }
}

/// Where a body's chunks go.
pub(crate) enum Sink<'a> {
    /// An HTTP/1.1 connection, framed as `out`.
    H1 { conn: &'a mut Conn, out: OutFraming, wait: Wait, scratch: &'a mut Vec<u8> },
    /// An HTTP/2 stream, within the peer's flow-control window.
    H2 { stream: &'a mut h2::SendStream<Bytes>, wait: Wait },
}

impl Sink<'_> {
    /// Sends one chunk.
    pub(crate) async fn send(&mut self, chunk: Bytes) -> Result<(), PumpError> {
        match self {
            Sink::H1 { conn, out, wait, scratch } => {
                scratch.clear();
                match out {
                    OutFraming::Raw => scratch.extend_from_slice(&chunk),
                    OutFraming::Chunked => h1::write_chunk(&chunk, scratch),
                }
                let (res, b) = conn.write_all_by(std::mem::take(*scratch), *wait).await;
                **scratch = b;
                res.map_err(|e| dst_error(&e))
            }
            Sink::H2 { stream, wait } => send_h2(stream, chunk, *wait).await,
        }
    }

    /// Ends the body, with `trailers` where the sink can carry them (HTTP/2).
    pub(crate) async fn finish(&mut self, trailers: Option<HeaderMap>) -> Result<(), PumpError> {
        match self {
            Sink::H1 { conn, out, wait, scratch } => {
                if *out == OutFraming::Chunked {
                    scratch.clear();
                    h1::write_last_chunk(scratch);
                    let (res, b) = conn.write_all_by(std::mem::take(*scratch), *wait).await;
                    **scratch = b;
                    res.map_err(|e| dst_error(&e))?;
                }
                Ok(())
            }
            Sink::H2 { stream, .. } => match trailers {
                Some(t) => stream.send_trailers(t).map_err(|_| PumpError::Destination),
                None => stream.send_data(Bytes::new(), true).map_err(|_| PumpError::Destination),
            },
        }
    }
}

fn dst_error(e: &std::io::Error) -> PumpError {
    if e.kind() == std::io::ErrorKind::TimedOut { PumpError::DestinationTimeout } else { PumpError::Destination }
}

/// Sends `chunk` on an HTTP/2 stream as the peer's window allows; waiting for window counts
/// against `wait` (a peer that never opens its window is a stalled reader).
async fn send_h2(stream: &mut h2::SendStream<Bytes>, mut chunk: Bytes, wait: Wait) -> Result<(), PumpError> {
    while !chunk.is_empty() {
        stream.reserve_capacity(chunk.len());
        let deadline = match wait {
            Wait::Until(t) => t,
            Wait::Idle(d) => crate::io::now() + d,
        };
        let granted = crate::io::until(deadline, std::future::poll_fn(|cx| stream.poll_capacity(cx))).await;
        let n = match granted {
            None => return Err(PumpError::DestinationTimeout),
            Some(None | Some(Err(_))) => return Err(PumpError::Destination),
            Some(Some(Ok(n))) => n.min(chunk.len()),
        };
        if n == 0 {
            continue;
        }
        let part = chunk.split_to(n);
        stream.send_data(part, false).map_err(|_| PumpError::Destination)?;
    }
    Ok(())
}

/// Moves a whole body from `src` to `dst` (trailers included where both carry them);
/// `moved` counts the bytes as they go.
pub(crate) async fn relay(
    src: &mut Source<'_>,
    dst: &mut Sink<'_>,
    moved: &std::cell::Cell<u64>,
) -> Result<u64, PumpError> {
    while let Some(chunk) = src.next().await? {
        moved.set(moved.get() + chunk.len() as u64);
        dst.send(chunk).await?;
    }
    let trailers = src.trailers().await;
    dst.finish(trailers).await?;
    Ok(moved.get())
}

/// A request body streamed to an attempt while a copy is kept, up to `limit` bytes, so that a
/// retry can send it again; past the limit it is no longer replayable.
#[derive(Debug)]
pub(crate) struct Replay {
    held: Vec<Bytes>,
    held_bytes: u64,
    limit: u64,
    overflowed: bool,
    /// The whole body has been read from the client.
    pub complete: bool,
    /// The client's trailers (HTTP/2), once read.
    pub trailers: Option<HeaderMap>,
}

impl Replay {
    /// An empty replay buffer keeping up to `limit` bytes.
    pub(crate) fn new(limit: u64, complete: bool) -> Replay {
        Replay { held: Vec::new(), held_bytes: 0, limit, overflowed: false, complete, trailers: None }
    }

    /// Whether everything read so far is held.
    pub(crate) fn replayable(&self) -> bool {
        !self.overflowed
    }

    /// Bytes held.
    pub(crate) fn held_bytes(&self) -> u64 {
        self.held_bytes
    }

    /// The chunks held, in order.
    pub(crate) fn held(&self) -> &[Bytes] {
        &self.held
    }

    /// Keeps a copy of `chunk` (just read from the client) while the body fits the limit.
    pub(crate) fn keep(&mut self, chunk: &Bytes) {
        if !self.overflowed && self.held_bytes + chunk.len() as u64 <= self.limit {
            self.held_bytes += chunk.len() as u64;
            self.held.push(chunk.clone());
        } else {
            self.overflowed = true;
            self.held.clear();
        }
    }

    /// A complete body held whole.
    pub(crate) fn whole(body: Bytes) -> Replay {
        let held_bytes = body.len() as u64;
        let held = if body.is_empty() { Vec::new() } else { vec![body] };
        Replay { held, held_bytes, limit: held_bytes, overflowed: false, complete: true, trailers: None }
    }

    /// Sends the body to `dst`: what is held first, then the rest from `src` (kept while it
    /// fits). `moved` counts the bytes sent.
    pub(crate) async fn send(
        &mut self,
        src: &mut Source<'_>,
        dst: &mut Sink<'_>,
        moved: &std::cell::Cell<u64>,
    ) -> Result<u64, PumpError> {
        for chunk in &self.held {
            moved.set(moved.get() + chunk.len() as u64);
            dst.send(chunk.clone()).await?;
        }
        if !self.complete {
            while let Some(chunk) = src.next().await? {
                self.keep(&chunk);
                moved.set(moved.get() + chunk.len() as u64);
                dst.send(chunk).await?;
            }
            self.trailers = src.trailers().await;
            self.complete = true;
        }
        dst.finish(self.trailers.clone()).await?;
        Ok(moved.get())
    }
}
