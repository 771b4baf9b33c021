//! The copy of one range of a volume from one plex to another, inside the data plane:
//! the kernel interface's `copyRange`, the step a plex resync repeats chunk by chunk.
//!
//! The range is mapped through the volume's own committed layout ([`PlexMap::map`],
//! the mapping the I/O path uses), read from the source plex's subdisk bdevs into one
//! pool buffer and written from it to the target plex's subdisk bdevs, on a reactor;
//! no data crosses the control socket.
//!
//! Contract: a copy does **not** quiesce. The caller holds the cluster's fence for the
//! whole call (the volume is quiesced on every node that serves it, so no host write
//! lands on the range between the read and the write); the call checks what it can
//! see, that the volume is quiesced on this data plane, and refuses otherwise. The
//! source plex must be ACTIVE and the target plex SYNCING; the range must be
//! block-aligned, inside the volume and at most [`MAX_COPY_BYTES`] long. A shared
//! volume is copied only while this data plane's lease is valid.
//!
//! [`PlexMap::map`]: super::spec::PlexMap::map

use std::cell::RefCell;
use std::rc::{Rc, Weak};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use super::spec::{Layout, PlexState};
use super::Volumes;
use crate::bdev::{BdevChannel, BdevIo, IoCallback, IoDone, IoKind, IoStatus};
use crate::buf::{BufWait, BufWaiter, PoolBuf};
use crate::error::TargetError;
use crate::lease::LeaseState;
use crate::reactor::{Msg, Reactor, CONTROL_SEND_TIMEOUT};
use crate::services::Services;

pub use plexd_target_api::volume::MAX_COPY_BYTES;

// One copy takes one pool buffer.
const _: () = assert!(
    MAX_COPY_BYTES as usize
        <= crate::buf::SIZE_CLASSES_BYTES[crate::buf::SIZE_CLASSES_BYTES.len() - 1]
);
/// How long the caller waits for a copy's reads and writes (below the kernel
/// client's default call timeout, so the answer is the target's, not the client's).
pub const COPY_TIMEOUT: Duration = Duration::from_secs(20);

/// What one phase of a copy submits: per subdisk piece, the bdev's channel, the
/// device offset, the offset in the buffer and the length.
struct Piece {
    chan: Rc<dyn BdevChannel>,
    bdev: String,
    dev_offset: u64,
    buf_offset: u64,
    len: u64,
}

struct CopyState {
    buf: Option<PoolBuf>,
    kind: IoKind,
    pieces: Vec<Piece>,
    left: usize,
    failed: Option<String>,
    answer: Option<mpsc::Sender<Result<(), String>>>,
}

/// One copy, living on its reactor until its writes complete.
struct CopyOp {
    me: Weak<CopyOp>,
    reactor: Rc<Reactor>,
    layout: Arc<Layout>,
    source: usize,
    target: usize,
    offset: u64,
    len: u64,
    st: RefCell<CopyState>,
}

impl CopyOp {
    /// Starts the copy on reactor `r`: a buffer now, or when the pool has one.
    fn start(
        r: &Rc<Reactor>,
        layout: Arc<Layout>,
        source: usize,
        target: usize,
        offset: u64,
        len: u64,
        answer: mpsc::Sender<Result<(), String>>,
    ) {
        let op = Rc::new_cyclic(|me| CopyOp {
            me: me.clone(),
            reactor: Rc::clone(r),
            layout,
            source,
            target,
            offset,
            len,
            st: RefCell::new(CopyState {
                buf: None,
                kind: IoKind::Read,
                pieces: Vec::new(),
                left: 0,
                failed: None,
                answer: Some(answer),
            }),
        });
        let waiter: Rc<dyn BufWaiter> = Rc::clone(&op) as Rc<dyn BufWaiter>;
        // len <= MAX_COPY_BYTES (checked by the caller), so it fits a usize.
        match r.bufs().get_or_wait(len as usize, &waiter, 0) {
            Ok(BufWait::Ready(b)) => op.begin(b),
            Ok(BufWait::Queued) => {}
            Ok(BufWait::Full) => op.finish(Err(format!(
                "no {len}-byte pool buffer on reactor {} and its waiter queue is full",
                r.id()
            ))),
            Err(e) => op.finish(Err(e.to_string())),
        }
    }

    fn begin(&self, buf: PoolBuf) {
        self.st.borrow_mut().buf = Some(buf);
        self.submit(IoKind::Read);
    }

