//! `task wait`, and `--wait` of the commands that start resyncs (`plex attach`,
//! `dg reattach-disk`): waits until the chosen plexes are no longer SYNCING, shows
//! each copy's progress meanwhile, then says how each plex ended.
//!
//! Each round asks the node afresh, on a connection of its own (`print`, then
//! `task list`), and pauses [`POLL`] between rounds, so plexctl holds no connection
//! while it waits; a round that cannot reach a node is asked again, of the next
//! node that answers when the cluster file names several, until
//! [`MAX_FAILED_ROUNDS`] rounds in a row failed. The plexes waited for are fixed by the first round: the one
//! named with `--plex`, else every plex of the scope that is SYNCING then. The wait
//! ends when none of them is SYNCING; it succeeds when each is ACTIVE.
//!
//! Progress goes to stderr: bars on a terminal, else a line every [`LINE_EVERY`]
//! (the first after [`FIRST_LINE_AFTER`]; none with `--json`). The answer (stdout)
//! names each plex and its state.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use plexd_proto::ctl_capnp as c;
use plexd_proto::size::format_size;
use serde_json::{json, Value};

use crate::connect::{with_ctl, Notices};
use crate::failure::{CtlFailure, Failure};
use crate::show::{self, percent, rate_and_eta, s};

/// Pause between two rounds.
const POLL: Duration = Duration::from_millis(500);
/// The wait gives up at this many rounds in a row that could not reach a node (it
/// died, or was restarted, while plexctl asked it): each round asks afresh, so with
/// a cluster file the next one asks the next node that answers.
const MAX_FAILED_ROUNDS: u32 = 3;
/// Without a terminal, the first progress line after this long (a short wait
/// prints none)...
const FIRST_LINE_AFTER: Duration = Duration::from_secs(2);
/// ... and the next ones this often.
const LINE_EVERY: Duration = Duration::from_secs(10);

/// Which plexes to wait for.
#[derive(Debug, Clone, Default)]
pub(crate) struct Scope {
    /// Only this disk group.
    pub(crate) dg: Option<String>,
    /// Only this volume (of `dg`).
    pub(crate) vol: Option<String>,
    /// Only this plex (of `dg`), whatever its state at the first round.
    pub(crate) plex: Option<String>,
}

impl Scope {
    fn describe(&self) -> String {
        match (&self.dg, &self.vol, &self.plex) {
            (Some(dg), _, Some(p)) => format!("plex {p} of disk group {dg}"),
            (Some(dg), Some(v), None) => format!("volume {v} of disk group {dg}"),
            (Some(dg), None, None) => format!("disk group {dg}"),
            _ => "any disk group".to_string(),
        }
    }
}

/// A plex: (disk group, volume, plex).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    dg: String,
    volume: String,
    plex: String,
}

impl Key {
    fn describe(&self) -> String {
        format!(
            "plex {} of volume {} (disk group {})",
            self.plex, self.volume, self.dg
        )
    }
}

/// Every plex of the scope in `print` (a `print --json` document) with its state;
/// a disk group, volume or plex the scope names and `print` lacks is not found.
fn plexes_in(print: &Value, scope: &Scope) -> Result<Vec<(Key, String)>, Failure> {
    let not_found = |object: &str, message: String| {
        Failure::Node(CtlFailure {
            kind: c::ErrorKind::NotFound,
            node: String::new(),
            object: object.to_string(),
            message,
        })
    };
    let groups = print["disk_groups"].as_array().cloned().unwrap_or_default();
    let mut out = Vec::new();
    let (mut saw_dg, mut saw_vol) = (false, false);
    for g in &groups {
        let dg = s(&g["name"]);
        if scope.dg.as_ref().is_some_and(|d| *d != dg) {
            continue;
        }
        saw_dg = true;
        for v in g["volumes"].as_array().into_iter().flatten() {
            let volume = s(&v["name"]);
            if scope.vol.as_ref().is_some_and(|x| *x != volume) {
                continue;
            }
            saw_vol = true;
            for p in v["plexes"].as_array().into_iter().flatten() {
                let plex = s(&p["name"]);
                if scope.plex.as_ref().is_some_and(|x| *x != plex) {
                    continue;
                }
                let key = Key {
                    dg: dg.clone(),
                    volume: volume.clone(),
                    plex,
                };
                out.push((key, s(&p["state"])));
            }
        }
    }
    if let Some(dg) = scope.dg.as_deref().filter(|_| !saw_dg) {
        return Err(not_found(dg, format!("disk group {dg} does not exist")));
    }
    if let (Some(dg), Some(v)) = (&scope.dg, &scope.vol) {
        if !saw_vol {
            return Err(not_found(
                v,
                format!("volume {v} of disk group {dg} does not exist"),
            ));
        }
    }
    if let (Some(dg), Some(p)) = (&scope.dg, &scope.plex) {
        if out.is_empty() {
            let where_ = match &scope.vol {
                Some(v) => format!("volume {v} of disk group {dg}"),
                None => format!("disk group {dg}"),
            };
            return Err(not_found(p, format!("plex {p} of {where_} does not exist")));
        }
    }
    Ok(out)
}

