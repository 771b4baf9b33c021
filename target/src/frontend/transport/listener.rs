//! A frontend's TCP listener (the iSCSI portal, the NVMe/TCP listener): a
//! nonblocking listening socket on reactor 0, woken by an io_uring poll, whose
//! accepted connections are handed round-robin to the reactors, admitted and
//! registered there. One implementation for every frontend; what differs is the
//! [`Protocol`]. Stopping a frontend ([`stop_frontend`]) is the same for all.

use std::cell::Cell;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use io_uring::{opcode, types};

use super::{FrontendCore, Registry, Wire};
use crate::error::TargetError;
use crate::frontend::FrontendEnv;
use crate::reactor::{Msg, Reactor, UringDone};

/// Most connections accepted per readiness event (the poll is re-armed after).
const ACCEPT_BATCH: usize = 64;

/// What a frontend gives the shared transport: its shared state is `Self`.
pub(crate) trait Protocol: Sized + Send + Sync + 'static {
    /// How logs name the frontend: "iscsi", "nvmf".
    const NAME: &'static str;
    /// How logs and errors name a listener: "iscsi portal", "nvmf listener".
    const WHAT: &'static str;
    /// The frontend's connection (queue pair).
    type Conn: Wire;
    /// The frontend's id, stop flag and listening addresses.
    fn core(&self) -> &FrontendCore;
    /// Makes connection `id` for a socket accepted from `peer`, on reactor `r`;
    /// [`serve`] registers it and starts reading.
    fn connect(
        r: &Rc<Reactor>,
        shared: &Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        id: u64,
    ) -> Rc<Self::Conn>;
    /// `addr` was added to (`added`) or removed from the listening addresses
    /// by [`add`] or [`remove`]: logs it, and whatever else the frontend needs.
    fn addrs_changed(&self, addr: SocketAddr, added: bool);
}

/// A frontend's reactor-local registry of connections and listeners.
type RegistryOf<P> = Registry<<P as Protocol>::Conn, P>;

/// Serves a socket accepted from `peer` on reactor `r` (the listener's message
/// to the chosen reactor): admitted within [`super::MAX_CONNS_PER_REACTOR`],
/// registered, reading.
fn serve<P: Protocol>(r: &Rc<Reactor>, shared: Arc<P>, stream: TcpStream, peer: SocketAddr) {
    if shared.core().stopping() {
        return;
    }
    let Some(id) = RegistryOf::<P>::admit(r, peer) else {
        return;
    };
    let c = P::connect(r, &shared, stream, peer, id);
    log::debug!(
        "{}: connection {id} from {peer} on reactor {}",
        P::NAME,
        r.id()
    );
    r.local::<RegistryOf<P>>()
        .conns
        .borrow_mut()
        .insert((shared.core().id, id), Rc::clone(&c));
    c.on_readable();
}

/// Stops frontend `shared`: nothing more is accepted, and every reactor closes
/// the frontend's listeners and connections. Idempotent.
pub(crate) fn stop_frontend<P: Protocol>(target: &FrontendEnv, shared: &P) {
    shared.core().stopping.store(true, Ordering::Release);
    let fid = shared.core().id;
    if let Err(e) = target
        .reactors()
        .broadcast_blocking(move |r| RegistryOf::<P>::close_frontend(r, fid))
    {
        log::error!("{}: stop could not reach every reactor: {e}", P::NAME);
    }
}

/// Listens on one more address (`address:port`, port 0 picks one) for the
/// frontend `shared`; returns the bound address.
pub(crate) fn add<P: Protocol>(
    target: &Arc<FrontendEnv>,
    shared: &Arc<P>,
    addr: &str,
) -> Result<SocketAddr, TargetError> {
    let a: SocketAddr = addr
        .parse()
        .map_err(|e| TargetError::invalid(format!("{} {addr}", P::WHAT), format!("{e}")))?;
    if a.port() != 0 && shared.core().addrs().contains(&a) {
        return Err(TargetError::Exists {
            kind: P::WHAT,
            name: a.to_string(),
        });
    }
    let bound = start(target, shared, a)?;
    shared.core().addrs().push(bound);
    shared.addrs_changed(bound, true);
    Ok(bound)
}

/// Stops listening on `addr` (established connections stay).
pub(crate) fn remove<P: Protocol>(
    target: &Arc<FrontendEnv>,
    shared: &Arc<P>,
    addr: SocketAddr,
) -> Result<(), TargetError> {
    let fid = shared.core().id;
    let found = target.reactors().handles()[0]
        .call_blocking(move |r| stop::<P>(r, fid, addr))
        .map_err(|e| TargetError::Timeout {
            object: format!("{} {addr}", P::WHAT),
            reason: e.to_string(),
        })?;
    if !found {
        return Err(TargetError::NotFound {
            kind: P::WHAT,
            name: addr.to_string(),
        });
    }
    shared.core().addrs().retain(|p| *p != addr);
    shared.addrs_changed(addr, false);
    Ok(())
}

