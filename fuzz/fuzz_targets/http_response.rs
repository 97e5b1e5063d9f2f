//! Response heads (what endpoints send back) and the chunked decoder on what follows them.
//!
//! Asserts, for `method_was_head` false and true: no panic; a complete head is no longer than
//! the input and agrees with `head_len`; a 1xx (interim or `101`), 204 or 304 has no body; feeding the input in growing prefixes gives the same
//! answer as the whole input; the decoder never consumes more than it is given and its data
//! ranges lie within its input; a complete head re-serialised for an HTTP/1.1 client
//! (`write_response_head(.., Version::Http11, false)`) parses again to the same code and to the
//! framing the writer announced (the upstream framing, except that a close-delimited body is
//! re-chunked for a 1.1 client).
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_proxy::http::{
    BodyFraming, ChunkEvent, ChunkedDecoder, HeadLimits, ResponseHead, Status, Version,
    parse_response, write_response_head,
};

fuzz_target!(|data: &[u8]| {
    let limits = HeadLimits::default();
    let small = HeadLimits {
        max_head_bytes: 256,
        max_headers: 4,
        max_uri_bytes: 32,
    };
    let mut head = ResponseHead::default();
    for method_was_head in [false, true] {
        if let Ok(Status::Complete(n)) = parse_response(data, &limits, method_was_head, &mut head) {
            assert!(n <= data.len(), "head longer than the input");
            assert_eq!(n, head.head_len);
            assert!((100..=599).contains(&head.code));
            if method_was_head || head.is_interim() || head.is_switch() || matches!(head.code, 204 | 304) {
                assert_eq!(head.body, BodyFraming::None);
            }
            check_reserialise(data, &head, method_was_head);
            decode(&data[n..]);
        }
        check_prefixes(data, &small, method_was_head, &mut head);
    }
    // Every input is a chunked body too.
    decode(data);
});

fn check_reserialise(data: &[u8], head: &ResponseHead, method_was_head: bool) {
    let mut out = Vec::new();
    let down = write_response_head(head, data, &mut out, &[], Version::Http11, false);
    let expected = match head.body {
        _ if head.is_interim() || head.is_switch() => BodyFraming::None,
        BodyFraming::CloseDelimited => BodyFraming::Chunked,
        other => other,
    };
    assert_eq!(
        down.framing, expected,
        "writer changed the framing for a 1.1 client"
    );
    let limits = HeadLimits {
        max_head_bytes: HeadLimits::default().max_head_bytes + 256,
        ..HeadLimits::default()
    };
    let mut again = ResponseHead::default();
    let res = parse_response(&out, &limits, method_was_head, &mut again);
    assert_eq!(
        res,
        Ok(Status::Complete(out.len())),
        "re-serialised head does not parse: {:?}",
        String::from_utf8_lossy(&out)
    );
    assert_eq!(again.code, head.code);
    assert_eq!(
        again.body, down.framing,
        "re-serialised head frames differently"
    );
}

/// The first non-Partial answer on growing prefixes equals the whole input's answer.
fn check_prefixes(
    data: &[u8],
    limits: &HeadLimits,
    method_was_head: bool,
    head: &mut ResponseHead,
) {
    let whole = parse_response(data, limits, method_was_head, head);
    let mut first = None;
    for end in 0..=data.len().min(1024) {
        match parse_response(&data[..end], limits, method_was_head, head) {
            Ok(Status::Partial) => continue,
            other => {
                first = Some(other);
                break;
            }
        }
    }
    match first {
        Some(first) => assert_eq!(first, whole, "prefix and whole input disagree"),
        None if data.len() <= 1024 => assert_eq!(whole, Ok(Status::Partial)),
        None => {}
    }
}

/// Decode `body` to its end, an error or the end of the input, checking every step.
fn decode(body: &[u8]) {
    let mut dec = ChunkedDecoder::new();
    let mut pos = 0;
    loop {
        let input = &body[pos..];
        let Ok((n, ev)) = dec.decode(input) else {
            return;
        };
        assert!(n <= input.len(), "decoder consumed more than its input");
        pos += n;
        match ev {
            ChunkEvent::Data(r) => assert!(r.start <= r.end && r.end == n),
            ChunkEvent::End => {
                assert!(dec.is_done());
                return;
            }
            ChunkEvent::NeedMore => {
                assert_eq!(pos, body.len(), "NeedMore with input left");
                return;
            }
        }
        if n == 0 {
            // A Data event of zero bytes would loop forever.
            panic!("decoder made no progress");
        }
    }
}