/// The newest task of `key`'s plex (the copy running now, or the last one).
fn task_of<'a>(tasks: &'a [Value], key: &Key) -> Option<&'a Value> {
    tasks
        .iter()
        .filter(|t| s(&t["dg"]) == key.dg && s(&t["plex"]) == key.plex)
        .max_by_key(|t| (t["state"] == "running", t["id"].as_u64().unwrap_or(0)))
}

/// One line of a plex's progress: copied of total, rate, time left, node.
fn progress_text(task: Option<&Value>) -> String {
    match task.filter(|t| t["state"] == "running") {
        Some(t) => {
            let u = |k: &str| t[k].as_u64().unwrap_or(0);
            let copied = format!("{}/{}", format_size(u("done")), format_size(u("total")));
            match rate_and_eta(t) {
                (rate, eta) if rate != "-" && eta != "-" => {
                    format!("{copied} at {rate}, {eta} left (node {})", s(&t["node"]))
                }
                _ => format!("{copied} copied (node {})", s(&t["node"])),
            }
        }
        None => "waiting for the master to start its copy".to_string(),
    }
}

/// Progress on stderr: bars on a terminal, else a line now and then, or nothing.
enum Shown {
    Bars {
        multi: MultiProgress,
        bars: BTreeMap<Key, ProgressBar>,
    },
    Lines {
        next: Instant,
    },
    Nothing,
}

impl Shown {
    fn new(json_out: bool) -> Shown {
        if std::io::stderr().is_terminal() {
            Shown::Bars {
                multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
                bars: BTreeMap::new(),
            }
        } else if json_out {
            Shown::Nothing
        } else {
            Shown::Lines {
                next: Instant::now() + FIRST_LINE_AFTER,
            }
        }
    }

    fn show(&mut self, syncing: &[&Key], tasks: &[Value]) {
        match self {
            Shown::Bars { multi, bars } => {
                bars.retain(|k, bar| {
                    let keep = syncing.contains(&k);
                    if !keep {
                        bar.finish_and_clear();
                    }
                    keep
                });
                for &k in syncing {
                    let task = task_of(tasks, k).filter(|t| t["state"] == "running");
                    let bar = bars.entry(k.clone()).or_insert_with(|| {
                        let style =
                            ProgressStyle::with_template("{prefix} [{bar:30}] {percent:>3}% {msg}")
                                .unwrap_or_else(|_| ProgressStyle::default_bar())
                                .progress_chars("=> ");
                        multi.add(
                            ProgressBar::new(1)
                                .with_style(style)
                                .with_prefix(format!("{}/{}/{}", k.dg, k.volume, k.plex)),
                        )
                    });
                    let u = |k: &str| task.and_then(|t| t[k].as_u64()).unwrap_or(0);
                    bar.set_length(u("total").max(1));
                    bar.set_position(u("done"));
                    bar.set_message(progress_text(task));
                }
            }
            Shown::Lines { next } => {
                if Instant::now() < *next {
                    return;
                }
                *next = Instant::now() + LINE_EVERY;
                let lines: Vec<String> = syncing
                    .iter()
                    .map(|k| {
                        let task = task_of(tasks, k);
                        let pct = task
                            .filter(|t| t["state"] == "running")
                            .map(|t| format!("{}% ", percent(t)))
                            .unwrap_or_default();
                        format!("{}: {pct}{}", k.describe(), progress_text(task))
                    })
                    .collect();
                eprintln!("plexctl: waiting for {}", lines.join("; "));
            }
            Shown::Nothing => {}
        }
    }

