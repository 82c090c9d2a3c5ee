//! Which I/O path the current compio runtime uses: io_uring, or the blocking fallback
//! (compio's polling driver, which runs file operations on a thread pool) where io_uring
//! is unavailable (old kernel, `kernel.io_uring_disabled`, a seccomp profile).

use std::sync::atomic::{AtomicBool, Ordering};

use compio::driver::DriverType;

/// The I/O path in use on this thread's runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoMode {
    IoUring,
    /// Blocking file I/O on a thread pool, readiness polling for sockets.
    Fallback,
}

/// The mode of the current compio runtime; `None` outside one.
pub fn current() -> Option<IoMode> {
    compio::runtime::Runtime::try_with_current(|rt| match rt.driver_type() {
        DriverType::IoUring => IoMode::IoUring,
        _ => IoMode::Fallback,
    })
    .ok()
}

static WARNED: AtomicBool = AtomicBool::new(false);

/// Logs, once per process, that appends are not going through io_uring.
pub(crate) fn warn_once_if_fallback() {
    if current() == Some(IoMode::Fallback) && !WARNED.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            "io_uring is unavailable; file I/O runs on blocking threads. Check \
             `sysctl kernel.io_uring_disabled` (must be 0) and the container's seccomp profile"
        );
    }
}
