//! Broker-wide limits that keep one client, or a crowd of them, from taking the broker's
//! memory or its connection slots: connections in total and per client address (counted
//! by the acceptor thread, released when a connection ends), and a byte budget for
//! request frames in flight across all cores (Kafka's `queued.max.request.bytes`): a
//! connection waits before reading a frame over 64 KiB until its bytes fit in the budget.
//!
//! In-flight requests per connection need no counter: a connection reads its next
//! request only after the previous response is written (as Kafka's broker does), so the
//! bound is one, and pipelined requests wait in the kernel's socket buffer.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use event_listener::Event;

/// Which connection limit refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `max_connections` open already.
    Total,
    /// `max_connections_per_ip` open already from this address.
    PerIp,
}

/// Open connections, in total and per client address. Locked only when a connection
/// is accepted or closed, never on the request path.
pub struct ConnectionLimits {
    max_total: usize,
    max_per_ip: usize,
    open: AtomicUsize,
    per_ip: std::sync::Mutex<HashMap<IpAddr, usize>>,
}

impl ConnectionLimits {
    pub fn new(max_total: usize, max_per_ip: usize) -> Self {
        Self {
            max_total,
            max_per_ip,
            open: AtomicUsize::new(0),
            per_ip: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// Connections open now (held slots).
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    fn per_ip(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.per_ip
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes a slot for a connection from `ip`, or says which limit refuses it.
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Result<ConnectionSlot, Refusal> {
        let ip = ip.to_canonical();
        let mut per_ip = self.per_ip();
        if self.open.load(Ordering::Relaxed) >= self.max_total {
            return Err(Refusal::Total);
        }
        let count = per_ip.entry(ip).or_insert(0);
        if *count >= self.max_per_ip {
            return Err(Refusal::PerIp);
        }
        *count += 1;
        self.open.fetch_add(1, Ordering::Relaxed);
        Ok(ConnectionSlot {
            limits: Arc::clone(self),
            ip,
        })
    }

    fn release(&self, ip: IpAddr) {
        let mut per_ip = self.per_ip();
        if let Some(count) = per_ip.get_mut(&ip) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                per_ip.remove(&ip);
            }
        }
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One open connection's place in the limits, given back when dropped (whether the
/// connection ends, or a core refuses it before serving it).
pub struct ConnectionSlot {
    limits: Arc<ConnectionLimits>,
    ip: IpAddr,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.limits.release(self.ip);
    }
}

/// Bytes of request frames read (or being read) and not yet answered, across all cores.
pub struct RequestMemory {
    limit: usize,
    used: AtomicUsize,
    waiting: AtomicUsize,
    waits: AtomicU64,
    released: Event,
}

impl RequestMemory {
    /// `limit` must be at least the largest frame, or that frame would wait forever
    /// (`BrokerConfig::validate` checks it).
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            used: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            waits: AtomicU64::new(0),
            released: Event::new(),
        }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes held by requests now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Connections waiting for budget now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Times a connection had to wait for budget, since start.
    pub fn waits(&self) -> u64 {
        self.waits.load(Ordering::Relaxed)
    }

    fn try_take(&self, bytes: usize) -> bool {
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            if used.saturating_add(bytes) > self.limit {
                return false;
            }
            match self.used.compare_exchange_weak(
                used,
                used + bytes,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(now) => used = now,
            }
        }
    }

    /// Takes `bytes` now if they fit in the budget and no request is waiting for it (this
    /// never jumps the queue); `None` otherwise, and nothing waits.
    pub fn try_acquire(self: &Arc<Self>, bytes: usize) -> Option<MemoryPermit> {
        if self.waiting() > 0 {
            return None;
        }
        self.try_take(bytes).then(|| self.permit(bytes))
    }

    /// The permit for `bytes` just taken.
    fn permit(self: &Arc<Self>, bytes: usize) -> MemoryPermit {
        MemoryPermit {
            memory: Arc::clone(self),
            bytes,
        }
    }

