//! Chunked decoding: every split point of sample bodies, sizes, extensions, trailers, errors.

use super::*;

/// Feed `pieces` in order (each piece is appended to what is left unconsumed, like a read
/// buffer); returns decoded data, total consumed and the outcome.
fn feed(pieces: &[&[u8]]) -> (Vec<u8>, usize, Result<bool, ChunkError>) {
    let mut dec = ChunkedDecoder::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut data = Vec::new();
    let mut consumed = 0;
    for piece in pieces {
        buf.extend_from_slice(piece);
        loop {
            let (n, ev) = match dec.decode(&buf) {
                Ok(r) => r,
                Err(e) => return (data, consumed, Err(e)),
            };
            assert!(n <= buf.len());
            match ev {
                ChunkEvent::Data(ref r) => {
                    assert_eq!(r.end, n);
                    data.extend_from_slice(&buf[r.clone()]);
                }
                ChunkEvent::NeedMore => assert_eq!(n, buf.len()),
                ChunkEvent::End => {
                    consumed += n;
                    assert!(dec.is_done());
                    return (data, consumed, Ok(true));
                }
            }
            consumed += n;
            buf.drain(..n);
            if matches!(ev, ChunkEvent::NeedMore) {
                break;
            }
        }
    }
    (data, consumed, Ok(false))
}

fn decode(body: &[u8]) -> Result<Vec<u8>, ChunkError> {
    match feed(&[body]) {
        (d, n, Ok(true)) => {
            assert_eq!(n, body.len(), "sample bodies end exactly at the final CRLF");
            Ok(d)
        }
        (_, _, Ok(false)) => panic!("body incomplete: {:?}", show(body)),
        (_, _, Err(e)) => Err(e),
    }
}

const SAMPLE: &[u8] = b"5\r\nhello\r\n1a;ext=val;flag\r\nabcdefghijklmnopqrstuvwxyz\r\n\
A ; q=\"quoted \\\" str\"\r\n0123456789\r\n0\r\nX-Trailer: yes\r\nOther:\tv a l\r\n\r\n";
const SAMPLE_DATA: &[u8] = b"helloabcdefghijklmnopqrstuvwxyz0123456789";

#[test]
fn sample_whole() {
    assert_eq!(decode(SAMPLE).unwrap(), SAMPLE_DATA);
}

#[test]
fn sample_every_split_point() {
    for i in 0..=SAMPLE.len() {
        let (d, n, r) = feed(&[&SAMPLE[..i], &SAMPLE[i..]]);
        assert_eq!((d.as_slice(), n, r), (SAMPLE_DATA, SAMPLE.len(), Ok(true)), "split at {i}");
    }
}

#[test]
fn sample_every_pair_of_split_points() {
    for i in 0..=SAMPLE.len() {
        for j in i..=SAMPLE.len() {
            let (d, _, r) = feed(&[&SAMPLE[..i], &SAMPLE[i..j], &SAMPLE[j..]]);
            assert_eq!((d.as_slice(), r), (SAMPLE_DATA, Ok(true)), "split at {i},{j}");
        }
    }
}

#[test]
fn sample_byte_by_byte() {
    let pieces: Vec<&[u8]> = SAMPLE.chunks(1).collect();
    let (d, n, r) = feed(&pieces);
    assert_eq!((d.as_slice(), n, r), (SAMPLE_DATA, SAMPLE.len(), Ok(true)));
}

#[test]
fn empty_body_and_following_bytes_are_left() {
    let src = b"0\r\n\r\nGET / HTTP/1.1\r\n";
    let mut dec = ChunkedDecoder::new();
    assert_eq!(dec.decode(src), Ok((5, ChunkEvent::End)));
    // Done stays done and consumes nothing more.
    assert_eq!(dec.decode(&src[5..]), Ok((0, ChunkEvent::End)));
    dec.reset();
    assert!(!dec.is_done());
    assert_eq!(dec.decode(b""), Ok((0, ChunkEvent::NeedMore)));
}

#[test]
fn data_events_are_ranges_of_the_input() {
    let mut dec = ChunkedDecoder::new();
    let src = b"3\r\nabc\r\n";
    assert_eq!(dec.decode(src), Ok((6, ChunkEvent::Data(3..6))));
    assert_eq!(dec.decode(&src[6..]), Ok((2, ChunkEvent::NeedMore)));
}

#[test]
fn large_chunk_sizes() {
    let mut dec = ChunkedDecoder::new();
    assert_eq!(dec.decode(b"ffffffffffffffff\r\nab"), Ok((20, ChunkEvent::Data(18..20))));
    let mut dec = ChunkedDecoder::new();
    assert_eq!(dec.decode(b"0000000000000010\r\n"), Ok((18, ChunkEvent::NeedMore)));
    assert_eq!(decode(b"0000000000000001\r\nx\r\n0\r\n\r\n").unwrap(), b"x");
    assert_eq!(decode(b"A\r\n0123456789\r\n0\r\n\r\n").unwrap(), b"0123456789");
}

#[test]
fn overlong_chunk_size_is_refused() {
    assert_eq!(decode(b"10000000000000000\r\n"), Err(ChunkError::ChunkSizeTooLong));
    assert_eq!(decode(b"00000000000000000\r\n"), Err(ChunkError::ChunkSizeTooLong));
}