    fn clear(&mut self) {
        if let Shown::Bars { bars, .. } = self {
            for bar in bars.values() {
                bar.finish_and_clear();
            }
            bars.clear();
        }
    }
}

/// What a round saw: the configuration (`print --json`) and the tasks.
struct Round {
    print: Value,
    tasks: Vec<Value>,
}

/// Asks `addrs` (the first that answers) for one round, then puts the node that
/// answered first for the next round (a frozen node is waited for once, not at
/// every round). Quiet: the wait's own progress is what it shows.
fn ask(addrs: &mut [String], call_timeout: Duration, dg: &str) -> Answer {
    let (addr, round) = with_ctl(addrs, call_timeout, Notices::Quiet, async move |client| {
        let print = show::print_json(&client, dg).await?;
        let tasks = show::tasks(&client).await?;
        Ok(Round { print, tasks })
    });
    if round.is_ok() {
        if let Some(i) = addrs.iter().position(|a| *a == addr) {
            addrs[..=i].rotate_right(1);
        }
    }
    (addr, round)
}

/// How a wait ended: the answer (`--json` shape: `{"plexes": [{"dg", "volume",
/// "plex", "state"}], "waited_ms"}`), or why it failed.
pub(crate) fn wait(
    addrs: &[String],
    call_timeout: Duration,
    scope: &Scope,
    max_wait: Option<Duration>,
    json_out: bool,
) -> (String, Result<Value, Failure>) {
    let dg = scope.dg.clone().unwrap_or_default();
    let mut order = addrs.to_vec();
    let rounds = Rounds {
        ask: || ask(&mut order, call_timeout, &dg),
        pause: std::thread::sleep,
    };
    wait_rounds(rounds, scope, max_wait, Shown::new(json_out))
}

/// A round's answer and the address that gave it (or was tried last).
type Answer = (String, Result<Round, Failure>);

/// Where a wait's rounds come from and how it pauses between them (the node and
/// the clock; a test gives its own).
struct Rounds<A, P> {
    ask: A,
    pause: P,
}

/// [`wait`] over `rounds`, showing progress with `shown`.
fn wait_rounds(
    mut rounds: Rounds<impl FnMut() -> (String, Result<Round, Failure>), impl FnMut(Duration)>,
    scope: &Scope,
    max_wait: Option<Duration>,
    mut shown: Shown,
) -> (String, Result<Value, Failure>) {
    let began = Instant::now();
    let mut awaited: Option<Vec<Key>> = None;
    let mut failed_rounds = 0;
    let (addr, ended) = loop {
        let (addr, round) = (rounds.ask)();
        let round = match round {
            Ok(r) => r,
            Err(Failure::Lost(_) | Failure::Unreachable(..))
                if failed_rounds + 1 < MAX_FAILED_ROUNDS =>
            {
                failed_rounds += 1;
                (rounds.pause)(POLL);
                continue;
            }
            Err(e) => {
                shown.clear();
                return (addr, Err(still_going(e)));
            }
        };
        failed_rounds = 0;
        let plexes = match plexes_in(&round.print, scope) {
            Ok(p) => p,
            Err(Failure::Node(f)) => {
                shown.clear();
                let message = format!("node at {addr}: {}", f.message);
                let f = CtlFailure {
                    node: addr.clone(),
                    message,
                    ..f
                };
                return (addr, Err(Failure::Node(f)));
            }
            Err(e) => {
                shown.clear();
                return (addr, Err(e));
            }
        };
        let awaited = awaited.get_or_insert_with(|| {
            plexes
                .iter()
                .filter(|(_, state)| scope.plex.is_some() || state == "SYNCING")
                .map(|(k, _)| k.clone())
                .collect()
        });
        let state_of = |k: &Key| plexes.iter().find(|(p, _)| p == k).map(|(_, st)| st);
        let syncing: Vec<&Key> = awaited
            .iter()
            .filter(|k| state_of(k).is_some_and(|st| st == "SYNCING"))
            .collect();
        if syncing.is_empty() {
            let ended: Vec<(Key, Option<String>, Option<String>)> = awaited
                .iter()
                .map(|k| {
                    let failed = task_of(&round.tasks, k)
                        .map(|t| s(&t["state"]))
                        .filter(|st| st.starts_with("failed"));
                    (k.clone(), state_of(k).cloned(), failed)
                })
                .collect();
            break (addr, ended);
        }
        if let Some(limit) = max_wait.filter(|&m| began.elapsed() >= m) {
            shown.clear();
            let left: Vec<String> = syncing
                .iter()
                .map(|k| {
                    format!(
                        "{}: {}",
                        k.describe(),
                        progress_text(task_of(&round.tasks, k))
                    )
                })
                .collect();
            let message = format!(
                "still SYNCING after {} s (--max-wait): {}; the copy goes on (plexctl task wait waits again)",
                limit.as_secs(),
                left.join("; ")
            );
            return (
                addr.clone(),
                Err(Failure::Node(CtlFailure {
                    kind: c::ErrorKind::Busy,
                    node: addr,
                    object: syncing[0].plex.clone(),
                    message,
                })),
            );
        }
        shown.show(&syncing, &round.tasks);
        let pause = match max_wait {
            Some(m) => POLL.min(m.saturating_sub(began.elapsed())),
            None => POLL,
        };
        (rounds.pause)(pause);
    };
    shown.clear();
    let waited_ms = u64::try_from(began.elapsed().as_millis()).unwrap_or(u64::MAX);
    (addr.clone(), report(&addr, scope, &ended, waited_ms))
}