    /// Waits until `bytes` fit in the budget and takes them. A frame larger than the
    /// whole budget is taken once nothing else is held, so it cannot wait forever.
    pub async fn acquire(self: &Arc<Self>, bytes: usize) -> MemoryPermit {
        let bytes = bytes.min(self.limit);
        if !self.try_take(bytes) {
            self.waits.fetch_add(1, Ordering::Relaxed);
            self.waiting.fetch_add(1, Ordering::Relaxed);
            // Counts the wait out however it ends (taken, or the connection dropped).
            struct Waiting<'a>(&'a AtomicUsize);
            impl Drop for Waiting<'_> {
                fn drop(&mut self) {
                    self.0.fetch_sub(1, Ordering::Relaxed);
                }
            }
            let _waiting = Waiting(&self.waiting);
            loop {
                // Listen before the second try, so a release in between is not missed.
                let listener = self.released.listen();
                if self.try_take(bytes) {
                    break;
                }
                listener.await;
                if self.try_take(bytes) {
                    break;
                }
            }
        }
        self.permit(bytes)
    }
}

/// Budget held by one request; returned when dropped.
pub struct MemoryPermit {
    memory: Arc<RequestMemory>,
    bytes: usize,
}

impl Drop for MemoryPermit {
    fn drop(&mut self) {
        self.memory.used.fetch_sub(self.bytes, Ordering::AcqRel);
        // Every waiter re-checks: a small release may fit one and not another.
        self.memory.released.notify(usize::MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_limits_count_total_and_per_ip_and_release_on_drop() {
        let limits = Arc::new(ConnectionLimits::new(3, 2));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = limits.try_acquire(a).unwrap();
        let _a2 = limits.try_acquire(a).unwrap();
        assert_eq!(limits.try_acquire(a).err(), Some(Refusal::PerIp));
        let _b1 = limits.try_acquire(b).unwrap();
        assert_eq!(limits.try_acquire(b).err(), Some(Refusal::Total));
        assert_eq!(limits.open(), 3);
        drop(a1);
        assert_eq!(limits.open(), 2);
        // An IPv4-mapped IPv6 address is the same client.
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        let _a3 = limits.try_acquire(mapped).unwrap();
        assert_eq!(limits.try_acquire(a).err(), Some(Refusal::Total));
    }

    #[test]
    fn request_memory_try_acquire_takes_only_what_fits_now() {
        let memory = Arc::new(RequestMemory::new(100));
        let first = memory.try_acquire(70).unwrap();
        assert!(
            memory.try_acquire(40).is_none(),
            "nothing waits, nothing taken"
        );
        assert_eq!((memory.used(), memory.waits()), (70, 0));
        let second = memory.try_acquire(30).unwrap();
        assert_eq!(memory.used(), 100);
        drop((first, second));
        assert_eq!(memory.used(), 0);
        // Behind a request waiting for the budget, nothing is taken even where it fits.
        compio::runtime::Runtime::new().unwrap().block_on(async {
            let held = memory.acquire(90).await;
            let m = Arc::clone(&memory);
            let waiter = compio::runtime::spawn(async move { m.acquire(50).await });
            compio::time::sleep(std::time::Duration::from_millis(20)).await;
            assert_eq!(memory.waiting(), 1);
            assert!(memory.try_acquire(5).is_none(), "it would jump the queue");
            drop(held);
            drop(waiter.await.unwrap());
        });
    }

    #[test]
    fn request_memory_waits_until_bytes_fit() {
        compio::runtime::Runtime::new().unwrap().block_on(async {
            let memory = Arc::new(RequestMemory::new(100));
            let first = memory.acquire(60).await;
            assert_eq!(memory.used(), 60);
            let m = Arc::clone(&memory);
            let second = compio::runtime::spawn(async move { m.acquire(50).await });
            compio::time::sleep(std::time::Duration::from_millis(20)).await;
            assert_eq!(memory.used(), 60, "the second request waits");
            assert_eq!(memory.waiting(), 1);
            drop(first);
            let second = second.await.unwrap();
            assert_eq!(memory.used(), 50);
            assert_eq!((memory.waiting(), memory.waits()), (0, 1));
            drop(second);
            // Larger than the whole budget: taken alone rather than never.
            let huge = memory.acquire(1000).await;
            assert_eq!(memory.used(), 100);
            drop(huge);
            assert_eq!(memory.used(), 0);
        });
    }
}