    /// Submits the reads (from the source plex) or the writes (to the target plex).
    fn submit(&self, kind: IoKind) {
        let Some(me) = self.me.upgrade() else {
            return;
        };
        let plex = &self.layout.plexes[if kind == IoKind::Read {
            self.source
        } else {
            self.target
        }];
        let mut pieces = Vec::new();
        let mut err = None;
        plex.map
            .map(self.offset, self.len, |col, sdi, in_sd, in_req, l| {
                if err.is_some() {
                    return;
                }
                let sd = &plex.columns[col][sdi];
                match self.reactor.channel(&sd.bdev) {
                    Ok(chan) => pieces.push(Piece {
                        chan,
                        bdev: sd.bdev.name().to_string(),
                        dev_offset: sd.offset_bytes + in_sd,
                        buf_offset: in_req,
                        len: l,
                    }),
                    Err(e) => err = Some(format!("bdev {}: {e}", sd.bdev.name())),
                }
            });
        if let Some(e) = err {
            self.finish(Err(format!("plex {}: {e}", plex.name)));
            return;
        }
        let io = {
            let mut st = self.st.borrow_mut();
            let Some(buf) = st.buf.as_ref() else {
                drop(st);
                self.finish(Err("the copy lost its buffer".into()));
                return;
            };
            let io = buf.io();
            st.kind = kind;
            st.left = pieces.len();
            st.pieces = pieces;
            io
        };
        let st = self.st.borrow();
        for (tag, p) in st.pieces.iter().enumerate() {
            // Completions run later from the reactor loop, never inside submit, so
            // holding the state borrow here is fine.
            p.chan.submit(BdevIo {
                kind,
                offset_bytes: p.dev_offset,
                len_bytes: p.len,
                buf: io.slice(p.buf_offset as usize, p.len as usize),
                cb: IoCallback::new(Rc::clone(&me) as Rc<dyn IoDone>, tag as u64),
            });
        }
    }

    /// Gives the buffer back and answers the caller.
    fn finish(&self, result: Result<(), String>) {
        let (buf, answer) = {
            let mut st = self.st.borrow_mut();
            st.pieces.clear();
            (st.buf.take(), st.answer.take())
        };
        if let Some(b) = buf {
            self.reactor.bufs().put(b);
        }
        if let Some(tx) = answer {
            // The caller may have given up waiting (its timeout); nothing to do then.
            let _ = tx.send(result);
        }
    }
}

impl BufWaiter for CopyOp {
    fn buf_ready(&self, _tag: u64, buf: PoolBuf) {
        self.begin(buf);
    }
}

impl IoDone for CopyOp {
    fn io_done(&self, tag: u64, status: IoStatus) {
        let (next, failed) = {
            let mut st = self.st.borrow_mut();
            if let IoStatus::Failed(errno) = status {
                if st.failed.is_none() {
                    let what = if st.kind == IoKind::Read {
                        "read"
                    } else {
                        "write"
                    };
                    let plex = if st.kind == IoKind::Read {
                        &self.layout.plexes[self.source].name
                    } else {
                        &self.layout.plexes[self.target].name
                    };
                    let piece = st.pieces.get(tag as usize).map_or_else(
                        || "an unknown piece".to_string(),
                        |p| format!("bdev {} at {}+{}", p.bdev, p.dev_offset, p.len),
                    );
                    st.failed = Some(format!(
                        "{what} of plex {plex} on {piece} failed: {}",
                        std::io::Error::from_raw_os_error(errno)
                    ));
                }
            }
            st.left = st.left.saturating_sub(1);
            if st.left > 0 {
                return;
            }
            (st.kind, st.failed.take())
        };
        match (next, failed) {
            (_, Some(e)) => self.finish(Err(e)),
            (IoKind::Read, None) => self.submit(IoKind::Write),
            (_, None) => self.finish(Ok(())),
        }
    }
}

/// Copies `[offset_bytes, offset_bytes + len_bytes)` of `volume` from plex
/// `source` (ACTIVE) to plex `target` (SYNCING) through their subdisks, on a
/// reactor, with one pool buffer. Does not quiesce: the volume must already be
/// quiesced on this data plane, and the caller must hold the cluster's fence
/// (every node quiesced) for the whole call (module docs). Refusals are typed
/// ([`TargetError::Invalid`] / [`TargetError::NotFound`]) and name the volume and
/// plex; a failed read or write is [`TargetError::Io`] naming the plex and bdev.
pub(crate) fn copy_range(
    vols: &Volumes,
    volume: &str,
    source: &str,
    target: &str,
    offset_bytes: u64,
    len_bytes: u64,
) -> Result<(), TargetError> {
    let layout = layout_to_copy(vols, volume, source, target)?;
    let src = copy_plex(&layout, volume, source, PlexState::Active, "source")?;
    let dst = copy_plex(&layout, volume, target, PlexState::Syncing, "target")?;
    check_copy_range(&layout, volume, src, dst, offset_bytes, len_bytes)?;
    run_copy(
        &vols.svc,
        volume,
        layout,
        (src, source),
        (dst, target),
        offset_bytes,
        len_bytes,
    )
}

