//! A `plexd-target` child process for tests and harnesses: started with arguments,
//! waited for until its socket answers (bounded), killed and reaped on drop, even
//! when the test panics.
//!
//! ```no_run
//! # use plexd_target::api::process::TargetProcess;
//! let exe = "build/debug/plexd-target"; // env!("CARGO_BIN_EXE_plexd-target") in tests
//! let t = TargetProcess::start(exe.as_ref(), "demo", &["--cores", "0"]).unwrap();
//! let k = t.client().unwrap();
//! println!("{:?}", k.info().unwrap());
//! ```

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::client::{ClientError, KernelClient};

/// How long [`TargetProcess::start`] waits for the socket to answer.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between two probes of the socket.
const PROBE_INTERVAL: Duration = Duration::from_millis(20);

/// A running `plexd-target`. Dropping it kills and reaps the process and removes
/// its files.
pub struct TargetProcess {
    child: Option<Child>,
    socket: PathBuf,
    stderr_path: PathBuf,
    stdout_path: PathBuf,
}

fn unique(tag: &str, what: &str) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    std::env::temp_dir().join(format!("plexd-{tag}-{}-{n}.{what}", std::process::id()))
}

impl TargetProcess {
    /// Starts `exe --socket <tmp> ARGS...` and waits until its socket answers.
    pub fn start(exe: &Path, tag: &str, args: &[&str]) -> Result<TargetProcess, String> {
        let socket = unique(tag, "sock");
        let mut full: Vec<String> = vec!["--socket".into(), socket.display().to_string()];
        full.extend(args.iter().map(|a| a.to_string()));
        let mut p = TargetProcess::spawn(exe, tag, &full, socket)?;
        p.wait_ready(START_TIMEOUT)?;
        Ok(p)
    }

    /// Starts `exe ARGS...` (which name their own socket, e.g. in a config file)
    /// without waiting; `socket` is where it will listen.
    pub fn spawn(
        exe: &Path,
        tag: &str,
        args: &[String],
        socket: PathBuf,
    ) -> Result<TargetProcess, String> {
        let stderr_path = unique(tag, "stderr");
        let stdout_path = unique(tag, "stdout");
        let open = |p: &Path| {
            std::fs::File::create(p).map_err(|e| format!("cannot create {}: {e}", p.display()))
        };
        let child = Command::new(exe)
            .args(args)
            .stdin(Stdio::null())
            .stdout(open(&stdout_path)?)
            .stderr(open(&stderr_path)?)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
        Ok(TargetProcess {
            child: Some(child),
            socket,
            stderr_path,
            stdout_path,
        })
    }

    /// Waits until the socket accepts a connection, the process exits (an error
    /// carrying its stderr), or `timeout` passes.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.try_wait() {
                return Err(format!(
                    "plexd-target exited ({st}) before serving: {}",
                    self.stderr()
                ));
            }
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "plexd-target did not serve on {} within {timeout:?}: {}",
                    self.socket.display(),
                    self.stderr()
                ));
            }
            std::thread::sleep(PROBE_INTERVAL);
        }
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// A new client connection.
    pub fn client(&self) -> Result<KernelClient, ClientError> {
        KernelClient::connect(&self.socket)
    }

    /// What the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// What the process wrote to stdout so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// The exit status if it has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Sends `sig` and waits up to `timeout` for the exit.
    pub fn signal_and_wait(
        &mut self,
        sig: nix::sys::signal::Signal,
        timeout: Duration,
    ) -> Result<ExitStatus, String> {
        let pid = self.pid().ok_or("the process was already reaped")?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig)
            .map_err(|e| format!("kill {pid}: {e}"))?;
        self.wait_exit(timeout)
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.try_wait() {
                return Ok(st);
            }
            if Instant::now() >= deadline {
                return Err(format!("plexd-target did not exit within {timeout:?}"));
            }
            std::thread::sleep(PROBE_INTERVAL);
        }
    }
}

impl Drop for TargetProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(&self.socket);
        // The NVMe-oF reservation state the target keeps beside its socket.
        let _ = std::fs::remove_dir_all(self.socket.with_extension("nvmf-pr"));
        let _ = std::fs::remove_file(&self.stderr_path);
        let _ = std::fs::remove_file(&self.stdout_path);
    }
}
