//! Heap blocks for a request's state machine, reused within a worker thread.
//!
//! A connection boxes its request's future (several KiB) so that an idle keep-alive connection
//! holds only its read buffer and a small future. [`Recycled`] is that box without an
//! allocation per request: a finished request's block goes to a short per-thread free list of
//! blocks of its layout, and the next request of any connection on the worker takes it from
//! there. Owns: the free list (at most [`KEEP`] blocks per thread, freed when the thread
//! ends). Must not: hand a block to a future of another layout, or move a future once it was
//! polled (it stays in its block until it is dropped there).

use std::alloc::{Layout, alloc, dealloc, handle_alloc_error};
use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::ptr::NonNull;
use std::task::{Context, Poll};

/// Free blocks a thread keeps (beyond that, a finished request's block is freed): enough for
/// the requests a worker has in flight at once in the common case, a few hundred KiB at most.
const KEEP: usize = 32;

/// A thread's free blocks, each with its layout.
struct FreeList(Vec<(Layout, NonNull<u8>)>);

impl Drop for FreeList {
    fn drop(&mut self) {
        for (layout, block) in self.0.drain(..) {
            // SAFETY: every block in the list came from `alloc(layout)` and is owned by the
            // list alone.
            unsafe { dealloc(block.as_ptr(), layout) };
        }
    }
}

thread_local! {
    static FREE: RefCell<FreeList> = const { RefCell::new(FreeList(Vec::new())) };
}

/// A future in a heap block of its own, like `Box::pin`, whose block is reused.
pub(crate) struct Recycled<F: Future> {
    /// Points to a live `F` in a block of `Layout::new::<F>()` (dangling when `F` has no size).
    fut: NonNull<F>,
}

impl<F: Future> Recycled<F> {
    /// Moves `fut` into a free block of its layout, or a new one.
    pub(crate) fn new(fut: F) -> Self {
        let layout = Layout::new::<F>();
        let block = if layout.size() == 0 {
            NonNull::<F>::dangling().cast::<u8>()
        } else {
            let reused = FREE
                .try_with(|free| {
                    let mut free = free.borrow_mut();
                    let at = free.0.iter().rposition(|(l, _)| *l == layout)?;
                    Some(free.0.swap_remove(at).1)
                })
                .ok()
                .flatten();
            reused.unwrap_or_else(|| {
                // SAFETY: `layout` has a non-zero size.
                NonNull::new(unsafe { alloc(layout) }).unwrap_or_else(|| handle_alloc_error(layout))
            })
        };
        let fut_ptr = block.cast::<F>();
        // SAFETY: the block is valid for writes of `F` (its layout is `F`'s, or `F` has no size)
        // and holds no live value.
        unsafe { fut_ptr.as_ptr().write(fut) };
        Recycled { fut: fut_ptr }
    }
}

impl<F: Future> Future for Recycled<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // SAFETY: the future is live in its block and never moves out of it: `Recycled` only
        // drops it in place.
        let fut = unsafe { Pin::new_unchecked(&mut *self.fut.as_ptr()) };
        fut.poll(cx)
    }
}

impl<F: Future> Drop for Recycled<F> {
    fn drop(&mut self) {
        // SAFETY: the future is live, and dropped exactly once, here.
        unsafe { std::ptr::drop_in_place(self.fut.as_ptr()) };
        let layout = Layout::new::<F>();
        if layout.size() == 0 {
            return;
        }
        let block = self.fut.cast::<u8>();
        let kept = FREE
            .try_with(|free| {
                let mut free = free.borrow_mut();
                let room = free.0.len() < KEEP;
                if room {
                    free.0.push((layout, block));
                }
                room
            })
            .unwrap_or(false);
        if !kept {
            // SAFETY: the block came from `alloc(layout)` (size non-zero) and nothing else
            // holds it.
            unsafe { dealloc(block.as_ptr(), layout) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;

    fn free_blocks() -> usize {
        FREE.with_borrow(|f| f.0.len())
    }

    fn ready<T>(f: &mut Recycled<impl Future<Output = T>>) -> T {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match Pin::new(f).poll(&mut cx) {
            Poll::Ready(v) => v,
            Poll::Pending => panic!("the future was not ready"),
        }
    }

    #[test]
    fn a_finished_future_s_block_serves_the_next_one_of_its_layout() {
        let big = [7u8; 3000];
        let mut first = Recycled::new(async move { big.iter().map(|&b| usize::from(b)).sum::<usize>() });
        let at = first.fut.cast::<u8>();
        assert_eq!(ready(&mut first), 21_000);
        drop(first);
        assert_eq!(free_blocks(), 1);
        let big = [1u8; 3000];
        let mut second = Recycled::new(async move { big.iter().map(|&b| usize::from(b)).sum::<usize>() });
        assert_eq!(second.fut.cast::<u8>(), at, "the block was not reused");
        assert_eq!(free_blocks(), 0);
        assert_eq!(ready(&mut second), 3000);
    }

    #[test]
    fn a_future_dropped_unfinished_drops_what_it_holds_and_the_list_stays_bounded() {
        let held = Rc::new(());
        let all: Vec<_> = (0..KEEP + 5)
            .map(|_| {
                let held = Rc::clone(&held);
                Recycled::new(async move {
                    std::future::pending::<()>().await;
                    drop(held);
                })
            })
            .collect();
        assert_eq!(Rc::strong_count(&held), KEEP + 6);
        drop(all);
        assert_eq!(Rc::strong_count(&held), 1, "a future's captures were not dropped");
        assert_eq!(free_blocks(), KEEP, "the free list kept more than {KEEP} blocks");
    }
}
