//! Read pacing (`read_pacing_us`): a core that serves only clients that wait on no
//! answer sleeps one window at a time instead of waking at each arrival.
//!
//! At modest rates each message used to cost a core two wake-ups (the produce request,
//! then the consumer's next fetch request), each with its own read, ACK and fetch
//! response: the kernel's share of that (wake-ups, loopback TCP) was most of the CPU a
//! message cost. While pacing, the core's loop sleeps for a window, then takes
//! everything that arrived meanwhile in one pass: while it sleeps outside
//! `io_uring_enter`, the armed reads' completions queue as deferred task work without
//! waking it (`DEFER_TASKRUN`), and the next enter runs them all. The messages of a
//! window share one wake-up, one read per connection, and one fetch response.
//!
//! The price is at most one window of added latency for what arrives while the core
//! sleeps, so the core paces only while every request it serves is *unhurried*: an
//! acks=0 produce (no answer at all) or a consumer's fetch whose answer is small (a
//! consumer at the end of its partitions; a follower's fetch is hurried, as acks=all
//! producers wait on it).
//!
//! It stops as soon as the core serves anything hurried: a request a client waits on
//! (acks=1/all, metadata, groups, a big fetch answer; counted as it starts), a command
//! from another core on behalf of one (all but forwarded acks=0 batches), or a round of
//! this core's follower fetcher (acks=all producers wait on replication). It starts again
//! only after `CALM_WAKES` wake-ups without one, so a client that waits on its answers is
//! not paced while it keeps sending; one that sends a hurried request after a quiet spell
//! may find the core asleep and wait up to a window once. It also stops at the first
//! window that
//!
//! - ended a read with the socket not drained (data queued: pacing never limits
//!   throughput);
//! - served fewer than `WINDOW_REQUESTS_MIN` requests (the rate fell: below it a window
//!   would be a wake-up of its own, not one shared), or more than `WINDOW_REQUESTS_MAX`
//!   (a busy core: wake-ups are shared anyway, and an enter runs at most 20 completions'
//!   task work on kernels from 6.13, so more would wait another window);
//! - took half a window or more to serve (a core near its limit).
//!
//! While it paces, a consumer's fetch waits for the end of the pass that read it
//! (`end_of_pass`): served at once, one read before a producer's requests of the same
//! pass would answer without their records, which would then wait another window for
//! the consumer's next fetch (it halved the p50 added by pacing).
//!
//! It starts after `SHORT_WAITS` consecutive waits for completions that each ended
//! within a window (the core is woken more often than once per window).
//!
//! Requests report to the pacer through this thread's counters: a core is one thread.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// Consecutive waits shorter than a window before pacing starts.
const SHORT_WAITS: u32 = 2;
/// Wake-ups without a hurried request before pacing may start.
const CALM_WAKES: u32 = 8;
/// A window that served fewer requests ends pacing.
const WINDOW_REQUESTS_MIN: u64 = 2;
/// A window that served more requests ends pacing: the core is busy enough that its
/// wake-ups are shared anyway, and one `io_uring_enter` runs at most 20 completions'
/// deferred task work on kernels from 6.13, so what came beyond that would wait a window
/// more.
const WINDOW_REQUESTS_MAX: u64 = 16;

#[derive(Clone, Copy, Default)]
struct Counts {
    unhurried: u64,
    hurried: u64,
    backlogged: u64,
}

thread_local! {
    static COUNTS: Cell<Counts> = const {
        Cell::new(Counts { unhurried: 0, hurried: 0, backlogged: 0 })
    };
    /// Whether this core paces now: its `Pacer`'s state, kept here for `end_of_pass`.
    static PACING: Cell<bool> = const { Cell::new(false) };
    static PASS_END: RefCell<PassEnd> = const {
        RefCell::new(PassEnd { waiting: Vec::new(), spare: Vec::new(), passes: 0 })
    };
}

