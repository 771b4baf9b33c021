//! A connection's share of the buffer pool: the chunks it holds per size class
//! (at most its fair share, `BufPool::user_cap`), its registrations with the
//! reactor's cache as a waiter when the pool is exhausted, and whether the pool
//! counts it as a user of a class. Which command gets a chunk stays with the
//! frontend (parked iSCSI tasks, waiting NVMe/TCP commands, in arrival order).

use std::rc::Rc;

use crate::buf::{BufPool, BufWait, BufWaiter, PoolBuf, SIZE_CLASSES_BYTES};
use crate::reactor::Reactor;

/// Number of pool size classes.
pub(crate) const CLASSES: usize = SIZE_CLASSES_BYTES.len();

/// A connection's use of the pool's size classes.
#[derive(Default)]
pub(crate) struct PoolShare {
    /// Chunks held (commands' buffers and queued output), per class.
    held: [u32; CLASSES],
    /// Registered as a waiter with the reactor's cache, per class.
    wait: [bool; CLASSES],
    /// Counted as a user of the class by the pool (`BufPool::set_user_active`).
    active: [bool; CLASSES],
}

impl PoolShare {
    /// Chunks held, over all classes.
    pub(crate) fn held_total(&self) -> u32 {
        self.held.iter().sum()
    }

    /// A buffer of `len` bytes within the share, or None: the class is at the
    /// connection's share or already waited for, or the pool has none now.
    /// With a `waiter`, the connection registers with the reactor's cache to
    /// be handed a chunk (`BufWaiter::buf_ready`) when the pool is exhausted.
    pub(crate) fn get(
        &mut self,
        r: &Reactor,
        len: usize,
        waiter: Option<Rc<dyn BufWaiter>>,
    ) -> Option<PoolBuf> {
        let c = BufPool::class_for(len)?;
        if self.held[c] as usize >= r.bufs().pool().user_cap(c) || self.wait[c] {
            // Resumes when the connection gives a buffer back.
            return None;
        }
        let mut b = match waiter {
            Some(w) => match r.bufs().get_or_wait(SIZE_CLASSES_BYTES[c], &w, c as u64) {
                Ok(BufWait::Ready(b)) => b,
                Ok(BufWait::Queued) => {
                    self.wait[c] = true;
                    return None;
                }
                Ok(BufWait::Full) | Err(_) => return None,
            },
            None => r.bufs().try_get(SIZE_CLASSES_BYTES[c])?,
        };
        self.held[c] += 1;
        // Holding one, the connection uses the class.
        self.sync(r, c, false);
        b.set_len(len);
        Some(b)
    }

    /// Gives `b` back to the reactor's cache; returns its class (the caller
    /// then [`PoolShare::sync`]s it).
    pub(crate) fn put(&mut self, r: &Reactor, b: PoolBuf) -> usize {
        let c = b.class();
        self.held[c] = self.held[c].saturating_sub(1);
        r.bufs().put(b);
        c
    }

    /// Tells the pool whether the connection uses class `c`: it holds chunks
    /// of it, or commands `waiting` for one.
    pub(crate) fn sync(&mut self, r: &Reactor, c: usize, waiting: bool) {
        let now = self.held[c] > 0 || waiting;
        if now != self.active[c] {
            self.active[c] = now;
            r.bufs().pool().set_user_active(c, now);
        }
    }

    /// The reactor's cache answered the waiter registration `tag` (a class).
    pub(crate) fn handed(&mut self, tag: u64) {
        if let Some(w) = self.wait.get_mut(tag as usize) {
            *w = false;
        }
    }

    /// Counts a chunk the cache handed over as held.
    pub(crate) fn adopt(&mut self, b: &PoolBuf) {
        self.held[b.class()] += 1;
    }
}
