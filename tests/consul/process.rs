//! Child processes (Consul agents, `consul connect proxy`, `sidegate run`) that never outlive
//! the test process: each runs under a small `sh` watchdog that kills it when the test's end
//! of a pipe closes — which happens even when the test binary exits without running
//! destructors, as it does for agents shared through statics.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::process::{kill_process, Pid, Signal};

/// Lines of the child's output kept for failure messages.
const KEPT_LINES: usize = 80;

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

enum Line {
    Output(String),
    Control(String),
}

pub struct Watched {
    pub pid: i32,
    name: String,
    stdin: Option<ChildStdin>,
    child: std::process::Child,
    /// In a mutex so that an agent can be shared by the tests of one binary.
    lines: Mutex<Receiver<Line>>,
    tail: Arc<Mutex<VecDeque<String>>>,
    output_reader: Option<JoinHandle<()>>,
    exited: bool,
}

fn forward<R: Read + Send + 'static>(
    from: R,
    to: Sender<Line>,
    wrap: fn(String) -> Line,
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
            // The receiver may be gone; the tail is still kept.
            let _ = to.send(wrap(line));
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
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().expect("piped stdout");
        let output_reader = forward(out, tx.clone(), Line::Output, Some(tail.clone()));
        let control = child.stderr.take().expect("piped stderr");
        forward(control, tx, Line::Control, None);
        let mut w = Watched {
            pid: 0,
            name: name.to_owned(),
            stdin,
            child,
            lines: Mutex::new(lines),
            tail,
            output_reader: Some(output_reader),
            exited: false,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while w.pid == 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                w.next_output(left).is_some() || w.pid != 0,
                "{name}: the watchdog did not start"
            );
        }
        w
    }

    /// The next output line, handling control lines on the way; None at the deadline or
    /// when the process has ended.
    fn next_output(&mut self, within: Duration) -> Option<String> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.lines.lock().unwrap().recv_timeout(left).ok()?;
            match line {
                Line::Output(l) => return Some(l),
                Line::Control(c) => {
                    if let Some(pid) = c.strip_prefix("watchdog-pid ") {
                        self.pid = pid.trim().parse().unwrap_or(0);
                        // Hand control back to `spawn`, which waits for the pid.
                        return None;
                    }
                    if c.starts_with("watchdog-exited") {
                        self.exited = true;
                        return None;
                    }
                }
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
                _ if self.exited || left.is_zero() => panic!(
                    "{}: no line with {needle:?} within {within:?}{}; output:\n{}",
                    self.name,
                    if self.exited { " (it exited)" } else { "" },
                    self.tail()
                ),
                _ => {}
            }
        }
    }

    /// Whether the process has ended (reads what is pending).
    pub fn has_exited(&mut self) -> bool {
        while !self.exited {
            let pending = self.lines.lock().unwrap().try_recv();
            match pending {
                Ok(Line::Control(c)) if c.starts_with("watchdog-exited") => self.exited = true,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        self.exited
    }

    /// The last lines of output; all of them once the process has ended.
    pub fn tail(&self) -> String {
        if self.exited {
            // The reader ends at the pipe's EOF, just after the process.
            let deadline = Instant::now() + Duration::from_secs(2);
            while self
                .output_reader
                .as_ref()
                .is_some_and(|r| !r.is_finished())
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
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
            if left.is_zero() {
                break;
            }
            self.next_output(left);
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
        drop(self.stdin.take());
        let _ = self.signal_and_wait(Signal::KILL, Duration::from_secs(5));
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
