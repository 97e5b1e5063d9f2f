//! Every response weir writes itself, in one place: errors (status, `x-weir-error` reason, a
//! body saying what was wrong) over HTTP/1.1 and HTTP/2 (a gRPC call gets a trailers-only
//! answer with `grpc-status` and `grpc-message` instead), `100 Continue`, and the answer to a
//! connection over the limit.
//! Must not: decide *whether* to answer (callers do) or touch per-worker state.

use std::time::Duration;

use bytes::Bytes;
use weir_core::grpc;
use weir_core::outcome::{DEFAULT_SHED_RETRY_AFTER_SECS, ErrorReason};

use crate::http::ErrorResponse;
use crate::io::{Conn, Wait};

/// `100 Continue`, sent by weir when it buffers a request body itself.
const CONTINUE_100: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// How long a connection over the limit is drained after its 503 (so the client reads the
/// answer instead of a reset).
const SHED_LINGER: Duration = Duration::from_millis(200);

/// One error answer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reply<'a> {
    pub reason: ErrorReason,
    /// Body text; the reason's own message when `None`.
    pub detail: Option<&'a str>,
    /// Add `Connection: close` (also forced by reasons that always close).
    pub close: bool,
    /// The request was HEAD: headers only.
    pub head_request: bool,
    /// Another status than the reason's own (a fault's configured `abort_status`).
    pub status: Option<u16>,
    /// `Retry-After` seconds, for a reason that sends it, when known better than the default
    /// (a rate limit's next token).
    pub retry_after: Option<u32>,
}

impl Reply<'_> {
    /// An answer with `reason`'s own message, kept open unless the reason closes.
    pub(crate) fn new(reason: ErrorReason) -> Reply<'static> {
        Reply { reason, detail: None, close: false, head_request: false, status: None, retry_after: None }
    }

    /// Whether the connection closes after this answer.
    pub(crate) fn closes(&self) -> bool {
        self.close || self.reason.closes_connection()
    }

    /// The status sent.
    pub(crate) fn status(&self) -> u16 {
        self.status.unwrap_or(self.reason.status())
    }

    /// The `Retry-After` sent, if any.
    fn retry_after_secs(&self) -> Option<u32> {
        self.reason.sets_retry_after().then(|| self.retry_after.unwrap_or(DEFAULT_SHED_RETRY_AFTER_SECS))
    }

    fn write(&self, out: &mut Vec<u8>) {
        ErrorResponse {
            status: self.status(),
            reason: self.reason.as_str(),
            detail: self.detail.unwrap_or(self.reason.message()),
            close: self.closes(),
            retry_after_secs: self.retry_after_secs(),
            omit_body: self.head_request,
        }
        .write(out);
    }
}

/// Writes `reply` within `write_timeout` of no progress; returns whether it was written.
pub(crate) async fn error(conn: &mut Conn, reply: Reply<'_>, write_timeout: Duration) -> bool {
    let mut out = Vec::with_capacity(256);
    reply.write(&mut out);
    conn.write_all_by(out, Wait::Idle(write_timeout)).await.0.is_ok()
}

