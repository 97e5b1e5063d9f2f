//! Fuzzing entry point for the request side of the codec (usable from a `cargo fuzz` target or
//! a property test). Owns: the codec's invariants, asserted. Must not: be called on the data
//! path (it allocates and panics on purpose when an invariant breaks).

use super::{
    BodyFraming, ChunkEvent, ChunkedDecoder, HeadLimits, RequestHead, Status, parse_request, write_request_head,
};

/// Run [`parse_request`] and, for chunked bodies, [`ChunkedDecoder`] on arbitrary bytes, and
/// assert: no panic; consumed bytes never exceed the input; data ranges lie within the input;
/// feeding the input in growing prefixes gives the same answer as the whole input; a complete
/// head re-serialises into one that parses again to the same method, origin-form target, host
/// and framing.
pub fn fuzz_request(data: &[u8]) {
    let mut head = RequestHead::default();
    let limits = HeadLimits::default();
    let whole = parse_request(data, &limits, &mut head);
    if let Ok(Status::Complete(n)) = whole {
        assert!(n <= data.len());
        check_reserialise(data, &head, &limits);
        if head.body == BodyFraming::Chunked {
            check_chunked(&data[n..]);
        }
    }
    // Prefix consistency, with small limits so 414/431 are reachable by short inputs.
    let small = HeadLimits { max_head_bytes: 256, max_headers: 4, max_uri_bytes: 32 };
    let whole_small = parse_request(data, &small, &mut head);
    let mut first = None;
    for end in 0..=data.len().min(1024) {
        match parse_request(&data[..end], &small, &mut head) {
            Ok(Status::Partial) => continue,
            other => {
                first = Some(other);
                break;
            }
        }
    }
    if let Some(first) = first {
        assert_eq!(first, whole_small, "prefix and whole input disagree");
    } else if data.len() <= 1024 {
        assert_eq!(whole_small, Ok(Status::Partial));
    }
    // Every input is a chunked body too.
    check_chunked(data);
}

fn check_reserialise(data: &[u8], head: &RequestHead, limits: &HeadLimits) {
    let mut out = Vec::new();
    let host: &[u8] = b"fuzz.invalid";
    // A request without any host (HTTP/1.0) needs one from the caller.
    let extra: &[(&[u8], &[u8])] = if head.host.is_none() { &[(b"host", host)] } else { &[] };
    write_request_head(head, data, &mut out, extra);
    let mut again = RequestHead::default();
    let limits = HeadLimits { max_head_bytes: limits.max_head_bytes + 64, ..*limits };
    let res = parse_request(&out, &limits, &mut again);
    assert_eq!(res, Ok(Status::Complete(out.len())), "re-serialised head does not parse");
    assert_eq!(again.method, head.method);
    assert_eq!(again.method_span.get(&out), head.method_span.get(data));
    // Forwarded in origin-form: the path part of an absolute-form target, `/` in front when it
    // is empty or only a query.
    let path = head.path.get(data);
    let forwarded = if path.first() == Some(&b'/') { path.to_vec() } else { [&b"/"[..], path].concat() };
    assert_eq!(again.target.get(&out), &forwarded[..]);
    assert_eq!(again.host.map(|h| h.get(&out)), head.host.map(|h| h.get(data)).or(Some(host)));
    assert_eq!(again.body, head.body);
}

fn check_chunked(body: &[u8]) {
    let whole = decode_all(body, body.len().max(1));
    let byte_by_byte = decode_all(body, 1);
    assert_eq!(whole, byte_by_byte, "chunked decoding depends on read boundaries");
}

/// Decode `body` fed in pieces of `step` bytes; returns the data and either the bytes consumed
/// at the end of the body (`Some`) / `None` if incomplete, or the error.
fn decode_all(body: &[u8], step: usize) -> (Vec<u8>, Result<Option<usize>, super::ChunkError>) {
    let mut dec = ChunkedDecoder::new();
    let mut data = Vec::new();
    let mut pos = 0;
    let mut avail = step.min(body.len());
    loop {
        let input = &body[pos..avail];
        let (n, ev) = match dec.decode(input) {
            Ok(r) => r,
            Err(e) => return (data, Err(e)),
        };
        assert!(n <= input.len());
        pos += n;
        match ev {
            ChunkEvent::Data(r) => {
                assert!(r.start <= r.end && r.end == n);
                data.extend_from_slice(&input[r]);
            }
            ChunkEvent::End => return (data, Ok(Some(pos))),
            ChunkEvent::NeedMore => {
                assert_eq!(pos, avail);
                if avail == body.len() {
                    return (data, Ok(None));
                }
                avail = (avail + step).min(body.len());
            }
        }
    }
}