#[test]
fn malformed_chunk_sizes() {
    for s in [&b"\r\n"[..], b"g\r\n", b"-5\r\n", b"+5\r\n", b"0x5\r\n", b" 5\r\n", b"5 \r\n", b"5\t\r\n", b";x\r\n"] {
        let mut body = s.to_vec();
        body.extend_from_slice(b"hello\r\n0\r\n\r\n");
        assert_eq!(decode(&body), Err(ChunkError::InvalidChunkSize), "{:?}", show(s));
    }
}

#[test]
fn valid_chunk_extensions() {
    for ext in [
        ";a",
        ";a=b",
        ";a=b;c=d",
        " ;a",
        "\t; a",
        "; a = b",
        ";a=\"\"",
        ";a=\"x;y=z\"",
        ";a=\"\\\\\"",
        ";a=b ;c",
        ";a ;b",
        ";a= \"q\" ;b",
        ";a=\"\t\u{e9}\"",
    ] {
        let body = format!("5{ext}\r\nhello\r\n0{ext}\r\n\r\n");
        assert_eq!(decode(body.as_bytes()).unwrap(), b"hello", "{ext:?}");
    }
}

#[test]
fn malformed_chunk_extensions() {
    for ext in [
        ";",
        ";=b",
        ";a=",
        ";a=\"open",
        ";a=b c",
        ";a b",
        ";a=b\"",
        ";a\x01",
        ";a=\"x\x01\"",
        ";;a",
        ";a=b=c",
        ";a,b",
        ";a=\"x\"y",
        "; ",
        ";a=\"x\\\x01\"",
    ] {
        let body = format!("5{ext}\r\nhello\r\n0\r\n\r\n");
        let e = decode(body.as_bytes()).unwrap_err();
        assert!(matches!(e, ChunkError::InvalidExtension | ChunkError::InvalidLineEnding), "{ext:?}: {e:?}");
    }
}

#[test]
fn overlong_chunk_extension() {
    let body = format!("5;a={}\r\nhello\r\n0\r\n\r\n", "x".repeat(MAX_CHUNK_LINE_BYTES as usize));
    assert_eq!(decode(body.as_bytes()), Err(ChunkError::ExtensionTooLong));
}

#[test]
fn bare_lf_and_missing_crlf() {
    assert_eq!(decode(b"5\nhello\r\n0\r\n\r\n"), Err(ChunkError::InvalidChunkSize));
    assert_eq!(decode(b"5\r\rhello\r\n0\r\n\r\n"), Err(ChunkError::InvalidLineEnding));
    assert_eq!(decode(b"5\r\nhello\n0\r\n\r\n"), Err(ChunkError::InvalidLineEnding));
    assert_eq!(decode(b"5\r\nhelloX\r\n0\r\n\r\n"), Err(ChunkError::InvalidLineEnding));
    assert_eq!(decode(b"5\r\nhello\r\r0\r\n\r\n"), Err(ChunkError::InvalidLineEnding));
    assert_eq!(decode(b"0\r\n\n"), Err(ChunkError::InvalidTrailer));
    assert_eq!(decode(b"0\r\n\r\r"), Err(ChunkError::InvalidLineEnding));
    assert_eq!(decode(b"0;a\n\r\n"), Err(ChunkError::InvalidExtension));
}

#[test]
fn trailers_are_validated_and_dropped() {
    assert_eq!(decode(b"1\r\nx\r\n0\r\nA: b\r\nC-D: \r\n\r\n").unwrap(), b"x");
    for t in [&b" A: b\r\n"[..], b"A : b\r\n", b"A b\r\n", b"A: b\x01\r\n", b"A: b\n", b": b\r\n", b"A: b\r\n c\r\n"] {
        let mut body = b"0\r\n".to_vec();
        body.extend_from_slice(t);
        body.extend_from_slice(b"\r\n");
        let e = decode(&body).unwrap_err();
        assert!(matches!(e, ChunkError::InvalidTrailer | ChunkError::InvalidLineEnding), "{:?}", show(t));
    }
    let big = format!("0\r\nA: {}\r\n\r\n", "x".repeat(MAX_TRAILER_BYTES as usize));
    assert_eq!(decode(big.as_bytes()), Err(ChunkError::TrailersTooLarge));
}

#[test]
fn truncated_bodies_need_more() {
    for i in 0..SAMPLE.len() {
        let (_, _, r) = feed(&[&SAMPLE[..i]]);
        assert_eq!(r, Ok(false), "prefix {i}");
    }
}

#[test]
fn chunk_error_statuses() {
    let e = ChunkError::InvalidChunkSize;
    assert_eq!((e.status(Peer::Downstream), e.reason(Peer::Downstream)), (400, "bad-request"));
    assert_eq!((e.status(Peer::Upstream), e.reason(Peer::Upstream)), (502, "upstream-protocol-error"));
}

#[test]
fn request_with_chunked_body_end_to_end() {
    let src = b"POST /u HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nWiki\r\n0\r\n\r\n";
    let h = ok_req(src);
    assert_eq!(h.body, BodyFraming::Chunked);
    assert_eq!(decode(&src[h.head_len..]).unwrap(), b"Wiki");
}