/// Answers an HTTP/2 stream with weir's own error: an HTTP status with `x-weir-error` and a
/// body saying what was wrong, or for a gRPC call a trailers-only response (`:status 200`,
/// `grpc-status` from [`grpc::status_for`], `grpc-message`). Returns the `grpc-status` sent.
/// (`reply.close` does not apply: the connection's other streams go on.)
pub(crate) fn h2_error(respond: &mut h2::server::SendResponse<Bytes>, reply: Reply<'_>, grpc_call: bool) -> Option<u8> {
    let reason = reply.reason;
    let detail = reply.detail.unwrap_or(reason.message());
    let mut head = http::Response::new(());
    if !grpc_call {
        *head.status_mut() = http::StatusCode::from_u16(reply.status()).unwrap_or(http::StatusCode::BAD_GATEWAY);
    }
    let h = head.headers_mut();
    h.insert("x-weir-error", http::HeaderValue::from_static(reason.as_str()));
    if grpc_call {
        let code = grpc::status_for(reason);
        h.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/grpc"));
        h.insert("grpc-status", http::HeaderValue::from(u16::from(code)));
        if let Ok(v) = http::HeaderValue::from_str(&grpc_message(detail)) {
            h.insert("grpc-message", v);
        }
        let _ = respond.send_response(head, true);
        return Some(code);
    }
    let body = format!("{detail}\n");
    h.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain; charset=utf-8"));
    h.insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(body.len()));
    if let Some(secs) = reply.retry_after_secs() {
        h.insert(http::header::RETRY_AFTER, http::HeaderValue::from(secs));
    }
    if reply.head_request {
        let _ = respond.send_response(head, true);
    } else if let Ok(mut send) = respond.send_response(head, false) {
        let _ = send.send_data(Bytes::from(body), true);
    }
    None
}

/// `text` percent-encoded as `grpc-message` wants it (everything outside printable ASCII, and `%`).
fn grpc_message(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.trim_end().bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Writes `100 Continue`; returns whether it was written.
pub(crate) async fn continue_100(conn: &mut Conn, write_timeout: Duration) -> bool {
    conn.write_all_by(CONTINUE_100.to_vec(), Wait::Idle(write_timeout)).await.0.is_ok()
}

/// Answers a connection over the limit: an HTTP client gets `503 overloaded` with
/// `Retry-After` (its request is not read, so the write side is shut and what it still sends
/// is drained briefly); a TCP client is just closed.
pub(crate) async fn shed(mut conn: Conn, http: bool, write_timeout: Duration) {
    if http && error(&mut conn, Reply { close: true, ..Reply::new(ErrorReason::Overloaded) }, write_timeout).await {
        conn.close_lingering(SHED_LINGER, 64 * 1024).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(reply: Reply<'_>) -> String {
        let mut out = Vec::new();
        reply.write(&mut out);
        String::from_utf8(out).expect("ascii")
    }

    #[test]
    fn errors_name_their_reason_and_say_what_was_wrong() {
        let t = text(Reply { detail: Some("CONNECT is not supported"), ..Reply::new(ErrorReason::NotImplemented) });
        assert!(t.starts_with("HTTP/1.1 501 Not Implemented\r\n"), "{t}");
        assert!(t.contains("x-weir-error: not-implemented\r\n") && t.contains("connection: close\r\n"), "{t}");
        assert!(t.ends_with("\r\n\r\nCONNECT is not supported\n"), "{t}");
        let t = text(Reply::new(ErrorReason::Overloaded));
        assert!(t.contains("retry-after: 1\r\n") && !t.contains("connection: close"), "{t}");
        let t = text(Reply { head_request: true, ..Reply::new(ErrorReason::NoRoute) });
        assert!(t.ends_with("\r\n\r\n") && t.contains("content-length: "), "a HEAD answer has no body: {t}");
        let t = text(Reply { retry_after: Some(3), ..Reply::new(ErrorReason::RateLimited) });
        assert!(t.starts_with("HTTP/1.1 429 ") && t.contains("retry-after: 3\r\n"), "{t}");
        assert!(t.contains("x-weir-error: rate-limited\r\n") && !t.contains("connection: close"), "{t}");
        let t = text(Reply { status: Some(418), ..Reply::new(ErrorReason::FaultInjected) });
        assert!(t.starts_with("HTTP/1.1 418 ") && t.contains("x-weir-error: fault-injected\r\n"), "{t}");
    }

    #[test]
    fn grpc_messages_are_percent_encoded() {
        assert_eq!(grpc_message("no endpoint: 100% busy\n"), "no endpoint: 100%25 busy");
        assert_eq!(grpc_message("caf\u{e9}"), "caf%C3%A9");
    }
}
