//! Child processes (Consul agents, `consul connect proxy`) that never outlive the test
//! process: each runs under a small `sh` watchdog that kills it when the test's end of a pipe
//! closes — which happens even when the test binary exits without running destructors, as it
//! does for agents shared through statics.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustix::process::{kill_process, Pid, Signal};

/// Lines of the child's output kept for failure messages.
const KEPT_LINES: usize = 60;

/// The watchdog: starts the command, prints its pid, kills it when stdin reaches EOF (the test
/// process is gone or dropped us), and prints `exited` when it ends for any reason. fd 3 keeps
/// the pipe: a background list's own stdin is /dev/null.
const WATCHDOG: &str = r#"exec 3<&0
"$@" </dev/null 2>&1 &
c=$!
echo "watchdog-pid $c"
(read _ <&3; kill -KILL "$c" 2>/dev/null) &
r=$!
wait "$c"
echo "watchdog-exited $?"
kill "$r" 2>/dev/null
"#;

pub struct Watched {
    pub pid: i32,
    name: String,
    stdin: Option<ChildStdin>,
    child: std::process::Child,
    /// In a mutex so that an agent can be shared by the tests of one binary.
    lines: Mutex<Receiver<String>>,
    tail: Arc<Mutex<VecDeque<String>>>,
    exited: bool,
}

impl Watched {
    /// Starts `program args...`; its stdout and stderr are read line by line.
    pub fn spawn(name: &str, program: &str, args: &[String]) -> Watched {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(WATCHDOG)
            .arg("sh")
            .arg(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            // The child's stderr is in stdout; the shell's own job notices are noise.
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start sh for {name}: {e}"));
        let stdin = child.stdin.take();
        let out = BufReader::new(child.stdout.take().expect("piped stdout"));
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let (tx, lines) = mpsc::channel();
        let kept = tail.clone();
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                {
                    let mut kept = kept.lock().unwrap();
                    if kept.len() == KEPT_LINES {
                        kept.pop_front();
                    }
                    kept.push_back(line.clone());
                }
                // The receiver may be gone; the tail is still kept.
                let _ = tx.send(line);
            }
        });
        let mut w = Watched {
            pid: 0,
            name: name.to_owned(),
            stdin,
            child,
            lines: Mutex::new(lines),
            tail,
            exited: false,
        };
        let first = w
            .next_line(Duration::from_secs(10))
            .unwrap_or_else(|| panic!("{name}: the watchdog did not start"));
        w.pid = first
            .strip_prefix("watchdog-pid ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name}: unexpected first line {first:?}"));
        w
    }

    /// The next output line, or None at the deadline or when the output ended.
    fn next_line(&mut self, within: Duration) -> Option<String> {
        let line = self.lines.lock().unwrap().recv_timeout(within).ok()?;
        if line.starts_with("watchdog-exited") {
            self.exited = true;
        }
        Some(line)
    }

    /// Waits for an output line containing `needle`; panics with the output tail when the
    /// process ends first or the deadline passes.
    pub fn wait_for_line(&mut self, needle: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_line(left) {
                Some(line) if line.contains(needle) => return line,
                Some(_) if !self.exited => {}
                _ => panic!(
                    "{}: no line with {needle:?} within {within:?}{}; output:\n{}",
                    self.name,
                    if self.exited { " (it exited)" } else { "" },
                    self.tail()
                ),
            }
        }
    }

    /// Whether the process has ended (drains pending output lines).
    pub fn has_exited(&mut self) -> bool {
        while !self.exited {
            if self.next_line(Duration::ZERO).is_none() {
                break;
            }
        }
        self.exited
    }

    pub fn tail(&self) -> String {
        let kept = self.tail.lock().unwrap();
        kept.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    /// Sends `sig` and waits up to `within` for the process to end.
    pub fn signal_and_wait(&mut self, sig: Signal, within: Duration) -> bool {
        if !self.has_exited() {
            if let Some(pid) = Pid::from_raw(self.pid) {
                let _ = kill_process(pid, sig);
            }
        }
        let deadline = Instant::now() + within;
        while !self.exited {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || self.next_line(left).is_none() {
                break;
            }
        }
        self.exited
    }

    /// Graceful stop (SIGTERM), then SIGKILL if it does not end in time.
    pub fn stop(&mut self) {
        if !self.signal_and_wait(Signal::TERM, Duration::from_secs(10)) {
            self.signal_and_wait(Signal::KILL, Duration::from_secs(10));
        }
    }

    /// A crash: SIGKILL.
    pub fn kill(&mut self) {
        self.signal_and_wait(Signal::KILL, Duration::from_secs(10));
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        // EOF on the watchdog's stdin kills the process; then reap the shell.
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.flush();
        }
        let _ = self.signal_and_wait(Signal::KILL, Duration::from_secs(5));
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
