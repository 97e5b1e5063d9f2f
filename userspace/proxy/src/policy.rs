//! A request's traffic policy, whatever codec carried it: admission to its service (the
//! service's rate limit, then its pending limit), routing within the service on the parsed
//! head (HTTP/1.1 heads and HTTP/2 streams are both read through [`RouteInput`]), the route's
//! header edits, and its faults (a delay held here, an abort answered by the caller), counted
//! per route and backend. Must not: write to the client, allocate on the HTTP/1.1 path, or
//! hold the state borrow across an `.await`.

use std::time::Instant;

use weir_core::config::HeaderEdits;
use weir_core::outcome::ErrorReason;
use weir_core::ratelimit::Caller;
use weir_core::route::RouteInput;
use weir_core::stats::FaultKind;

use crate::ctx::Ctx;
use crate::http::RequestHead;
use crate::record::Requester;
use crate::state::Scope;

/// An HTTP/1.1 request head, as routing reads it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct H1Input<'a> {
    pub head: &'a RequestHead,
    pub src: &'a [u8],
}

impl RouteInput for H1Input<'_> {
    fn method(&self) -> &[u8] {
        self.head.method_span.get(self.src)
    }

    fn target(&self) -> &[u8] {
        match self.head.path.get(self.src) {
            [] => b"/",
            p => p,
        }
    }

    fn has_header(&self, name: &str, value: &[u8]) -> bool {
        self.head.headers.iter().any(|f| {
            f.name.get(self.src).eq_ignore_ascii_case(name.as_bytes()) && f.value.get(self.src).trim_ascii() == value
        })
    }
}

/// An HTTP/2 request, as routing reads it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct H2Input<'a>(pub &'a http::request::Parts);

impl RouteInput for H2Input<'_> {
    fn method(&self) -> &[u8] {
        self.0.method.as_str().as_bytes()
    }

    fn target(&self) -> &[u8] {
        self.0.uri.path_and_query().map_or(b"/", |p| p.as_str().as_bytes())
    }

    fn has_header(&self, name: &str, value: &[u8]) -> bool {
        self.0.headers.get_all(name).iter().any(|v| v.as_bytes().trim_ascii() == value)
    }
}

/// Why a request was not admitted to its service.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Refused {
    pub reason: ErrorReason,
    /// `Retry-After` seconds (a rate limit's next token).
    pub retry_after: Option<u32>,
}

/// Who a rate limit counts a request against: the caller's cgroup when weir steered its
/// connection (so that workloads sharing an address are told apart), else its peer address.
pub(crate) fn caller(who: &Requester) -> Caller {
    who.caller.map_or(Caller::Addr(who.peer.ip()), Caller::Workload)
}

/// Admits a request from `who` to `scope`'s service: its rate limit, then its pending limit
/// (a request admitted here is released by the caller when it finishes).
pub(crate) fn admit(ctx: &Ctx, scope: &Scope, who: &Requester) -> Result<(), Refused> {
    let mut state = ctx.state.borrow_mut();
    if let Err(limited) = state.rate_limit(scope, caller(who), ctx.now_ns()) {
        return Err(Refused { reason: ErrorReason::RateLimited, retry_after: Some(limited.retry_after_secs()) });
    }
    if !state.admit(scope) {
        return Err(Refused { reason: ErrorReason::Overloaded, retry_after: None });
    }
    Ok(())
}

/// Routes a request within `scope`'s service: `scope` becomes the routed one. `false` when no
/// route matches (the caller answers 404 `no-route`).
pub(crate) fn route(ctx: &Ctx, scope: &mut Scope, req: &impl RouteInput) -> bool {
    let routed = ctx.state.borrow_mut().route(scope, req, crate::io::now());
    match routed {
        Some(s) => {
            *scope = s;
            true
        }
        None => false,
    }
}

/// What a route's fault did to a request.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Fault {
    /// The request was held for the route's delay; it goes on from now.
    pub delayed: Option<Instant>,
    /// Answer with this status instead of forwarding.
    pub abort: Option<u16>,
}

/// Applies the route's fault, after routing and before the upstream: a delay (held here),
/// then an abort (the caller answers it with `fault-injected`; it is never retried). Each
/// is decided on its own, by its percentage, and counted.
pub(crate) async fn fault(ctx: &Ctx, scope: &Scope) -> Fault {
    let f = &scope.route().fault;
    let mut out = Fault::default();
    let Some(route) = scope.route_index().filter(|_| f.any()) else { return out };
    if !f.delay.is_zero() && ctx.state.borrow_mut().roll(f.delay_percent) {
        count(ctx, scope, route, FaultKind::Delay);
        crate::io::sleep(f.delay).await;
        out.delayed = Some(crate::io::now());
    }
    if ctx.state.borrow_mut().roll(f.abort_percent) {
        count(ctx, scope, route, FaultKind::Abort);
        out.abort = Some(f.abort_status);
    }
    out
}

fn count(ctx: &Ctx, scope: &Scope, route: u16, kind: FaultKind) {
    if let Some(stats) = ctx.state.borrow_mut().stats(scope) {
        stats.route_mut(route, &scope.backend().name).fault(kind);
    }
}

/// The route's header edits on an HTTP/1.1 head: removed fields and those it sets are no
/// longer forwarded (the set values are written with the head: [`crate::plan::Plan`]).
pub(crate) fn edit_h1(head: &mut RequestHead, src: &[u8], edits: &HeaderEdits) {
    for name in &edits.remove {
        head.remove_header(src, name.as_bytes());
    }
    for (name, _) in &edits.set {
        head.remove_header(src, name.as_bytes());
    }
}

/// The route's header edits on an HTTP/2 request's fields.
pub(crate) fn edit_h2(headers: &mut http::HeaderMap, edits: &HeaderEdits) {
    for name in &edits.remove {
        headers.remove(name.as_str());
    }
    for (name, value) in &edits.set {
        if let (Ok(n), Ok(v)) = (http::HeaderName::from_bytes(name.as_bytes()), http::HeaderValue::from_str(value)) {
            headers.insert(n, v);
        }
    }
}
