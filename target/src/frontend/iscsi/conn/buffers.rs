//! Pool buffers of a connection: its fair share per size class, parked commands
//! waiting for a buffer (in arrival order) and the hand-off from the reactor's
//! cache when the pool was exhausted.

use super::*;

impl Conn {
    /// The pool behind the reactor's cache.
    pub(super) fn pool(&self) -> &Arc<BufPool> {
        self.reactor.bufs().pool()
    }

    /// Gives a pool buffer back and accounts for it.
    pub(super) fn put_buf(&self, st: &mut St, b: PoolBuf) {
        let c = b.class();
        st.held[c] = st.held[c].saturating_sub(1);
        self.reactor.bufs().put(b);
        st.need_serve = true;
        self.sync_active(st, c);
    }

    /// Tells the pool whether this connection uses class `c` (fair shares).
    pub(super) fn sync_active(&self, st: &mut St, c: usize) {
        // A closed connection still uses a class while it holds its buffers.
        let now = st.held[c] > 0 || (!st.closed && st.parked_n[c] > 0);
        if now != st.active[c] {
            st.active[c] = now;
            self.pool().set_user_active(c, now);
        }
    }

    /// Publishes the buffer counters of the session.
    pub(super) fn publish(&self, st: &St) {
        if let Some(s) = &st.session {
            let held: u32 = st.held.iter().sum();
            s.stats
                .buffers_held
                .store(u64::from(held), Ordering::Relaxed);
            s.stats
                .cmds_waiting_buf
                .store(st.parked.len() as u64, Ordering::Relaxed);
            s.stats
                .send_blocked_ms
                .store(st.send_blocked_ms(), Ordering::Relaxed);
        }
    }

    /// A buffer of `len` bytes for a task, within this connection's share and
    /// only while its socket drains; None when the task must wait. With
    /// `queue`, the connection registers with the reactor's cache to be handed a
    /// chunk when the pool is exhausted.
    pub(super) fn alloc_buf(&self, st: &mut St, len: usize, queue: bool) -> Option<PoolBuf> {
        let c = BufPool::class_for(len)?;
        if st.held[c] as usize >= self.pool().user_cap(c) || st.blocked_on_send() {
            // Resumes when the connection gives a buffer back or its socket drains.
            return None;
        }
        if st.buf_wait[c] {
            return None;
        }
        let b = if queue {
            let me = self.rc()?;
            let w: Rc<dyn BufWaiter> = me;
            match self
                .reactor
                .bufs()
                .get_or_wait(SIZE_CLASSES_BYTES[c], &w, c as u64)
            {
                Ok(BufWait::Ready(b)) => b,
                Ok(BufWait::Queued) => {
                    st.buf_wait[c] = true;
                    return None;
                }
                Ok(BufWait::Full) | Err(_) => return None,
            }
        } else {
            self.reactor.bufs().try_get(SIZE_CLASSES_BYTES[c])?
        };
        st.held[c] += 1;
        self.sync_active(st, c);
        let mut b = b;
        b.set_len(len);
        Some(b)
    }

    /// Gives buffers to parked tasks, oldest first per class, while they can have
    /// them; registers as a waiter where the pool is exhausted.
    pub(super) fn serve_parked(&self, st: &mut St) {
        st.need_serve = false;
        if st.closed || st.parked.is_empty() {
            return;
        }
        for c in 0..CLASSES {
            // Bounded: each round unparks a task or stops.
            while st.parked_n[c] > 0 {
                let Some(key) = st
                    .parked
                    .iter()
                    .copied()
                    .find(|k| BufPool::class_for(st.tasks[*k].need_buf as usize) == Some(c))
                else {
                    break;
                };
                let need = st.tasks[key].need_buf as usize;
                match self.alloc_buf(st, need, true) {
                    Some(b) => self.unpark(st, key, b),
                    None => break,
                }
            }
        }
    }

    /// A parked task got its buffer: take its early data and go on.
    pub(super) fn unpark(&self, st: &mut St, key: usize, mut b: PoolBuf) {
        self.forget_parked(st, key);
        let t = &mut st.tasks[key];
        b.set_len(t.need_buf as usize);
        let n = t.early.len().min(b.len());
        b.bytes_mut()[..n].copy_from_slice(&t.early[..n]);
        t.early = Vec::new();
        t.buf = Some(b);
        self.start_task(st, key);
    }

    /// Removes a parked task from the parked bookkeeping (not from `tasks`).
    pub(super) fn forget_parked(&self, st: &mut St, key: usize) {
        let Some(t) = st.tasks.get_mut(key) else {
            return;
        };
        if !t.parked {
            return;
        }
        t.parked = false;
        st.parked_bytes = st.parked_bytes.saturating_sub(t.early_reserved as usize);
        t.early_reserved = 0;
        if let Some(c) = BufPool::class_for(t.need_buf as usize) {
            st.parked_n[c] = st.parked_n[c].saturating_sub(1);
            st.parked.retain(|k| *k != key);
            self.sync_active(st, c);
        }
    }

    /// Runs at the end of every entry point: parked tasks whose buffers came
    /// back proceed, counters are published.
    pub(super) fn after(&self, st: &mut St) {
        if st.need_serve {
            self.serve_parked(st);
        }
        self.publish(st);
    }
}

impl BufWaiter for Conn {
    /// The reactor's cache hands over a chunk of class `tag` (the connection
    /// registered when the pool was exhausted): the oldest parked task of the
    /// class takes it.
    fn buf_ready(&self, tag: u64, buf: PoolBuf) {
        {
            let mut st = self.st.borrow_mut();
            let c = buf.class();
            if let Some(w) = st.buf_wait.get_mut(tag as usize) {
                *w = false;
            }
            if st.closed {
                drop(st);
                self.reactor.bufs().put(buf);
                return;
            }
            st.held[c] += 1;
            let key = st
                .parked
                .iter()
                .copied()
                .find(|k| BufPool::class_for(st.tasks[*k].need_buf as usize) == Some(c));
            match key {
                Some(k) => self.unpark(&mut st, k, buf),
                // Not needed any more (the task was aborted): give it back.
                None => self.put_buf(&mut st, buf),
            }
            st.need_serve = true;
            self.after(&mut st);
        }
        self.mark_dirty();
    }
}