/// A read that failed mid-wait: the resyncs go on without plexctl.
fn still_going(e: Failure) -> Failure {
    let more = "; the resyncs go on in the cluster (plexctl task wait waits again)";
    match e {
        Failure::Lost(m) => Failure::Lost(format!("{m}{more}")),
        Failure::Unreachable(a, m) => Failure::Unreachable(a, format!("{m}{more}")),
        other => other,
    }
}

/// The answer of a wait that ended: each plex ACTIVE, else a failure naming the
/// first plex that is not (its state, or gone, and its last copy's failure).
fn report(
    node: &str,
    scope: &Scope,
    ended: &[(Key, Option<String>, Option<String>)],
    waited_ms: u64,
) -> Result<Value, Failure> {
    let bad: Vec<String> = ended
        .iter()
        .filter(|(_, state, _)| state.as_deref() != Some("ACTIVE"))
        .map(|(k, state, failed)| {
            let what = match state {
                Some(st) => format!("is {st}, not ACTIVE"),
                None => "no longer exists".to_string(),
            };
            let why = failed
                .as_ref()
                .map(|f| format!(" (its last copy: {f})"))
                .unwrap_or_default();
            format!("{} {what}: its resync did not finish{why}", k.describe())
        })
        .collect();
    if let Some(first) = bad.first() {
        let more = match bad.len() {
            1 => String::new(),
            n => format!("; and {} more (plexctl print)", n - 1),
        };
        let object = ended
            .iter()
            .find(|(_, st, _)| st.as_deref() != Some("ACTIVE"))
            .map(|(k, _, _)| k.plex.clone())
            .unwrap_or_default();
        return Err(Failure::Node(CtlFailure {
            kind: c::ErrorKind::Failed,
            node: node.to_string(),
            object,
            message: format!("{first}{more}"),
        }));
    }
    let plexes: Vec<Value> = ended
        .iter()
        .map(|(k, state, _)| {
            json!({ "dg": k.dg, "volume": k.volume, "plex": k.plex,
                    "state": state.clone().unwrap_or_default() })
        })
        .collect();
    Ok(json!({ "plexes": plexes, "waited_ms": waited_ms, "scope": scope.describe() }))
}

