//! One child process of a test: its own process group, output appended to a log file,
//! killed (SIGKILL to the whole group) and reaped on drop, even when the test panics.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long a SIGTERM'd process gets before SIGKILL.
pub const TERM_GRACE: Duration = Duration::from_secs(10);
/// Pause between two polls of a child's exit.
const POLL: Duration = Duration::from_millis(10);

/// What to start: program, arguments, environment, and files hidden from it.
#[derive(Clone, Debug)]
pub struct Spec {
    /// Name in messages, e.g. `plexd a`.
    pub name: String,
    /// The program.
    pub exe: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Extra environment (on top of ours, minus every `PLEXD_*` variable).
    pub env: Vec<(String, String)>,
    /// Working directory.
    pub cwd: PathBuf,
    /// Log file (stdout and stderr, appended).
    pub log: PathBuf,
    /// Files this process must not see: each is bind-mounted over by `hide_with` (an
    /// empty file) in a private mount namespace of the child, as if the disk were not
    /// connected to this node. Needs root (the test machines run as root).
    pub hide: Vec<PathBuf>,
    /// The empty file mounted over hidden files.
    pub hide_with: PathBuf,
}

/// A running (or exited, not yet dropped) child.
pub struct Proc {
    name: String,
    log: PathBuf,
    child: Option<Child>,
    status: Option<ExitStatus>,
}

fn cstring(p: &Path) -> Result<CString, String> {
    CString::new(p.as_os_str().as_encoded_bytes())
        .map_err(|_| format!("{}: path contains a NUL byte", p.display()))
}

