//! The connection of an inline [`crate::KernelClient`]
//! ([`crate::KernelClient::connect_inline`]): its Cap'n Proto RPC system runs on
//! the calling thread while a call is in flight ([`Polled`]), with no connection
//! thread to hand the call to and no global I/O reactor to wake it: when nothing
//! can run, the caller waits in `poll(2)` on the socket itself, so the answer wakes
//! the caller directly.

use std::future::Future;
use std::time::Instant;

use plexd_proto::connection::{Polled, Stop};

/// An inline connection: its runner (whose executor holds the RPC system) and the
/// target's bootstrap capability.
pub(crate) struct Inline {
    polled: Polled,
    pub(crate) kernel: plexd_proto::kernel_capnp::kernel::Client,
}

// SAFETY: `Inline` is !Send only through what it owns: the Cap'n Proto objects
// (`Rc` inside the bootstrap client, and inside the RPC system, a task of the
// runner's executor), that executor's tasks, and the `Rc` of the socket's wakers
// that the runner shares with the socket inside that RPC system. Every one of them
// is reached only through this struct: the RPC system is a task of the runner,
// `kernel` and its clones are used only by futures that
// `KernelClient::call_inline` runs to completion (or drops) while it holds the
// mutex around this struct, and nothing of it is handed out (`Polled` gives out
// no `Rc`). So the non-atomic reference counts are only touched by the thread that
// holds that mutex, whose acquire and release order those accesses; moving the
// whole struct to another thread moves every `Rc` pointing into it at once. The
// executor's own state is thread-safe (its `!Send` marker is for its tasks), and no
// waker of it is given to another thread (no I/O reactor holds one: the socket is
// polled here).
unsafe impl Send for Inline {}

impl Inline {
    /// An inline connection run by `polled`: `rpc` is the RPC system built over
    /// its socket (spawned here).
    pub(crate) fn new(
        polled: Polled,
        rpc: impl Future<Output = ()> + 'static,
        kernel: plexd_proto::kernel_capnp::kernel::Client,
    ) -> Inline {
        polled.spawn(rpc);
        Inline { polled, kernel }
    }

    /// Runs `call` (and the connection) on this thread until it completes or
    /// `deadline` passes ([`Polled::run`]).
    pub(crate) fn run<T>(
        &self,
        call: impl Future<Output = T>,
        deadline: Instant,
    ) -> Result<T, Stop> {
        self.polled.run(call, deadline)
    }
}
