//! Finding a node and calling its ctl API (Cap'n Proto over TCP) with deadlines.

use std::net::{TcpStream, ToSocketAddrs};
use std::pin::pin;
use std::task::Poll;
use std::time::{Duration, Instant};

use plexd_proto::connection::{self, Polled, Stop};
use plexd_proto::ctl_capnp::{self as c, ctl};

use crate::cli::Cli;
use crate::failure::{CtlFailure, Failure};

pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a node that accepted the connection has to answer its bootstrap before
/// plexctl tries the next node, or says it waits for it ([`with_ctl`]).
pub(crate) const ANSWER_TIMEOUT: Duration = Duration::from_secs(3);
/// How long plexctl waits for an answer by default (`--timeout`): longer than a node
/// waits for its own main loop (`CALL_TIMEOUT`, 120 s), so the node's own timeout
/// message wins when it has one.
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(150);

/// Candidate addresses to try, in order.
pub(crate) fn addresses(cli: &Cli) -> Result<Vec<String>, String> {
    let file = match &cli.cluster {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| format!("cluster file {}: {e}", p.display()))?;
            let v: toml::Value = toml::from_str(&text)
                .map_err(|e| format!("cluster file {}: {}", p.display(), e.message()))?;
            Some(v)
        }
        None => None,
    };
    let nodes: Vec<(String, String)> = file
        .as_ref()
        .and_then(|v| v.get("nodes"))
        .and_then(|n| n.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|n| {
                    Some((
                        n.get("name")?.as_str()?.to_string(),
                        n.get("address")?.as_str()?.to_string(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    match &cli.node {
        Some(n) => {
            if let Some((_, a)) = nodes.iter().find(|(name, _)| name == n) {
                Ok(vec![a.clone()])
            } else if n.contains(':') {
                Ok(vec![n.clone()])
            } else if file.is_some() {
                Err(format!("node {n} is not in the cluster file"))
            } else {
                Err(format!(
                    "node {n}: give an address (host:port) or --cluster FILE to find it by name"
                ))
            }
        }
        None if !nodes.is_empty() => Ok(nodes.into_iter().map(|(_, a)| a).collect()),
        None => Err(
            "no node given: use --node ADDR, or --cluster FILE (or PLEXD_NODE / PLEXD_CLUSTER)"
                .into(),
        ),
    }
}

/// Why a node was left: it accepted the connection, then closed it having answered
/// nothing (a plexd dying as it starts, a proxy with nothing behind it).
const CLOSED_UNANSWERED: &str =
    "accepted the connection and closed it without answering (is plexd running there? see its log)";

/// Connects to the first of `addrs` that accepts a TCP connection; returns it, its
/// address and the addresses after it (the ones left to try).
fn connect(addrs: &[String]) -> Result<(TcpStream, String, &[String]), Failure> {
    let mut last = String::new();
    let mut last_addr = String::new();
    for (i, a) in addrs.iter().enumerate() {
        let sock = match a.to_socket_addrs().ok().and_then(|mut s| s.next()) {
            Some(s) => s,
            None => {
                last = format!("{a}: cannot resolve");
                last_addr = a.clone();
                continue;
            }
        };
        match TcpStream::connect_timeout(&sock, CONNECT_TIMEOUT) {
            Ok(s) => return Ok((s, a.clone(), &addrs[i + 1..])),
            Err(e) => {
                last = format!("cannot reach plexd at {a}: {e}");
                last_addr = a.clone();
            }
        }
    }
    Err(Failure::Unreachable(last_addr, last))
}

/// How [`with_ctl`] tells the user it moved on from, or waits for, a node that
/// does not answer (on stderr; not with `--json`, whose stderr is its one error line).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Notices {
    Shown,
    Quiet,
}

impl Notices {
    fn say(self, line: &str) {
        if self == Notices::Shown {
            eprintln!("plexctl: {line}");
        }
    }
}

/// Runs `f` with a ctl client on this thread; returns the address asked too. The
/// connection runs without an I/O reactor ([`Polled`]): plexctl waits in `poll(2)`
/// on its socket and starts no other thread.
///
/// A node can accept the TCP connection (its kernel does) and answer nothing: it is
/// frozen (SIGSTOP, a stalled host) or hung. A node that runs answers the
/// connection's bootstrap at once ([`Polled::heard`]):
/// - while other nodes are left to try (`--cluster FILE` without `--node`), the
///   command waits for that answer, at most [`ANSWER_TIMEOUT`] (one round trip), and
///   a node that gives none is left for the next one having been asked nothing (a
///   change thus goes to one node only);
/// - the last node (or the only one, `--node`) is sent the command along with the
///   bootstrap, and plexctl says so when nothing came from it after
///   [`ANSWER_TIMEOUT`], then waits until `call_timeout`.
pub(crate) fn with_ctl<T: 'static>(
    addrs: &[String],
    call_timeout: Duration,
    notices: Notices,
    f: impl AsyncFnOnce(ctl::Client) -> Result<T, Failure>,
) -> (String, Result<T, Failure>) {
    let deadline = Instant::now() + call_timeout;
    let mut candidates = addrs;
    loop {
        let (stream, addr, rest) = match connect(candidates) {
            Ok(c) => c,
            Err(e) => return (candidates.last().cloned().unwrap_or_default(), Err(e)),
        };
        let _ = stream.set_nodelay(true);
        let lost = |why: String| Failure::Lost(format!("{addr}: {why}"));
        let (polled, socket) = match Polled::new(stream) {
            Ok(c) => c,
            Err(e) => return (addr.clone(), Err(lost(e.to_string()))),
        };
        let (system, client) = connection::client::<ctl::Client>(socket);
        let mut conn = pin!(async {
            let r = system.await;
            format!(
                "connection closed{}",
                r.err().map(|e| format!(": {e}")).unwrap_or_default()
            )
        });
        let silent = |secs: f64| {
            format!(
                "{addr} accepted the connection but has not answered for {secs:.0} s (frozen or hung? see its log)"
            )
        };
        // Polled after the connection's tasks, which read what comes.
        let heard = || {
            std::future::poll_fn(|_| match polled.heard() {
                true => Poll::Ready(Ok(())),
                false => Poll::Pending,
            })
        };
        if !rest.is_empty() {
            let answered = smol::future::or(async { Err(conn.as_mut().await) }, heard());
            let began = Instant::now();
            let why = match polled.run(answered, (began + ANSWER_TIMEOUT).min(deadline)) {
                Ok(Ok(())) => None,
                Ok(Err(why)) => Some(format!("{addr}: {why}")),
                Err(Stop::HungUp) => Some(format!("{addr}: {CLOSED_UNANSWERED}")),
                Err(Stop::Poll(e)) => Some(format!("{addr}: cannot wait for the socket: {e}")),
                Err(Stop::Deadline) => Some(silent(began.elapsed().as_secs_f64())),
            };
            if let Some(why) = why {
                notices.say(&format!("{why}; trying {}", rest[0]));
                candidates = rest;
                continue;
            }
        }
        let call = smol::future::or(f(client), async { Err(lost(conn.as_mut().await)) });
        let mut call = pin!(call);
        let began = Instant::now();
        let mut ran = polled.run(call.as_mut(), (began + ANSWER_TIMEOUT).min(deadline));
        if matches!(ran, Err(Stop::Deadline)) && Instant::now() < deadline {
            if !polled.heard() {
                notices.say(&format!(
                    "{}; waiting for it up to {} s (--timeout)",
                    silent(began.elapsed().as_secs_f64()),
                    call_timeout.as_secs()
                ));
            }
            ran = polled.run(call.as_mut(), deadline);
        }
        let result = match ran {
            // The call's own failure to get an answer (`rpc: Disconnected: ...`):
            // named by the address, and by what happened if nothing ever came.
            Ok(Err(Failure::Lost(_))) if !polled.heard() => Err(lost(CLOSED_UNANSWERED.into())),
            Ok(Err(Failure::Lost(m))) if !m.starts_with(&addr) => Err(lost(m)),
            Ok(r) => r,
            Err(Stop::Deadline) if !polled.heard() => {
                Err(Failure::Lost(silent(began.elapsed().as_secs_f64())))
            }
            Err(Stop::Deadline) => Err(lost(format!(
                "no answer within {} s; the node may be hung or overloaded (see its log)",
                call_timeout.as_secs()
            ))),
            Err(Stop::Poll(e)) => Err(lost(format!("cannot wait for the socket: {e}"))),
            Err(Stop::HungUp) if !polled.heard() => Err(lost(CLOSED_UNANSWERED.into())),
            Err(Stop::HungUp) => Err(lost("connection closed".into())),
        };
        return (addr, result);
    }
}

pub(crate) fn rpc(e: capnp::Error) -> String {
    format!("rpc: {e}")
}

pub(crate) fn text(r: capnp::Result<capnp::text::Reader<'_>>) -> Result<String, String> {
    r.map_err(rpc)?
        .to_string()
        .map_err(|e| format!("rpc: bad text: {e}"))
}

/// The call's failure, if any: the typed `failure` when the node sets it, else the
/// `error` text of a node without typed errors (kind internal).
pub(crate) fn check(
    error: capnp::Result<capnp::text::Reader<'_>>,
    failure: Option<capnp::Result<c::ctl_error::Reader<'_>>>,
) -> Result<(), Failure> {
    let error = text(error)?;
    if let Some(f) = failure {
        let f = f.map_err(rpc)?;
        return Err(Failure::Node(CtlFailure {
            // A kind this plexctl does not know (a newer node) is internal.
            kind: f.get_kind().unwrap_or(c::ErrorKind::Internal),
            node: text(f.get_node())?,
            object: text(f.get_object())?,
            message: text(f.get_message())?,
        }));
    }
    if error.is_empty() {
        Ok(())
    } else {
        Err(Failure::Node(CtlFailure::internal(error)))
    }
}
