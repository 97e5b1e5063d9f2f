//! A worker's timers, kept by weir instead of the runtime: every deadline of the data path
//! (header and idle reads, attempts, backoffs, heartbeats) is an entry in a per-thread heap, and
//! one `timerfd` armed at the earliest live deadline wakes the thread through an io_uring poll.
//! compio's own timers cost a heap allocation on every turn of its loop while any timer is
//! pending (it splits its timer map to find the expired ones); these cost none once the heap and
//! the slot table have grown to the worker's load. Registering a timer is a heap push (plus one
//! `timerfd_settime` only when it is earlier than the armed one); dropping one frees its slot
//! and leaves a stale heap entry, skipped when it reaches the top and swept out when stale
//! entries outnumber live ones. Must not: be used from more than one thread (each thread has
//! its own table and its own driver task), or wake a timer before its deadline.

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// Stale heap entries tolerated beyond twice the live ones before a sweep.
const SWEEP_SLACK: usize = 1024;

/// One registered deadline.
#[derive(Debug)]
struct Slot {
    /// Bumped whenever the slot is freed, so that a heap entry can tell it is stale.
    generation: u32,
    /// Whether a [`Sleep`] holds the slot.
    used: bool,
    /// Its deadline passed and it was woken.
    fired: bool,
    waker: Option<Waker>,
}

/// A thread's timers.
#[derive(Debug)]
struct Timers {
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// (deadline, slot, generation), earliest first.
    heap: BinaryHeap<Reverse<(Instant, u32, u32)>>,
    live: usize,
    /// What the timerfd is set to (`None`: disarmed).
    armed: Option<Instant>,
    fd: OwnedFd,
}

thread_local! {
    /// This thread's timers; made, with their driver task, by the first timer registered on
    /// the thread's runtime, and cleared when that task ends with the runtime.
    static TIMERS: RefCell<Option<Timers>> = const { RefCell::new(None) };
}

impl Timers {
    fn new() -> io::Result<Timers> {
        // SAFETY: timerfd_create takes no pointers; the result is checked before use.
        let fd = unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_NONBLOCK | libc::TFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a descriptor just created and owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Timers { slots: Vec::new(), free: Vec::new(), heap: BinaryHeap::new(), live: 0, armed: None, fd })
    }

    fn is_stale(&self, slot: u32, generation: u32) -> bool {
        let s = &self.slots[slot as usize];
        !s.used || s.generation != generation
    }

    fn register(&mut self, deadline: Instant, waker: &Waker) -> (u32, u32) {
        let slot = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(Slot { generation: 0, used: false, fired: false, waker: None });
                (self.slots.len() - 1) as u32
            }
        };
        let s = &mut self.slots[slot as usize];
        s.used = true;
        s.fired = false;
        s.waker = Some(waker.clone());
        let generation = s.generation;
        self.live += 1;
        if self.heap.len() > 2 * self.live + SWEEP_SLACK {
            let slots = &self.slots;
            self.heap.retain(|Reverse((_, i, g))| slots[*i as usize].used && slots[*i as usize].generation == *g);
        }
        self.heap.push(Reverse((deadline, slot, generation)));
        if self.armed.is_none_or(|a| deadline < a) {
            self.arm(Some(deadline));
        }
        (slot, generation)
    }

    fn release(&mut self, slot: u32, generation: u32) {
        let s = &mut self.slots[slot as usize];
        if s.used && s.generation == generation {
            s.used = false;
            s.generation = s.generation.wrapping_add(1);
            s.waker = None;
            self.live -= 1;
            self.free.push(slot);
        }
    }

    /// Wakes every live timer whose deadline is not after `now`, drops the stale entries
    /// that reach the top, and arms the timerfd at the earliest live deadline left.
    fn fire(&mut self, now: Instant) {
        while let Some(&Reverse((deadline, slot, generation))) = self.heap.peek() {
            if self.is_stale(slot, generation) {
                self.heap.pop();
                continue;
            }
            if deadline > now {
                self.arm(Some(deadline));
                return;
            }
            self.heap.pop();
            let s = &mut self.slots[slot as usize];
            s.fired = true;
            if let Some(w) = s.waker.take() {
                w.wake();
            }
        }
        self.arm(None);
    }

    /// Sets the timerfd to `deadline` (relative to now, at least 1 ns ahead), or disarms it.
    fn arm(&mut self, deadline: Option<Instant>) {
        let after = deadline
            .map_or(Duration::ZERO, |d| d.saturating_duration_since(Instant::now()).max(Duration::from_nanos(1)));
        let spec = libc::itimerspec {
            it_interval: libc::timespec { tv_sec: 0, tv_nsec: 0 },
            it_value: libc::timespec {
                tv_sec: after.as_secs() as libc::time_t,
                tv_nsec: i64::from(after.subsec_nanos()),
            },
        };
        // SAFETY: `spec` is a valid itimerspec on the stack; the old value is not asked for.
        let rc = unsafe { libc::timerfd_settime(self.fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
        // A timerfd of ours with a valid spec cannot fail to be set; were it to, the timers
        // would wait for the next registration or firing to be armed again.
        debug_assert_eq!(rc, 0, "timerfd_settime: {}", io::Error::last_os_error());
        self.armed = deadline;
    }
}

/// The task that waits on the thread's timerfd and fires what is due.
async fn drive(fd: compio::runtime::fd::PollFd<OwnedFd>) {
    /// Clears the thread's table when the runtime drops this task, so that a later runtime
    /// on the same thread starts afresh.
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            let _ = TIMERS.try_with(|t| t.borrow_mut().take());
        }
    }
    let _reset = Reset;
    loop {
        if fd.read_ready().await.is_err() {
            return;
        }
        let mut expirations = [0u8; 8];
        // SAFETY: reads at most 8 bytes into the 8-byte stack buffer; the fd is non-blocking.
        let _ = unsafe { libc::read(fd.as_raw_fd(), expirations.as_mut_ptr().cast(), expirations.len()) };
        TIMERS.with(|t| {
            if let Some(t) = t.borrow_mut().as_mut() {
                t.fire(Instant::now());
            }
        });
    }
}

