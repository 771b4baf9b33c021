//! Finding a node and calling its ctl API (Cap'n Proto over TCP) with deadlines.

use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use plexd_proto::connection::{self, Polled, Stop};
use plexd_proto::ctl_capnp::{self as c, ctl};

use crate::cli::Cli;
use crate::failure::{CtlFailure, Failure};

pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
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

pub(crate) fn connect(addrs: &[String]) -> Result<(TcpStream, String), Failure> {
    let mut last = String::new();
    let mut last_addr = String::new();
    for a in addrs {
        let sock = match a.to_socket_addrs().ok().and_then(|mut s| s.next()) {
            Some(s) => s,
            None => {
                last = format!("{a}: cannot resolve");
                last_addr = a.clone();
                continue;
            }
        };
        match TcpStream::connect_timeout(&sock, CONNECT_TIMEOUT) {
            Ok(s) => return Ok((s, a.clone())),
            Err(e) => {
                last = format!("cannot reach plexd at {a}: {e}");
                last_addr = a.clone();
            }
        }
    }
    Err(Failure::Unreachable(last_addr, last))
}

/// Runs `f` with a ctl client on this thread; returns the address asked too. The
/// connection runs without an I/O reactor ([`Polled`]): plexctl waits in `poll(2)`
/// on its socket and starts no other thread.
pub(crate) fn with_ctl<T: 'static>(
    addrs: &[String],
    call_timeout: Duration,
    f: impl AsyncFnOnce(ctl::Client) -> Result<T, Failure>,
) -> (String, Result<T, Failure>) {
    let (stream, addr) = match connect(addrs) {
        Ok(c) => c,
        Err(e) => return (addrs.last().cloned().unwrap_or_default(), Err(e)),
    };
    let _ = stream.set_nodelay(true);
    let lost = |why: String| Failure::Lost(format!("{addr}: {why}"));
    let (polled, socket) = match Polled::new(stream) {
        Ok(c) => c,
        Err(e) => return (addr.clone(), Err(lost(e.to_string()))),
    };
    let (rpc, client) = connection::client::<ctl::Client>(socket);
    let conn = async {
        let r = rpc.await;
        Err(lost(format!(
            "connection closed{}",
            r.err().map(|e| format!(": {e}")).unwrap_or_default()
        )))
    };
    let call = smol::future::or(f(client), conn);
    let result = match polled.run(call, Instant::now() + call_timeout) {
        Ok(r) => r,
        Err(Stop::Deadline) => Err(lost(format!(
            "no answer within {} s; the node may be hung or overloaded (see its log); a change may still complete: check with plexctl print",
            call_timeout.as_secs()
        ))),
        Err(Stop::Poll(e)) => Err(lost(format!("cannot wait for the socket: {e}"))),
        Err(Stop::HungUp) => Err(lost("connection closed".into())),
    };
    (addr, result)
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
