//! The worker's clock: one `clock_gettime` per task poll instead of one per question. A
//! request asks the time a dozen times (deadlines of each read and write, the attempt's start
//! and latency, pool idle times, the access-log duration); within one poll of its task all of
//! those happen in the same few microseconds, so the first answer is kept until the poll
//! returns. Every task weir spawns is polled through [`Clocked`]; outside one (the control
//! thread, tests), [`now`] reads the clock every time. Must not: be read across a blocking
//! call within one poll (there is none on a worker), or hand out a time later than the real one
//! (a kept time is only ever earlier, so a deadline is never judged passed early).

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

/// The clock of the task poll in progress on this thread.
#[derive(Clone, Copy)]
enum Kept {
    /// No task of weir's is being polled: read the clock every time.
    Off,
    /// A poll began and has not asked yet.
    Unread,
    /// The time the poll in progress first asked.
    At(Instant),
}

thread_local! {
    static KEPT: Cell<Kept> = const { Cell::new(Kept::Off) };
}

/// Now, as of the first question in this task poll (see the module header).
pub fn now() -> Instant {
    KEPT.with(|k| match k.get() {
        Kept::At(t) => t,
        Kept::Unread => {
            let t = Instant::now();
            k.set(Kept::At(t));
            t
        }
        Kept::Off => Instant::now(),
    })
}

/// A future whose every poll keeps its first reading of the clock (what [`crate::io::spawn`]
/// spawns).
pub(crate) struct Clocked<F>(pub(crate) F);

impl<F: Future> Future for Clocked<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // SAFETY: structural pinning of the only field; it is never moved out.
        let inner = unsafe { self.map_unchecked_mut(|c| &mut c.0) };
        let outer = KEPT.with(|k| k.replace(Kept::Unread));
        let out = inner.poll(cx);
        KEPT.with(|k| k.set(outer));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_poll_reads_the_clock_once_and_the_next_poll_anew() {
        let mut times = Vec::new();
        let mut polls = 0;
        let fut = std::future::poll_fn(|cx| {
            polls += 1;
            let a = now();
            // Real time moves on within the poll; the kept time does not.
            let spin = Instant::now();
            while Instant::now() == spin {}
            assert_eq!(now(), a, "a second question in the same poll gets the same answer");
            assert!(a <= Instant::now(), "never later than the real clock");
            times.push(a);
            if polls < 2 {
                cx.waker().wake_by_ref();
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        });
        crate::io::Runtime::new().expect("runtime").block_on(Clocked(fut));
        assert_eq!(times.len(), 2);
        assert!(times[1] > times[0], "each poll reads the clock anew");
        // Outside a clocked poll, every question reads the clock.
        let a = now();
        let spin = Instant::now();
        while Instant::now() == spin {}
        assert!(now() > a);
    }
}