/// The text of a wait's answer.
pub(crate) fn render(answer: &Value) -> String {
    let plexes = answer["plexes"].as_array().cloned().unwrap_or_default();
    if plexes.is_empty() {
        return format!(
            "no plex of {} is SYNCING: nothing to wait for",
            s(&answer["scope"])
        );
    }
    let lines: Vec<String> = plexes
        .iter()
        .map(|p| {
            format!(
                "plex {} of volume {} (disk group {}): {}",
                s(&p["plex"]),
                s(&p["volume"]),
                s(&p["dg"]),
                s(&p["state"])
            )
        })
        .collect();
    let secs = answer["waited_ms"].as_u64().unwrap_or(0) as f64 / 1000.0;
    format!("{}\nwaited {secs:.1} s", lines.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn print() -> Value {
        json!({ "disk_groups": [
            { "name": "dg1", "volumes": [
                { "name": "v1", "plexes": [
                    { "name": "v1-01", "state": "ACTIVE" },
                    { "name": "v1-02", "state": "SYNCING" } ] },
                { "name": "v2", "plexes": [ { "name": "v2-01", "state": "STALE" } ] } ] },
            { "name": "dg2", "volumes": [] } ] })
    }

    fn scope(dg: Option<&str>, vol: Option<&str>, plex: Option<&str>) -> Scope {
        Scope {
            dg: dg.map(str::to_string),
            vol: vol.map(str::to_string),
            plex: plex.map(str::to_string),
        }
    }

    #[test]
    fn the_scope_picks_plexes_and_names_what_it_does_not_find() {
        let all = plexes_in(&print(), &Scope::default()).unwrap();
        assert_eq!(all.len(), 3);
        let one = plexes_in(&print(), &scope(Some("dg1"), None, Some("v1-02"))).unwrap();
        assert_eq!(
            (one[0].0.volume.as_str(), one[0].1.as_str()),
            ("v1", "SYNCING")
        );
        let v2 = plexes_in(&print(), &scope(Some("dg1"), Some("v2"), None)).unwrap();
        assert_eq!(v2.len(), 1);
        assert!(plexes_in(&print(), &scope(Some("dg2"), None, None))
            .unwrap()
            .is_empty());
        for (sc, want) in [
            (
                scope(Some("dg9"), None, None),
                "disk group dg9 does not exist",
            ),
            (
                scope(Some("dg1"), Some("v9"), None),
                "volume v9 of disk group dg1",
            ),
            (
                scope(Some("dg1"), None, Some("p9")),
                "plex p9 of disk group dg1",
            ),
            (
                scope(Some("dg1"), Some("v2"), Some("v1-02")),
                "plex v1-02 of volume v2",
            ),
        ] {
            match plexes_in(&print(), &sc) {
                Err(Failure::Node(f)) => {
                    assert_eq!(f.kind, c::ErrorKind::NotFound);
                    assert!(f.message.contains(want), "{}", f.message);
                }
                other => panic!("{sc:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_wait_succeeds_only_when_every_plex_is_active() {
        let key = |p: &str| Key {
            dg: "dg1".into(),
            volume: "v1".into(),
            plex: p.into(),
        };
        let ok = report(
            "a",
            &Scope::default(),
            &[(key("v1-02"), Some("ACTIVE".into()), None)],
            1500,
        )
        .unwrap();
        assert_eq!(ok["plexes"][0]["state"], "ACTIVE");
        assert!(render(&ok).contains("plex v1-02 of volume v1 (disk group dg1): ACTIVE"));
        let none = report("a", &scope(Some("dg1"), None, None), &[], 0).unwrap();
        assert_eq!(
            render(&none),
            "no plex of disk group dg1 is SYNCING: nothing to wait for"
        );
        let ended = [
            (key("v1-02"), Some("ACTIVE".into()), None),
            (
                key("v1-03"),
                Some("STALE".into()),
                Some("failed: read error".into()),
            ),
            (key("v1-04"), None, None),
        ];
        match report("a", &Scope::default(), &ended, 10) {
            Err(Failure::Node(f)) => {
                assert_eq!((f.kind, f.object.as_str()), (c::ErrorKind::Failed, "v1-03"));
                assert_eq!(
                    f.message,
                    "plex v1-03 of volume v1 (disk group dg1) is STALE, not ACTIVE: its resync \
                     did not finish (its last copy: failed: read error); and 1 more (plexctl print)"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    /// Rounds from a script: each answer in turn (a configuration with plex v1-02
    /// in the state given, or a failure), never sleeping.
    fn scripted(
        script: Vec<Result<&'static str, Failure>>,
    ) -> Rounds<impl FnMut() -> Answer, impl FnMut(Duration)> {
        let mut script = script.into_iter();
        Rounds {
            ask: move || {
                let answer = script
                    .next()
                    .expect("the wait asked once more than scripted");
                let round = answer.map(|state| {
                    let mut print = print();
                    print["disk_groups"][0]["volumes"][0]["plexes"][1]["state"] = json!(state);
                    Round {
                        print,
                        tasks: Vec::new(),
                    }
                });
                ("127.0.0.1:1".to_string(), round)
            },
            pause: |_| {},
        }
    }

    #[test]
    fn a_wait_rides_out_two_unreachable_rounds_but_not_three() {
        let lost = || Failure::Lost("connection closed".into());
        let sc = || scope(Some("dg1"), Some("v1"), None);
        // Syncing, two rounds lost (a node died mid-call), then ACTIVE: done.
        let (_, r) = wait_rounds(
            scripted(vec![Ok("SYNCING"), Err(lost()), Err(lost()), Ok("ACTIVE")]),
            &sc(),
            None,
            Shown::Nothing,
        );
        assert_eq!(r.unwrap()["plexes"][0]["state"], "ACTIVE");
        // Three in a row: the wait gives up, saying the copies go on.
        let (_, r) = wait_rounds(
            scripted(vec![Ok("SYNCING"), Err(lost()), Err(lost()), Err(lost())]),
            &sc(),
            None,
            Shown::Nothing,
        );
        match r {
            Err(Failure::Lost(m)) => assert!(m.contains("the resyncs go on"), "{m}"),
            other => panic!("{other:?}"),
        }
        // A refusal is not retried.
        let (_, r) = wait_rounds(
            scripted(vec![Err(Failure::Usage("no".into()))]),
            &sc(),
            None,
            Shown::Nothing,
        );
        assert!(matches!(r, Err(Failure::Usage(_))), "{r:?}");
    }

    #[test]
    fn a_wait_ends_when_its_plexes_stop_syncing_or_its_time_is_up() {
        let sc = || scope(Some("dg1"), Some("v1"), None);
        // STALE at the end: failed, naming the plex.
        let (_, r) = wait_rounds(
            scripted(vec![Ok("SYNCING"), Ok("SYNCING"), Ok("STALE")]),
            &sc(),
            None,
            Shown::Nothing,
        );
        match r {
            Err(Failure::Node(f)) => {
                assert_eq!((f.kind, f.object.as_str()), (c::ErrorKind::Failed, "v1-02"))
            }
            other => panic!("{other:?}"),
        }
        // No time to wait: busy, naming what still copies.
        let (_, r) = wait_rounds(
            scripted(vec![Ok("SYNCING")]),
            &sc(),
            Some(Duration::ZERO),
            Shown::Nothing,
        );
        match r {
            Err(Failure::Node(f)) => {
                assert_eq!(f.kind, c::ErrorKind::Busy);
                assert!(
                    f.message.contains("plex v1-02 of volume v1"),
                    "{}",
                    f.message
                );
            }
            other => panic!("{other:?}"),
        }
        // Nothing SYNCING at the first round: nothing to wait for.
        let (_, r) = wait_rounds(scripted(vec![Ok("ACTIVE")]), &sc(), None, Shown::Nothing);
        assert!(r.unwrap()["plexes"].as_array().unwrap().is_empty());
    }

    #[test]
    fn the_task_of_a_plex_is_its_running_copy_else_its_newest() {
        let tasks = vec![
            json!({"id": 3, "dg": "dg1", "plex": "v1-02", "state": "failed: x"}),
            json!({"id": 2, "dg": "dg1", "plex": "v1-02", "state": "running", "done": 1 << 20,
                   "total": 4 << 20, "node": "a", "bytes_per_second": 0, "eta_seconds": 0}),
            json!({"id": 4, "dg": "dg2", "plex": "v1-02", "state": "running"}),
        ];
        let k = Key {
            dg: "dg1".into(),
            volume: "v1".into(),
            plex: "v1-02".into(),
        };
        assert_eq!(task_of(&tasks, &k).unwrap()["id"], 2);
        assert_eq!(
            progress_text(task_of(&tasks, &k)),
            "1.0 MiB/4.0 MiB copied (node a)"
        );
        assert_eq!(task_of(&tasks[..1], &k).unwrap()["id"], 3);
        assert_eq!(
            progress_text(task_of(&tasks[..1], &k)),
            "waiting for the master to start its copy"
        );
    }
}