/// This core's waits for the end of its pass (`end_of_pass`).
struct PassEnd {
    /// Tasks waiting for the end of the pass.
    waiting: Vec<Waker>,
    /// An empty buffer that takes `waiting`'s place at the end of a pass: the two
    /// alternate, so ending a pass allocates nothing.
    spare: Vec<Waker>,
    /// Passes ended so far.
    passes: u64,
}

/// Waits, while this core paces, until it has run everything that is ready (the end of
/// the pass that serves a window's arrivals); at once otherwise.
///
/// A consumer's fetch read in a pass is served from what the log held when it was
/// handled: one handled before the same pass's produce requests answers without their
/// records, and those then wait a window more for the consumer's next fetch. Served at
/// the end of the pass, it carries them.
pub fn end_of_pass() -> impl Future<Output = ()> {
    EndOfPass {
        waiting_since: None,
        _this_thread: PhantomData,
    }
}

struct EndOfPass {
    /// The count of ended passes when this started waiting.
    waiting_since: Option<u64>,
    /// The wait is this thread's (the waker list and counter are thread-local).
    _this_thread: PhantomData<*const ()>,
}

impl Future for EndOfPass {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        PASS_END.with(|cell| {
            let mut pass_end = cell.borrow_mut();
            match self.waiting_since {
                None if !PACING.with(Cell::get) => Poll::Ready(()),
                Some(since) if pass_end.passes != since => Poll::Ready(()),
                _ => {
                    self.waiting_since.get_or_insert(pass_end.passes);
                    if !pass_end.waiting.iter().any(|w| w.will_wake(cx.waker())) {
                        pass_end.waiting.push(cx.waker().clone());
                    }
                    Poll::Pending
                }
            }
        })
    }
}

/// Ends the core's pass: wakes the tasks waiting for it. Whether there were any (then
/// they must run before the core sleeps or waits).
pub fn end_pass() -> bool {
    let woken = PASS_END.with(|cell| {
        let mut pass_end = cell.borrow_mut();
        if pass_end.waiting.is_empty() {
            return None;
        }
        pass_end.passes = pass_end.passes.wrapping_add(1);
        let spare = std::mem::take(&mut pass_end.spare);
        Some(std::mem::replace(&mut pass_end.waiting, spare))
    });
    let Some(mut woken) = woken else {
        return false;
    };
    // Woken outside the borrow: a waker may run code that waits for a pass again.
    for waker in woken.drain(..) {
        waker.wake();
    }
    PASS_END.with(|cell| cell.borrow_mut().spare = woken);
    true
}

/// Counts a request served by this core: `unhurried` when its client waits on no answer
/// (see the module's description).
pub fn note_request(unhurried: bool) {
    COUNTS.with(|c| {
        let mut n = c.get();
        if unhurried {
            n.unhurried = n.unhurried.wrapping_add(1);
        } else {
            n.hurried = n.hurried.wrapping_add(1);
        }
        c.set(n);
    });
}

/// Counts a read that left data in its socket (the reader's buffer was filled).
pub fn note_backlog() {
    COUNTS.with(|c| {
        let mut n = c.get();
        n.backlogged = n.backlogged.wrapping_add(1);
        c.set(n);
    });
}

fn counts() -> Counts {
    COUNTS.with(Cell::get)
}

/// One core's pacing state, driven by its loop (`broker::drive`).
pub struct Pacer {
    window: Duration,
    short_waits: u32,
    calm_wakes: u32,
    /// The counters at the last decision.
    seen: Counts,
    /// The first decision after pacing starts judges the wake-up that started it, not a
    /// window: it is skipped (but a hurried request always stops pacing).
    judge: bool,
    /// When the last pacing sleep ended.
    woke_at: Option<Instant>,
}

