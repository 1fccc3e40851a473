//! Child processes (Consul agents, `consul connect proxy`, `sidegate run`) that never outlive
//! the test process: each runs under a small `sh` watchdog that kills it when the test's end
//! of a pipe closes — which happens even when the test binary exits without running
//! destructors, as it does for agents shared through statics.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::process::{kill_process, Pid, Signal};

use crate::common::poll_within;

/// Lines of the child's output kept for failure messages.
const KEPT_LINES: usize = 80;
/// Output lines waiting for `wait_for_line`; an agent's log nobody reads stops queueing here.
const QUEUED_LINES: usize = 10_000;

/// The watchdog: starts the command (its output on stdout), reports on stderr — its pid, and
/// `watchdog-exited` when it ends for any reason — and kills it when stdin reaches EOF (the
/// test process is gone or dropped us). fd 3 keeps the pipe: a background list's own stdin
/// is /dev/null.
const WATCHDOG: &str = r#"exec 3<&0
"$@" </dev/null 2>&1 &
c=$!
echo "watchdog-pid $c" >&2
(read _ <&3; kill -KILL "$c" 2>/dev/null) &
r=$!
wait "$c"
echo "watchdog-exited $?" >&2
kill "$r" 2>/dev/null
"#;

pub struct Watched {
    pub pid: i32,
    name: String,
    stdin: Option<ChildStdin>,
    child: std::process::Child,
    /// In mutexes so that an agent can be shared by the tests of one binary.
    output: Mutex<Receiver<String>>,
    control: Mutex<Receiver<String>>,
    tail: Arc<Mutex<VecDeque<String>>>,
    output_reader: Option<JoinHandle<()>>,
    exited: bool,
}

fn forward<R: Read + Send + 'static>(
    from: R,
    to: SyncSender<String>,
    tail: Option<Arc<Mutex<VecDeque<String>>>>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines().map_while(Result::ok) {
            if let Some(kept) = &tail {
                let mut kept = kept.lock().unwrap();
                if kept.len() == KEPT_LINES {
                    kept.pop_front();
                }
                kept.push_back(line.clone());
            }
            // The receiver may be gone or the queue full; the tail is still kept.
            let _ = to.try_send(line);
        }
    })
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
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start sh for {name}: {e}"));
        let stdin = child.stdin.take();
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let (out_tx, output) = mpsc::sync_channel(QUEUED_LINES);
        let out = child.stdout.take().expect("piped stdout");
        let output_reader = forward(out, out_tx, Some(tail.clone()));
        let (control_tx, control) = mpsc::sync_channel(QUEUED_LINES);
        forward(child.stderr.take().expect("piped stderr"), control_tx, None);
        let mut w = Watched {
            pid: 0,
            name: name.to_owned(),
            stdin,
            child,
            output: Mutex::new(output),
            control: Mutex::new(control),
            tail,
            output_reader: Some(output_reader),
            exited: false,
        };
        let first = w
            .control
            .lock()
            .unwrap()
            .recv_timeout(Duration::from_secs(10));
        w.pid = first
            .ok()
            .and_then(|l| l.strip_prefix("watchdog-pid ")?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name}: the watchdog did not start"));
        w
    }

    /// The next output line within `within`, or None (also once the process has ended).
    fn next_output(&mut self, within: Duration) -> Option<String> {
        // In slices, so that an end of the process is noticed while waiting.
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let slice = left.min(Duration::from_millis(50));
            let line = self.output.lock().unwrap().recv_timeout(slice);
            if let Ok(line) = line {
                return Some(line);
            }
            if self.has_exited() || left.is_zero() {
                return None;
            }
        }
    }

    /// Waits for an output line containing `needle`; panics with the output tail when the
    /// process ends first or the deadline passes.
    pub fn wait_for_line(&mut self, needle: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_output(left) {
                Some(line) if line.contains(needle) => return line,
                Some(_) => {}
                None => panic!(
                    "{}: no line with {needle:?} within {within:?}{}; output:\n{}",
                    self.name,
                    if self.exited { " (it exited)" } else { "" },
                    self.tail()
                ),
            }
        }
    }

    /// Whether the process has ended; output lines are left for `wait_for_line`.
    pub fn has_exited(&mut self) -> bool {
        while !self.exited {
            let Ok(line) = self.control.lock().unwrap().try_recv() else {
                break;
            };
            self.exited = line.starts_with("watchdog-exited");
        }
        self.exited
    }

    /// The last lines of output; all of them once the process has ended.
    pub fn tail(&self) -> String {
        if self.exited {
            self.wait_reader();
        }
        let kept = self.tail.lock().unwrap();
        kept.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    /// Once the process has ended: every output line `wait_for_line` has not read (all of
    /// them if it was never called), up to `QUEUED_LINES`.
    pub fn unread_output(&mut self) -> Vec<String> {
        assert!(self.has_exited(), "{} is still running", self.name);
        self.wait_reader();
        self.output.lock().unwrap().try_iter().collect()
    }

    /// Waits (bounded) for the output reader, which ends at the pipe's EOF, just after the
    /// process.
    fn wait_reader(&self) {
        let finished = || self.output_reader.as_ref().is_none_or(|r| r.is_finished());
        // Best effort: a reader still running leaves a shorter tail, not a failure.
        let _ = poll_within(Duration::from_secs(2), finished);
    }

    /// Sends `sig` and waits up to `within` for the process to end.
    pub fn signal_and_wait(&mut self, sig: Signal, within: Duration) -> bool {
        if !self.has_exited() {
            if let Some(pid) = Pid::from_raw(self.pid) {
                let _ = kill_process(pid, sig);
            }
        }
        poll_within(within, || self.has_exited()).is_ok()
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
        drop(self.stdin.take());
        let _ = self.signal_and_wait(Signal::KILL, Duration::from_secs(5));
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