pub(crate) struct Listener<P: Protocol> {
    pub(crate) fid: u64,
    pub(crate) addr: SocketAddr,
    sock: TcpListener,
    reactor: Rc<Reactor>,
    shared: Arc<P>,
    next: Cell<usize>,
    closed: Cell<bool>,
    me: std::rc::Weak<Listener<P>>,
}

impl<P: Protocol> Listener<P> {
    fn arm(&self) {
        let Some(me) = self.me.upgrade() else { return };
        let e = opcode::PollAdd::new(types::Fd(self.sock.as_raw_fd()), libc::POLLIN as u32).build();
        // SAFETY: a poll references no memory; the fd stays open while the poll is
        // registered because the registration holds an Rc to this listener.
        unsafe { self.reactor.uring_push(e, me, 0) };
    }

    /// Stops accepting: shutdown wakes the pending poll, whose completion drops
    /// the last reference and closes the socket.
    pub(crate) fn close(&self) {
        if !self.closed.replace(true) {
            // SAFETY: shutdown on a socket we own.
            unsafe { libc::shutdown(self.sock.as_raw_fd(), libc::SHUT_RDWR) };
        }
    }

    fn dispatch(&self, stream: TcpStream, peer: SocketAddr) {
        let peers = self.reactor.peers();
        let n = peers.len();
        let start = self.next.get();
        self.next.set((start + 1) % n);
        let shared = Arc::clone(&self.shared);
        let mut msg: Msg = Box::new(move |r| serve(r, shared, stream, peer));
        for i in 0..n {
            let h = &peers[(start + i) % n];
            match h.try_send(msg) {
                Ok(()) => return,
                Err((full, m)) => {
                    log::warn!("{}: {full}; trying the next reactor for {peer}", P::WHAT);
                    msg = m;
                }
            }
        }
        log::error!(
            "{}: every reactor's ring is full; closing connection from {peer}",
            P::WHAT
        );
        drop(msg);
    }
}

impl<P: Protocol> UringDone for Listener<P> {
    fn uring_done(&self, _tag: u64, res: i32, _flags: u32) {
        if self.closed.get() || self.shared.core().stopping() {
            return;
        }
        if res < 0 && res != -libc::EINTR {
            log::error!(
                "{}: poll failed: {}",
                P::WHAT,
                std::io::Error::from_raw_os_error(-res)
            );
        }
        for _ in 0..ACCEPT_BATCH {
            match self.sock.accept() {
                Ok((s, peer)) => {
                    if s.set_nonblocking(true).is_err() {
                        continue;
                    }
                    let _ = s.set_nodelay(true);
                    self.dispatch(s, peer);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    log::warn!("{}: accept failed: {e}", P::WHAT);
                    break;
                }
            }
        }
        self.arm();
    }
}

/// Stops the listener of frontend `fid` bound to `addr` (runs on reactor 0).
fn stop<P: Protocol>(r: &Rc<Reactor>, fid: u64, addr: SocketAddr) -> bool {
    let reg = r.local::<RegistryOf<P>>();
    let listeners = &reg.listeners;
    let found: Vec<Rc<Listener<P>>> = listeners
        .borrow()
        .iter()
        .filter(|l| l.fid == fid && l.addr == addr)
        .cloned()
        .collect();
    listeners
        .borrow_mut()
        .retain(|l| !(l.fid == fid && l.addr == addr));
    for l in &found {
        l.close();
    }
    !found.is_empty()
}

/// Binds `addr` and starts accepting on reactor 0; returns the bound address.
/// The caller records the address (see [`add`]).
pub(crate) fn start<P: Protocol>(
    target: &Arc<FrontendEnv>,
    shared: &Arc<P>,
    addr: SocketAddr,
) -> Result<SocketAddr, TargetError> {
    let obj = || format!("{} {addr}", P::WHAT);
    let sock = TcpListener::bind(addr).map_err(|e| TargetError::Io {
        object: obj(),
        reason: format!("{e} (is another target listening there?)"),
    })?;
    sock.set_nonblocking(true).map_err(|e| TargetError::Io {
        object: obj(),
        reason: e.to_string(),
    })?;
    let bound = sock.local_addr().map_err(|e| TargetError::Io {
        object: obj(),
        reason: e.to_string(),
    })?;
    let shared = Arc::clone(shared);
    target.reactors().handles()[0]
        .call_blocking(move |r| {
            let fid = shared.core().id;
            let l = Rc::new_cyclic(|me| Listener {
                fid,
                addr: bound,
                sock,
                reactor: Rc::clone(r),
                shared,
                next: Cell::new(0),
                closed: Cell::new(false),
                me: me.clone(),
            });
            r.local::<RegistryOf<P>>()
                .listeners
                .borrow_mut()
                .push(Rc::clone(&l));
            l.arm();
        })
        .map_err(|e| TargetError::Timeout {
            object: obj(),
            reason: e.to_string(),
        })?;
    Ok(bound)
}