impl Proc {
    /// Starts the process described by `spec`.
    pub fn spawn(spec: &Spec) -> Result<Proc, String> {
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spec.log)
            .map_err(|e| format!("cannot open log {}: {e}", spec.log.display()))?;
        let _ = writeln!(
            log,
            "==== harness: starting {}: {} {} {}",
            spec.name,
            spec.env
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" "),
            spec.exe.display(),
            spec.args.join(" ")
        );
        let err_log = log
            .try_clone()
            .map_err(|e| format!("cannot dup log {}: {e}", spec.log.display()))?;
        let mut cmd = Command::new(&spec.exe);
        cmd.args(&spec.args)
            .current_dir(&spec.cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err_log))
            .process_group(0);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("PLEXD_") {
                cmd.env_remove(k);
            }
        }
        cmd.envs(spec.env.iter().map(|(k, v)| (k, v)));
        // SAFETY: prctl is async-signal-safe. If the test process dies without running
        // its drop guards (SIGKILL by a CI timeout), the child dies with it. (The
        // signal follows the spawning thread: a Proc must stay in the thread that
        // started it, which the tests do.)
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        if !spec.hide.is_empty() {
            let with = cstring(&spec.hide_with)?;
            let targets = spec
                .hide
                .iter()
                .map(|p| cstring(p))
                .collect::<Result<Vec<_>, _>>()?;
            let root = CString::new("/").expect("no NUL");
            // SAFETY: only async-signal-safe calls (unshare, mount) on memory prepared
            // before the fork.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::unshare(libc::CLONE_NEWNS) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    let flags = libc::MS_REC | libc::MS_PRIVATE;
                    if libc::mount(
                        std::ptr::null(),
                        root.as_ptr(),
                        std::ptr::null(),
                        flags,
                        std::ptr::null(),
                    ) != 0
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                    for t in &targets {
                        if libc::mount(
                            with.as_ptr(),
                            t.as_ptr(),
                            std::ptr::null(),
                            libc::MS_BIND,
                            std::ptr::null(),
                        ) != 0
                        {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                    Ok(())
                });
            }
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {} ({}): {e}", spec.name, spec.exe.display()))?;
        Ok(Proc {
            name: spec.name.clone(),
            log: spec.log.clone(),
            child: Some(child),
            status: None,
        })
    }

    /// Name in messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Process id (also its process group id), while not reaped.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// The exit status if it has exited (reaps it).
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if let Some(s) = self.status {
            return Some(s);
        }
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(s)) => {
                self.status = Some(s);
                self.child = None;
                Some(s)
            }
            _ => None,
        }
    }

    /// Still running.
    pub fn is_running(&mut self) -> bool {
        self.try_status().is_none()
    }

    /// Waits up to `timeout` for it to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_status() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(POLL);
        }
    }

    fn signal_group(&self, sig: i32) {
        if let Some(pid) = self.pid() {
            // SAFETY: kill(2) on our own child's process group (not reaped yet, so the
            // id cannot have been reused).
            unsafe {
                libc::kill(-(pid as i32), sig);
            }
        }
    }

    /// SIGKILL to its whole process group, then reaps it (as `kill -9`).
    pub fn kill(&mut self) -> Option<ExitStatus> {
        self.signal_group(libc::SIGKILL);
        if let Some(mut child) = self.child.take() {
            match child.wait() {
                Ok(s) => self.status = Some(s),
                Err(e) => eprintln!("harness: cannot reap {}: {e}", self.name),
            }
        }
        self.status
    }

    /// SIGTERM (a clean stop), waits up to [`TERM_GRACE`], then SIGKILL. Returns the
    /// status and whether it stopped on SIGTERM.
    pub fn terminate(&mut self) -> (Option<ExitStatus>, bool) {
        if let Some(pid) = self.pid() {
            // SAFETY: as in signal_group, on the process only.
            unsafe {
                libc::kill(pid as i32, libc::SIGTERM);
            }
        }
        if let Some(s) = self.wait_exit(TERM_GRACE) {
            self.signal_group(libc::SIGKILL); // leftovers of the group, if any
            return (Some(s), true);
        }
        (self.kill(), false)
    }

    /// `exit N` / `signal N` for messages.
    pub fn describe(status: Option<ExitStatus>) -> String {
        match status {
            None => "running".into(),
            Some(s) => match (s.code(), s.signal()) {
                (Some(c), _) => format!("exited with status {c}"),
                (None, Some(sig)) => format!("killed by signal {sig}"),
                _ => format!("{s}"),
            },
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The last `lines` lines of a log file (for failure reports).
pub fn tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Err(e) => format!("(cannot read {}: {e})", path.display()),
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            let from = all.len().saturating_sub(lines);
            all[from..].join("\n")
        }
    }
}

/// Creates (or truncates) an empty file.
pub fn touch(path: &Path) -> Result<(), String> {
    File::create(path)
        .map(|_| ())
        .map_err(|e| format!("cannot create {}: {e}", path.display()))
}

/// Runs `cmd` to completion with its output captured, in its own process group; past
/// `timeout` the whole group is killed and the error says so. Never leaves a child.
pub fn run_bounded(cmd: &mut Command, timeout: Duration) -> Result<std::process::Output, String> {
    run_bounded_to(cmd, Stdio::piped(), timeout)
}

/// [`run_bounded`] with the child's stdout going to `stdout` (the output's `stdout`
/// is then empty unless it is `Stdio::piped()`).
pub fn run_bounded_to(
    cmd: &mut Command,
    stdout: Stdio,
    timeout: Duration,
) -> Result<std::process::Output, String> {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot start {:?}: {e}", cmd.get_program()))?;
    let pid = child.id() as i32;
    let (tx, rx) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(timeout) {
        Ok(r) => r,
        Err(_) => {
            // SAFETY: kill(2) on the process group of our own unreaped child; the
            // waiter thread reaps it.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
            }
            let _ = rx.recv();
            let _ = waiter.join();
            return Err(format!(
                "did not finish within {} s; killed",
                timeout.as_secs()
            ));
        }
    };
    let _ = waiter.join();
    out.map_err(|e| e.to_string())
}