/// The volume's current layout, when a copy may run now: the volume is quiesced
/// here and its lease (shared or private, [`crate::lease::LeaseScope`]) holds.
fn layout_to_copy(
    vols: &Volumes,
    volume: &str,
    source: &str,
    target: &str,
) -> Result<Arc<Layout>, TargetError> {
    let shared = vols.volume_shared(volume)?;
    let vobj = format!("volume {volume}");
    let (layout, quiesced) = {
        let c = shared.ctl();
        (Arc::clone(&c.current), c.quiesced)
    };
    if !quiesced {
        return Err(TargetError::invalid(
            vobj,
            format!(
                "copy of plex {source} to plex {target} refused: the volume is not quiesced \
                 on this data plane (copyRange runs under the caller's fence)"
            ),
        ));
    }
    // A shared volume needs a valid lease; a private one a private-group lease
    // that did not run out (none granted yet: served).
    let lease = if layout.spec.shared {
        (vols.lease().status().state != LeaseState::Valid)
            .then_some("a shared volume and this data plane's lease")
    } else {
        (vols.private_lease().status().state == LeaseState::Expired)
            .then_some("a private volume and this data plane's private-group lease")
    };
    if let Some(what) = lease {
        return Err(TargetError::invalid(
            vobj,
            format!("copy of plex {source} to plex {target} refused: {what} is not valid"),
        ));
    }
    Ok(layout)
}

/// The index of plex `name` in `layout`, which must be in state `want` to be the
/// copy's `role` ("source" or "target").
fn copy_plex(
    layout: &Layout,
    volume: &str,
    name: &str,
    want: PlexState,
    role: &str,
) -> Result<usize, TargetError> {
    let i = layout
        .plexes
        .iter()
        .position(|p| &*p.name == name)
        .ok_or_else(|| TargetError::NotFound {
            kind: "plex",
            name: format!("{name} (volume {volume})"),
        })?;
    let state = layout.plexes[i].state;
    if state != want {
        return Err(TargetError::invalid(
            format!("plex {name} (volume {volume})"),
            format!(
                "is {}; the {role} of a copy must be {}",
                state.as_str(),
                want.as_str()
            ),
        ));
    }
    Ok(i)
}

/// Refuses a copy range that is empty, longer than `MAX_COPY_BYTES`, not
/// block-aligned or beyond the volume or either plex.
fn check_copy_range(
    layout: &Layout,
    volume: &str,
    src: usize,
    dst: usize,
    offset_bytes: u64,
    len_bytes: u64,
) -> Result<(), TargetError> {
    let bs = u64::from(layout.block_size);
    let bad_range = |why: String| {
        TargetError::invalid(
            format!("volume {volume}"),
            format!("copy range {offset_bytes}+{len_bytes}: {why}"),
        )
    };
    if len_bytes == 0 || len_bytes > MAX_COPY_BYTES {
        return Err(bad_range(format!(
            "the length must be 1..={MAX_COPY_BYTES} bytes"
        )));
    }
    if !offset_bytes.is_multiple_of(bs) || !len_bytes.is_multiple_of(bs) {
        return Err(bad_range(format!("not aligned to the block size {bs}")));
    }
    let limit = layout
        .spec
        .size_bytes
        .min(layout.plexes[src].map.len_bytes())
        .min(layout.plexes[dst].map.len_bytes());
    if offset_bytes
        .checked_add(len_bytes)
        .is_none_or(|e| e > limit)
    {
        return Err(bad_range(format!(
            "beyond the volume ({} bytes)",
            layout.spec.size_bytes
        )));
    }
    Ok(())
}

/// Runs a checked copy on a reactor (consecutive chunks spread over the reactors)
/// and waits up to `COPY_TIMEOUT` for it. `src` and `dst` are (index, name) of
/// the plexes.
fn run_copy(
    t: &Services,
    volume: &str,
    layout: Arc<Layout>,
    (src, source): (usize, &str),
    (dst, target): (usize, &str),
    offset_bytes: u64,
    len_bytes: u64,
) -> Result<(), TargetError> {
    let handles = t.reactors().handles();
    let h = &handles[(offset_bytes / MAX_COPY_BYTES) as usize % handles.len()];
    let (tx, rx) = mpsc::channel();
    let msg: Msg = Box::new(move |r| {
        CopyOp::start(r, layout, src, dst, offset_bytes, len_bytes, tx);
    });
    let tobj = format!("plex {target} (volume {volume})");
    h.send_timeout(msg, CONTROL_SEND_TIMEOUT)
        .map_err(|e| TargetError::Timeout {
            object: tobj.clone(),
            reason: format!("copy: cannot reach reactor {}: {e}", h.id()),
        })?;
    match rx.recv_timeout(COPY_TIMEOUT) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(reason)) => Err(TargetError::Io {
            object: tobj,
            reason: format!("copy of {offset_bytes}+{len_bytes} from plex {source}: {reason}"),
        }),
        Err(_) => Err(TargetError::Timeout {
            object: tobj,
            reason: format!(
                "copy of {offset_bytes}+{len_bytes} from plex {source} did not finish within \
                 {} s on reactor {}",
                COPY_TIMEOUT.as_secs(),
                h.id()
            ),
        }),
    }
}
