//! The target's event stream: the event types (defined in plexd-target-api,
//! re-exported here and from the crate root) and [`EventBus`], the subscribers
//! every module publishes to (volume plex errors, lease expiry, PR OUT requests).

pub use plexd_target_api::info::{DetachPolicy, Event, EVENT_QUEUE_DEPTH};
use std::sync::Mutex;

struct Subscribers {
    senders: Vec<smol::channel::Sender<Event>>,
    dropped: u64,
}

/// The subscribers to a target's events, each with its own bounded queue of
/// [`EVENT_QUEUE_DEPTH`] events.
pub struct EventBus {
    subscribers: Mutex<Subscribers>,
}

impl Default for EventBus {
    fn default() -> Self {
        EventBus {
            subscribers: Mutex::new(Subscribers {
                senders: Vec::new(),
                dropped: 0,
            }),
        }
    }
}

impl EventBus {
    /// A new subscription to events. Each subscriber has its own bounded queue.
    pub fn subscribe(&self) -> smol::channel::Receiver<Event> {
        let (tx, rx) = smol::channel::bounded(EVENT_QUEUE_DEPTH);
        self.subscribers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .senders
            .push(tx);
        rx
    }

    /// Publishes an event to every subscriber without blocking (safe on reactors).
    /// Returns how many subscribers got it.
    pub fn publish(&self, ev: Event) -> usize {
        let mut subs = self.subscribers.lock().unwrap_or_else(|p| p.into_inner());
        subs.senders.retain(|s| !s.is_closed());
        let mut dropped = 0usize;
        for s in &subs.senders {
            if s.try_send(ev.clone()).is_err() {
                dropped += 1;
            }
        }
        if dropped > 0 {
            subs.dropped += dropped as u64;
            log::warn!("event {ev:?}: {dropped} subscriber queue(s) full, event dropped");
        }
        subs.senders.len() - dropped
    }
}