impl Pacer {
    /// `window` zero: never paces.
    pub fn new(window: Duration) -> Self {
        PACING.with(|p| p.set(false));
        Self {
            window,
            short_waits: 0,
            calm_wakes: 0,
            seen: counts(),
            judge: false,
            woke_at: None,
        }
    }

    fn set_pacing(&mut self, pacing: bool) {
        PACING.with(|p| p.set(pacing));
    }

    fn pacing(&self) -> bool {
        PACING.with(Cell::get)
    }

    pub fn enabled(&self) -> bool {
        !self.window.is_zero()
    }

    /// Counters since the last call.
    fn since_last(&mut self) -> Counts {
        let now = counts();
        let delta = Counts {
            unhurried: now.unhurried.wrapping_sub(self.seen.unhurried),
            hurried: now.hurried.wrapping_sub(self.seen.hurried),
            backlogged: now.backlogged.wrapping_sub(self.seen.backlogged),
        };
        self.seen = now;
        delta
    }

    /// Called when the core has nothing queued: the window to sleep before taking what
    /// arrived, or `None` to wait for completions as usual.
    pub fn window(&mut self) -> Option<Duration> {
        if !self.pacing() {
            return None;
        }
        let served = self.since_last();
        let judged = std::mem::replace(&mut self.judge, true);
        // A pass that took half a window or more: the core is near its limit, and a
        // sleep would cost throughput.
        let long_pass = self
            .woke_at
            .is_some_and(|at| at.elapsed() >= self.window / 2);
        let total = served.unhurried + served.hurried;
        let stop = served.hurried > 0
            || (judged
                && (served.backlogged > 0
                    || long_pass
                    || !(WINDOW_REQUESTS_MIN..=WINDOW_REQUESTS_MAX).contains(&total)));
        if stop {
            self.set_pacing(false);
            self.short_waits = 0;
            if served.hurried > 0 {
                self.calm_wakes = 0;
            }
            return None;
        }
        Some(self.window)
    }

    /// Called when a pacing sleep ends, before what came meanwhile is taken.
    pub fn slept(&mut self) {
        self.woke_at = Some(Instant::now());
    }

    /// Called after a wait for completions that took `waited`, before what it brought
    /// is run.
    pub fn woke_after(&mut self, waited: Duration) {
        if !self.enabled() {
            return;
        }
        // What the previous wake-up served (its tasks ran since the last call).
        let served = self.since_last();
        if served.hurried > 0 || served.backlogged > 0 {
            self.calm_wakes = 0;
        } else {
            self.calm_wakes = self.calm_wakes.saturating_add(1);
        }
        if waited < self.window {
            self.short_waits = self.short_waits.saturating_add(1);
        } else {
            self.short_waits = 0;
        }
        if self.short_waits >= SHORT_WAITS && self.calm_wakes >= CALM_WAKES {
            self.set_pacing(true);
            self.judge = false;
            self.woke_at = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Duration = Duration::from_micros(200);

    fn busy_unhurried(pacer: &mut Pacer, wakes: u32) {
        for _ in 0..wakes {
            note_request(true);
            pacer.woke_after(Duration::from_micros(50));
        }
    }

    #[test]
    fn given_frequent_unhurried_requests_should_pace_until_a_hurried_one() {
        let mut pacer = Pacer::new(W);
        busy_unhurried(&mut pacer, CALM_WAKES + 1);
        assert_eq!(
            pacer.window(),
            Some(W),
            "the wake-up that started it is not judged"
        );
        note_request(true);
        note_request(true);
        assert_eq!(
            pacer.window(),
            Some(W),
            "a window of two unhurried requests"
        );
        note_request(true);
        note_request(false);
        assert_eq!(pacer.window(), None, "a hurried request ends pacing");
        busy_unhurried(&mut pacer, CALM_WAKES - 1);
        assert_eq!(pacer.window(), None, "not calm for long enough yet");
    }

    #[test]
    fn given_a_client_waiting_on_every_answer_should_never_pace() {
        let mut pacer = Pacer::new(W);
        for _ in 0..1000 {
            note_request(false);
            pacer.woke_after(Duration::from_micros(30));
            assert_eq!(pacer.window(), None);
        }
    }

    #[test]
    fn given_a_backlogged_socket_or_a_thin_window_should_stop_pacing() {
        let mut pacer = Pacer::new(W);
        busy_unhurried(&mut pacer, CALM_WAKES + 1);
        assert!(pacer.window().is_some());
        note_request(true);
        note_request(true);
        note_backlog();
        assert_eq!(pacer.window(), None, "data left queued in a socket");

        busy_unhurried(&mut pacer, CALM_WAKES + 1);
        assert!(pacer.window().is_some());
        note_request(true);
        assert_eq!(pacer.window(), None, "one request in a window");
    }

    #[test]
    fn given_a_hurried_request_right_after_pacing_starts_or_a_crowded_window_should_stop() {
        let mut pacer = Pacer::new(W);
        busy_unhurried(&mut pacer, CALM_WAKES + 1);
        note_request(false);
        assert_eq!(pacer.window(), None, "hurried, even in the first window");

        busy_unhurried(&mut pacer, CALM_WAKES + 1);
        assert!(pacer.window().is_some());
        for _ in 0..=WINDOW_REQUESTS_MAX {
            note_request(true);
        }
        assert_eq!(pacer.window(), None, "more than a window should hold");
    }

    fn poll_once(future: &mut Pin<Box<dyn Future<Output = ()>>>) -> Poll<()> {
        future
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()))
    }

