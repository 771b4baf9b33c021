//! The network thread: one `smol::LocalExecutor` runs the node's server (ctl calls
//! and the peers' `Peer.deliver`, [`super::ctl`]) and the sender of every peer
//! connection ([`super::transport`]). One thread for all of them: an event on any
//! of their sockets is handled by the thread that polled it, not handed on to
//! another (with a thread per connection, smol's shared reactor often woke one
//! thread to wake the next), and a burst of messages to several peers costs one
//! wake-up.

use std::rc::Rc;

use smol::LocalExecutor;

use super::ctl::Server;
use super::transport::PeerTask;

/// Starts the network thread with `server` and the peers' `senders`.
pub fn start(server: Server, senders: Vec<PeerTask>) -> Result<(), String> {
    std::thread::Builder::new()
        .name("net".into())
        .spawn(move || {
            let ex = Rc::new(LocalExecutor::new());
            for s in senders {
                ex.spawn(s.run()).detach();
            }
            smol::block_on(ex.run(server.serve(Rc::clone(&ex))));
        })
        .map(|_| ())
        .map_err(|e| format!("cannot start the network thread: {e}"))
}
