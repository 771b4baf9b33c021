//! plexctl: the command-line client of a plexd cluster (see `cli` for the commands).

mod change;
mod cli;
mod connect;
mod failure;
mod show;
mod wait;

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use plexd_proto::ctl_capnp::{self as c, ctl};
use serde_json::json;

use change::{build_change, ChangeBuilder};
use cli::*;
use connect::{addresses, check, rpc, text, with_ctl, Notices, CALL_TIMEOUT};
use failure::{exit_code, kind_name, CtlFailure, Failure, EXIT_USAGE};

/// Runs `cmd` on a node: `change` is its change request, built (and checked for
/// usage errors) before any node was asked; none for read commands.
async fn run(
    cmd: Cmd,
    change: Option<ChangeBuilder>,
    json_out: bool,
    client: ctl::Client,
) -> Result<String, Failure> {
    if let Some(build) = change {
        let mut req = client.change_request();
        build(req.get().init_change());
        let resp = req.send().promise.await.map_err(rpc)?;
        let r = resp.get().map_err(rpc)?;
        check(r.get_error(), r.has_failure().then(|| r.get_failure()))?;
        let done = text(r.get_done())?;
        return Ok(if json_out {
            serde_json::to_string_pretty(&json!({ "done": done })).unwrap_or_default()
        } else {
            done
        });
    }
    match cmd {
        Cmd::Disk(DiskCmd::Init { path, name, force }) => {
            show::disk_init(&client, json_out, path, name, force).await
        }
        Cmd::Disk(DiskCmd::List) => show::disk_list(&client, json_out).await,
        Cmd::Dg(DgCmd::List) => show::dg_list(&client, json_out).await,
        Cmd::Vol(VolCmd::List { dg }) => show::vol_list(&client, json_out, dg).await,
        Cmd::Vol(VolCmd::Stats { dg, vol }) => show::vol_stats(&client, json_out, &dg, &vol).await,
        Cmd::Print { dg } => show::print(&client, json_out, dg).await,
        Cmd::Cluster(which) => show::cluster(&client, json_out, which).await,
        Cmd::Task(TaskCmd::List) => show::task_list(&client, json_out).await,
        _ => Err(Failure::Node(CtlFailure::internal(
            "internal error: unhandled command",
        ))),
    }
}

/// The resync wait a command asks for (`task wait`, or a change's `--wait`): its
/// scope and how long at most.
fn wait_of(cmd: &Cmd) -> Option<(wait::Scope, Option<Duration>)> {
    let secs = |s: &Option<u64>| s.map(Duration::from_secs);
    match cmd {
        Cmd::Task(TaskCmd::Wait {
            dg,
            vol,
            plex,
            max_wait,
        }) => Some((
            wait::Scope {
                dg: dg.clone(),
                vol: vol.clone(),
                plex: plex.clone(),
            },
            secs(max_wait),
        )),
        Cmd::Plex(PlexCmd::Attach { dg, plex, wait }) if wait.wait => Some((
            wait::Scope {
                dg: Some(dg.clone()),
                vol: None,
                plex: Some(plex.clone()),
            },
            secs(&wait.max_wait),
        )),
        Cmd::Dg(DgCmd::ReattachDisk { dg, wait, .. } | DgCmd::Evacuate { dg, wait, .. })
            if wait.wait =>
        {
            Some((
                wait::Scope {
                    dg: Some(dg.clone()),
                    ..wait::Scope::default()
                },
                secs(&wait.max_wait),
            ))
        }
        _ => None,
    }
}

/// What a wait prints: its text, or its JSON (`{"done", "wait"}` after a change,
/// whose own answer `done` is then its `--json` document).
fn wait_answer(done: Option<&str>, answer: &serde_json::Value, json_out: bool) -> String {
    match (json_out, done) {
        (false, _) => wait::render(answer),
        (true, None) => serde_json::to_string_pretty(answer).unwrap_or_default(),
        (true, Some(done)) => {
            let done: serde_json::Value = serde_json::from_str(done).unwrap_or_default();
            serde_json::to_string_pretty(&json!({ "done": done["done"], "wait": answer }))
                .unwrap_or_default()
        }
    }
}

/// Asks a node of `addrs` for `cmd` (its `change`, if it is one), then for the wait
/// it asks for. Returns the address asked last, the output, and whether a failure
/// is the change's own (a lost answer is then "outcome unknown"): a failed wait
/// after a change is not.
fn ask(
    cmd: Cmd,
    change: Option<ChangeBuilder>,
    json_out: bool,
    addrs: &[String],
    call_timeout: Duration,
) -> (String, Result<String, Failure>, bool) {
    let waits = wait_of(&cmd);
    let is_change = change.is_some();
    let wait = |done: Option<&str>, (scope, max_wait): &(wait::Scope, Option<Duration>)| {
        let (addr, r) = wait::wait(addrs, call_timeout, scope, *max_wait, json_out);
        (addr, r.map(|v| wait_answer(done, &v, json_out)))
    };
    if let (false, Some(w)) = (is_change, &waits) {
        let (addr, r) = wait(None, w);
        return (addr, r, false);
    }
    let notices = if json_out {
        Notices::Quiet
    } else {
        Notices::Shown
    };
    let (addr, result) = with_ctl(addrs, call_timeout, notices, async move |client| {
        run(cmd, change, json_out, client).await
    });
    match (result, waits) {
        (Ok(done), Some(w)) => {
            // The change is done: say so now, then wait for its resyncs.
            if !json_out {
                print_out(&done);
            }
            let (addr, r) = wait(Some(&done), &w);
            if r.is_err() && json_out {
                print_out(&done);
            }
            (addr, r, false)
        }
        (result, _) => (addr, result, is_change),
    }
}

