//! Pool buffers of a connection: its fair share per size class, parked commands
//! waiting for a buffer (in arrival order) and the hand-off from the reactor's
//! cache when the pool was exhausted.

use super::*;

impl Conn {
    /// Gives a pool buffer back and accounts for it.
    pub(super) fn put_buf(&self, st: &mut St, b: PoolBuf) {
        let c = st.share.put(&self.link.reactor, b);
        st.need_serve = true;
        self.sync_active(st, c);
    }

    /// Tells the pool whether this connection uses class `c` (fair shares).
    pub(super) fn sync_active(&self, st: &mut St, c: usize) {
        // A closed connection still uses a class while it holds its buffers.
        let waiting = !st.closed && st.parked_n[c] > 0;
        st.share.sync(&self.link.reactor, c, waiting);
    }

    /// Publishes the buffer counters of the session.
    pub(super) fn publish(&self, st: &St) {
        if let Some(s) = &st.session {
            let held = st.share.held_total();
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
        if st.blocked_on_send() {
            // Resumes when its socket drains.
            return None;
        }
        let waiter: Option<Rc<dyn BufWaiter>> = if queue { Some(self.rc()?) } else { None };
        st.share.get(&self.link.reactor, len, waiter)
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
            st.share.handed(tag);
            if st.closed {
                drop(st);
                self.link.reactor.bufs().put(buf);
                return;
            }
            st.share.adopt(&buf);
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