/// This thread's timers, made with their driver on first use.
fn with_timers<R>(f: impl FnOnce(&mut Timers) -> R) -> R {
    TIMERS.with(|cell| {
        let mut t = cell.borrow_mut();
        if t.is_none() {
            let timers = Timers::new().expect("a timerfd for the worker's timers");
            let dup = timers.fd.try_clone().expect("a second descriptor of the timerfd");
            let poll = compio::runtime::fd::PollFd::new(dup).expect("polling the timerfd");
            compio::runtime::spawn(drive(poll)).detach();
            *t = Some(timers);
        }
        f(t.as_mut().expect("made above"))
    })
}

/// Completes at `deadline`.
#[derive(Debug)]
pub(crate) struct Sleep {
    deadline: Instant,
    /// (slot, generation) once registered.
    key: Option<(u32, u32)>,
}

impl Sleep {
    pub(crate) fn until(deadline: Instant) -> Sleep {
        Sleep { deadline, key: None }
    }
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match self.key {
            None => {
                if self.deadline <= crate::io::now() {
                    return Poll::Ready(());
                }
                let deadline = self.deadline;
                self.key = Some(with_timers(|t| t.register(deadline, cx.waker())));
                Poll::Pending
            }
            Some((slot, generation)) => with_timers(|t| {
                let s = &mut t.slots[slot as usize];
                if s.generation != generation || s.fired {
                    return Poll::Ready(());
                }
                if !s.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    s.waker = Some(cx.waker().clone());
                }
                Poll::Pending
            }),
        }
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let Some((slot, generation)) = self.key {
            // The table is gone once the runtime's driver task ended (thread teardown).
            let _ = TIMERS.try_with(|t| {
                if let Some(t) = t.borrow_mut().as_mut() {
                    t.release(slot, generation);
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime() -> compio::runtime::Runtime {
        compio::runtime::Runtime::new().expect("runtime")
    }

    #[test]
    fn timers_fire_in_deadline_order_and_never_early() {
        runtime().block_on(async {
            let start = Instant::now();
            let order = std::rc::Rc::new(RefCell::new(Vec::new()));
            let mut tasks = Vec::new();
            for (i, ms) in [30u64, 10, 20].into_iter().enumerate() {
                let order = order.clone();
                tasks.push(compio::runtime::spawn(async move {
                    let deadline = start + Duration::from_millis(ms);
                    Sleep::until(deadline).await;
                    assert!(Instant::now() >= deadline, "woken before its deadline");
                    order.borrow_mut().push(i);
                }));
            }
            for t in tasks {
                t.await.expect("task");
            }
            assert_eq!(*order.borrow(), vec![1, 2, 0]);
        });
    }

    #[test]
    fn a_dropped_timer_frees_its_slot_and_stale_entries_are_swept() {
        runtime().block_on(async {
            // Many timers registered and dropped unfired (the common case: a deadline around
            // I/O that completes first) keep the heap bounded.
            for _ in 0..10 * SWEEP_SLACK {
                let sleep = std::pin::pin!(Sleep::until(Instant::now() + Duration::from_secs(60)));
                let polled = futures_util::poll!(sleep);
                assert!(polled.is_pending());
            }
            let (live, heap, slots) = with_timers(|t| (t.live, t.heap.len(), t.slots.len()));
            assert_eq!((live, slots), (0, 1), "one slot, reused");
            assert!(heap <= SWEEP_SLACK + 3, "stale entries swept: {heap}");
            // A timer still fires after all that.
            Sleep::until(Instant::now() + Duration::from_millis(5)).await;
        });
    }

    #[test]
    fn a_past_deadline_is_ready_at_once() {
        runtime().block_on(async {
            let sleep = std::pin::pin!(Sleep::until(Instant::now() - Duration::from_millis(1)));
            assert!(futures_util::poll!(sleep).is_ready());
        });
    }
}