/// Writes `text` and a newline to stdout. A reader that has gone (`plexctl print |
/// head`) is no failure of the command: what it did stands, and plexctl ends as it
/// would have (`println!` would panic). Another write error is said on stderr.
fn print_out(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{text}").and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            eprintln!("plexctl: cannot write the answer to stdout: {e}");
        }
        _ => {}
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // With --json a command-line error is the JSON error too (help and version
        // print as usual).
        Err(e) if e.use_stderr() && std::env::args().skip(1).any(|a| a == "--json") => {
            let message = e.to_string();
            let line = message
                .lines()
                .next()
                .unwrap_or("")
                .trim_start_matches("error: ");
            let v = json!({ "error": {
                "kind": kind_name(c::ErrorKind::Usage),
                "node": "",
                "object": "",
                "message": line,
                "exit": EXIT_USAGE,
            }});
            eprintln!("{v}");
            return ExitCode::from(EXIT_USAGE);
        }
        Err(e) => e.exit(),
    };
    let json_out = cli.json;
    let mut is_change = matches!(build_change(&cli.cmd), Ok(Some(_)));
    // Usage errors (a bad size...) are found before any node is asked.
    let (addr, result) = match build_change(&cli.cmd) {
        Err(e) => (String::new(), Err(e)),
        Ok(change) => match addresses(&cli) {
            Err(e) => (String::new(), Err(Failure::Usage(e))),
            Ok(addrs) => {
                let call_timeout = cli.timeout.map(Duration::from_secs).unwrap_or(CALL_TIMEOUT);
                let (addr, result, changes) = ask(cli.cmd, change, json_out, &addrs, call_timeout);
                is_change = changes;
                (addr, result)
            }
        },
    };
    match result {
        Ok(out) => {
            if !out.is_empty() {
                print_out(&out);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            let f = e.typed(is_change, &addr);
            let code = exit_code(f.kind);
            let line = f.message.lines().next().unwrap_or("");
            if json_out {
                let v = json!({ "error": {
                    "kind": kind_name(f.kind),
                    "node": f.node,
                    "object": f.object,
                    "message": line,
                    "exit": code,
                }});
                eprintln!("{v}");
            } else {
                eprintln!("plexctl: {line}");
            }
            ExitCode::from(code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::change::{parse_resize, parse_size};
    use super::*;

    #[test]
    fn sizes_accept_suffixes_and_signs() {
        assert_eq!(parse_size("64K").unwrap(), 64 << 10);
        assert_eq!(parse_size("1g").unwrap(), 1 << 30);
        assert_eq!(parse_size("512").unwrap(), 512);
        assert_eq!(parse_size("1.5M").unwrap(), 3 << 19);
        for bad in ["1X", "", "12Q", "0.3K"] {
            assert!(matches!(parse_size(bad), Err(Failure::Usage(_))), "{bad}");
        }
        assert_eq!(parse_resize("+1G", true).unwrap(), (1 << 30, true));
        assert_eq!(parse_resize("2G", true).unwrap(), (2 << 30, false));
        assert_eq!(parse_resize("-512M", false).unwrap(), (512 << 20, true));
        assert!(matches!(parse_resize("-1G", true), Err(Failure::Usage(_))));
        assert!(matches!(parse_resize("+1G", false), Err(Failure::Usage(_))));
        assert!(matches!(parse_resize("+0", true), Err(Failure::Usage(_))));
    }

    #[test]
    fn cli_parses_the_contract_commands() {
        let c = Cli::try_parse_from([
            "plexctl",
            "--node",
            "127.0.0.1:1",
            "vol",
            "create",
            "dg1",
            "v1",
            "1G",
            "--layout",
            "mirror-stripe",
            "--mirrors",
            "2",
            "--columns",
            "2",
            "--stripe-unit",
            "64K",
        ])
        .unwrap();
        assert!(build_change(&c.cmd).unwrap().is_some());
        let c = Cli::try_parse_from(["plexctl", "--json", "cluster", "status"]).unwrap();
        assert!(c.json);
        assert!(build_change(&c.cmd).unwrap().is_none());
        assert!(Cli::try_parse_from(["plexctl", "dg", "create", "dg1"]).is_err());
        // The disks a new plex may use: a comma-separated list.
        let c = Cli::try_parse_from(["plexctl", "dg", "evacuate", "dg1", "d1", "--to", "d3,d4"])
            .unwrap();
        let Cmd::Dg(DgCmd::Evacuate { to, .. }) = &c.cmd else {
            panic!("{:?}", c.cmd)
        };
        assert_eq!(to, &["d3", "d4"]);
        let c =
            Cli::try_parse_from(["plexctl", "plex", "add", "dg1", "v1", "--disks", "d5"]).unwrap();
        let Cmd::Plex(PlexCmd::Add { disks, .. }) = &c.cmd else {
            panic!("{:?}", c.cmd)
        };
        assert_eq!(disks, &["d5"]);
        assert!(build_change(&c.cmd).unwrap().is_some());
        let c = Cli::try_parse_from([
            "plexctl", "vol", "create", "dg1", "m", "1G", "--layout", "mirror", "--disks", "d1,d5",
        ])
        .unwrap();
        let Cmd::Vol(VolCmd::Create { disks, .. }) = &c.cmd else {
            panic!("{:?}", c.cmd)
        };
        assert_eq!(disks, &["d1", "d5"]);
    }
}
