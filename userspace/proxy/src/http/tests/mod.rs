//! Unit tests of the HTTP codec, one module per area. Helpers here parse every input both whole
//! and as growing prefixes, so each test also checks that partial reads change nothing.

mod chunked;
mod fuzz;
mod request;
mod response;
mod strict;
mod write;

use super::*;

/// Parse `input` whole, and as growing prefixes; assert the first non-Partial prefix result
/// equals the whole-input result (for inputs over 4 KiB, a sample of prefixes must each be
/// Partial or equal to the whole result). Returns the head and the result.
pub(super) fn parse_req_with(input: &[u8], limits: &HeadLimits) -> (RequestHead, Result<Status, HeadError>) {
    let mut head = RequestHead::default();
    let whole = parse_request(input, limits, &mut head);
    let mut scratch = RequestHead::default();
    if input.len() <= 4096 {
        let mut first = Ok(Status::Partial);
        for end in 0..=input.len() {
            first = parse_request(&input[..end], limits, &mut scratch);
            if first != Ok(Status::Partial) {
                break;
            }
        }
        assert_eq!(first, whole, "byte-by-byte and whole parse differ for {:?}", show(input));
    } else {
        let len = input.len();
        let sample = (0..len).step_by(997).chain(len.saturating_sub(64)..=len);
        for end in sample {
            let r = parse_request(&input[..end], limits, &mut scratch);
            assert!(r == Ok(Status::Partial) || r == whole, "prefix {end}: {r:?} vs {whole:?}");
        }
    }
    (head, whole)
}

pub(super) fn parse_req(input: &[u8]) -> (RequestHead, Result<Status, HeadError>) {
    parse_req_with(input, &HeadLimits::default())
}

/// The request must parse completely; returns the head.
#[track_caller]
pub(super) fn ok_req(input: &[u8]) -> RequestHead {
    let (head, res) = parse_req(input);
    match res {
        Ok(Status::Complete(n)) => {
            assert_eq!(n, head.head_len);
            head
        }
        other => panic!("expected a complete head for {:?}, got {other:?}", show(input)),
    }
}

/// The request must be refused; returns the error.
#[track_caller]
pub(super) fn err_req(input: &[u8]) -> HeadError {
    match parse_req(input).1 {
        Err(e) => e,
        other => panic!("expected an error for {:?}, got {other:?}", show(input)),
    }
}

/// Status the request is refused with (panics if it is accepted).
#[track_caller]
pub(super) fn status(input: &[u8]) -> u16 {
    err_req(input).status()
}

pub(super) fn parse_resp(input: &[u8], head_req: bool) -> (ResponseHead, Result<Status, HeadError>) {
    let mut head = ResponseHead::default();
    let res = parse_response(input, &HeadLimits::default(), head_req, &mut head);
    (head, res)
}

pub(super) fn show(b: &[u8]) -> String {
    String::from_utf8_lossy(&b[..b.len().min(200)]).into_owned()
}

/// `GET / HTTP/1.1` with Host and the given extra lines (each without CRLF).
pub(super) fn get_with(lines: &[&str]) -> Vec<u8> {
    let mut s = String::from("GET / HTTP/1.1\r\nHost: svc\r\n");
    for l in lines {
        s.push_str(l);
        s.push_str("\r\n");
    }
    s.push_str("\r\n");
    s.into_bytes()
}

/// `POST / HTTP/1.1` with Host and the given extra lines.
pub(super) fn post_with(lines: &[&str]) -> Vec<u8> {
    let mut v = get_with(lines);
    v.splice(0..3, b"POST".iter().copied());
    v
}