    #[test]
    fn given_a_pacing_core_a_fetch_should_wait_for_the_end_of_the_pass() {
        let mut pacer = Pacer::new(W);
        let mut at_once: Pin<Box<dyn Future<Output = ()>>> = Box::pin(end_of_pass());
        assert_eq!(poll_once(&mut at_once), Poll::Ready(()), "not pacing yet");
        assert!(!end_pass(), "nothing waited");

        busy_unhurried(&mut pacer, CALM_WAKES + 1);
        let mut first: Pin<Box<dyn Future<Output = ()>>> = Box::pin(end_of_pass());
        let mut second: Pin<Box<dyn Future<Output = ()>>> = Box::pin(end_of_pass());
        assert_eq!(poll_once(&mut first), Poll::Pending);
        assert_eq!(poll_once(&mut second), Poll::Pending);
        assert_eq!(
            poll_once(&mut first),
            Poll::Pending,
            "polled again, same pass"
        );
        assert!(
            end_pass(),
            "they waited (one entry: both share the noop waker)"
        );
        assert_eq!(poll_once(&mut first), Poll::Ready(()));
        assert_eq!(poll_once(&mut second), Poll::Ready(()));
        assert!(!end_pass(), "both were taken");

        // Pacing stops (one request in a window): a waiter from before still ends with
        // the pass, and a new one does not wait.
        let mut late: Pin<Box<dyn Future<Output = ()>>> = Box::pin(end_of_pass());
        assert_eq!(poll_once(&mut late), Poll::Pending);
        assert!(pacer.window().is_some());
        note_request(true);
        assert_eq!(pacer.window(), None);
        let mut after: Pin<Box<dyn Future<Output = ()>>> = Box::pin(end_of_pass());
        assert_eq!(poll_once(&mut after), Poll::Ready(()));
        assert!(end_pass());
        assert_eq!(poll_once(&mut late), Poll::Ready(()));
    }

    #[test]
    fn given_slow_arrivals_or_no_window_should_not_pace() {
        let mut pacer = Pacer::new(W);
        for _ in 0..100 {
            note_request(true);
            pacer.woke_after(Duration::from_millis(1));
            assert_eq!(pacer.window(), None);
        }
        let mut off = Pacer::new(Duration::ZERO);
        busy_unhurried(&mut off, 100);
        assert_eq!(off.window(), None);
    }
}
