//! Heap blocks a worker reuses for the one large future each HTTP/1.1 request runs: the
//! request's state machine (3.3 KiB) is kept off the connection's own future, so that an idle
//! keep-alive connection stays small, and instead of a `Box` per request it lives in a block
//! from a per-thread free list, given back when the request ends. Must not: move a future once
//! placed (it may be self-referential), outlive or cross its thread (`Recycled` is neither
//! `Send` nor `Sync`), or keep more than [`KEEP`] idle blocks (memory goes back beyond that).

use std::cell::RefCell;
use std::future::Future;
use std::marker::PhantomData;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::ptr::NonNull;
use std::task::{Context, Poll};

/// Bytes in a block: the largest future placed in one (an in-flight request holds one).
pub(crate) const BLOCK_BYTES: usize = 4 * 1024;
/// Idle blocks a thread keeps (64 KiB).
const KEEP: usize = 16;

/// One block, aligned for any future the data path makes.
#[repr(C, align(16))]
struct Block([MaybeUninit<u8>; BLOCK_BYTES]);

thread_local! {
    static FREE: RefCell<Vec<Box<Block>>> = const { RefCell::new(Vec::new()) };
}

/// A future in a recycled block, or in a `Box` of its own when it does not fit one.
pub(crate) struct Recycled<F: Future> {
    inner: Inner<F>,
}

enum Inner<F: Future> {
    /// Points at the start of a leaked `Box<Block>` that holds an `F`.
    Block(NonNull<F>, PhantomData<F>),
    Boxed(Pin<Box<F>>),
}

impl<F: Future> Recycled<F> {
    /// Places `fut` in a block from this thread's free list (or a new one).
    pub(crate) fn new(fut: F) -> Recycled<F> {
        if size_of::<F>() > BLOCK_BYTES || align_of::<F>() > align_of::<Block>() {
            return Recycled { inner: Inner::Boxed(Box::pin(fut)) };
        }
        let block = FREE
            .with(|f| f.borrow_mut().pop())
            // SAFETY: a `Block` is bytes that may be uninitialised, so an uninitialised one is
            // a valid value.
            .unwrap_or_else(|| unsafe { Box::<Block>::new_uninit().assume_init() });
        let ptr = Box::into_raw(block).cast::<F>();
        // SAFETY: `ptr` is the start of a live block of BLOCK_BYTES bytes aligned to 16, and `F`
        // fits both (checked above); the block is owned by this value from here on.
        unsafe { ptr.write(fut) };
        // SAFETY: `Box::into_raw` never returns null.
        Recycled { inner: Inner::Block(unsafe { NonNull::new_unchecked(ptr) }, PhantomData) }
    }
}

// The future lives behind a pointer (in its block or its box) and never moves with this value.
impl<F: Future> Unpin for Recycled<F> {}

impl<F: Future> Future for Recycled<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        match &mut self.get_mut().inner {
            // SAFETY: the `F` at `ptr` is initialised, owned by this value and never moved
            // until it is dropped in place, so pinning it is sound.
            Inner::Block(ptr, _) => unsafe { Pin::new_unchecked(ptr.as_mut()) }.poll(cx),
            Inner::Boxed(b) => b.as_mut().poll(cx),
        }
    }
}

impl<F: Future> Drop for Recycled<F> {
    fn drop(&mut self) {
        if let Inner::Block(ptr, _) = self.inner {
            // SAFETY: the `F` at `ptr` is initialised and dropped exactly once, here; then the
            // block it lived in goes back into a `Box<Block>`, the type it was leaked from.
            let block = unsafe {
                std::ptr::drop_in_place(ptr.as_ptr());
                Box::from_raw(ptr.as_ptr().cast::<Block>())
            };
            let _ = FREE.try_with(|f| {
                let mut f = f.borrow_mut();
                if f.len() < KEEP {
                    f.push(block);
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;

    fn block_on<F: Future>(fut: F) -> F::Output {
        compio::runtime::Runtime::new().expect("runtime").block_on(fut)
    }

    fn free_blocks() -> usize {
        FREE.with(|f| f.borrow().len())
    }

    #[test]
    fn a_block_is_reused_and_its_future_dropped_once() {
        let token = Rc::new(());
        let held = token.clone();
        let fut = Recycled::new(async move {
            let _held = held;
            7
        });
        assert_eq!(Rc::strong_count(&token), 2);
        assert_eq!(block_on(fut), 7);
        assert_eq!(Rc::strong_count(&token), 1, "the future was dropped with its captures");
        assert_eq!(free_blocks(), 1, "its block went back");
        // Unpolled and dropped: the same block, taken and given back again.
        drop(Recycled::new(async { 1 }));
        assert_eq!(free_blocks(), 1);
    }

    #[test]
    fn a_self_referential_future_runs_in_place() {
        let fut = Recycled::new(async {
            let local = [3u8; 64];
            let r = &local;
            futures_util::future::ready(()).await;
            r.iter().map(|&b| u32::from(b)).sum::<u32>()
        });
        assert_eq!(block_on(fut), 192);
    }

    #[test]
    fn a_future_too_large_for_a_block_gets_its_own_box_and_idle_blocks_are_bounded() {
        let big = [1u8; BLOCK_BYTES + 1];
        let fut = Recycled::new(async move { big.len() });
        assert!(matches!(fut.inner, Inner::Boxed(_)));
        assert_eq!(block_on(fut), BLOCK_BYTES + 1);
        let many: Vec<_> = (0..KEEP + 5).map(|i| Recycled::new(async move { i })).collect();
        drop(many);
        assert_eq!(free_blocks(), KEEP);
    }
}
