//! The control thread: one `smol::LocalExecutor` runs the daemon's main loop, the
//! node's server (ctl calls and the peers' streams, [`super::ctl`]) and the
//! sender of every peer connection ([`super::transport`]). A peer message goes from
//! the socket to the main loop and from the main loop to the socket without a thread
//! hand-off (with a thread each, a message crossed three or four threads on each
//! node, smol's shared reactor thread often among them), and a burst of messages to
//! several peers costs one wake-up. The main loop must not block the thread for
//! long (it waits for inputs and the driver asynchronously); the slow work is the
//! driver thread's.

use std::future::Future;
use std::rc::Rc;

use smol::LocalExecutor;

use super::ctl::Server;
use super::transport::PeerTask;

/// Runs `main` (the main loop) on this thread with `server` and the peers'
/// `senders` beside it, until `main` ends; the server and senders end with the
/// process.
pub fn run<T>(server: Server, senders: Vec<PeerTask>, main: impl Future<Output = T>) -> T {
    let ex = Rc::new(LocalExecutor::new());
    for s in senders {
        ex.spawn(s.run()).detach();
    }
    ex.spawn(server.serve(Rc::clone(&ex))).detach();
    smol::block_on(ex.run(main))
}
