//! `sidegate`: arguments → configuration → run, with sysexits-style exit codes.

// No function over 80 lines in src/ (`.clippy.toml` sets the threshold; CI runs clippy with
// `-D warnings`). Crate-level here, so it holds for src/ and its unit tests, not for the
// integration tests' long tables.
#![warn(clippy::too_many_lines)]

use std::process::ExitCode;
use std::sync::Arc;

use sidegate::cli::{self, Command};
use sidegate::config::{self, LoadError};
use sidegate::consul;
use sidegate::consul::follow::Receipt;
use sidegate::lifecycle::notify::Notifier;
use sidegate::lifecycle::{self, Lifecycle, Reporting};
use sidegate::mesh::snapshot::Snapshot;
use sidegate::mesh::{explain::explain, plan};
use sidegate::proxy::BindError;

/// `eprintln!` without its panic on a closed stderr (see `err_line`).
macro_rules! err {
    ($($arg:tt)*) => { err_line(format_args!($($arg)*)) };
}

const EX_USAGE: u8 = 64;
const EX_NOINPUT: u8 = 66;
const EX_OSERR: u8 = 71;
const EX_CONFIG: u8 = 78;

fn main() -> ExitCode {
    sidegate::log::init_from_env();
    let command = match cli::parse(std::env::args().skip(1)) {
        Ok(c) => c,
        Err(e) => {
            err!("sidegate: {e}\n\n{}", cli::USAGE);
            return ExitCode::from(EX_USAGE);
        }
    };
    match command {
        Command::Help => {
            out(&format!("{}\n", cli::USAGE));
            ExitCode::SUCCESS
        }
        Command::Version => {
            out(&format!(
                "sidegate {} ({})\n",
                env!("CARGO_PKG_VERSION"),
                env!("SIDEGATE_TARGET")
            ));
            ExitCode::SUCCESS
        }
        Command::Check {
            config,
            json: _,
            agent: true,
        } => load(&config).map_or_else(|code| code, |c| check_agent(&c)),
        Command::Check { config, json, .. } => {
            load(&config).map_or_else(|code| code, |c| check(&c, json))
        }
        Command::Explain { config, sni } => {
            load(&config).map_or_else(|code| code, |c| explain_sni(&c, &sni))
        }
        Command::Run { config: path } => run(path),
    }
}

fn load(path: &std::path::Path) -> Result<config::Config, ExitCode> {
    config::load(path).map_err(|e| {
        err!("sidegate: {e}");
        load_failed(&e)
    })
}

fn load_failed(e: &LoadError) -> ExitCode {
    ExitCode::from(match e {
        LoadError::Read { .. } => EX_NOINPUT,
        LoadError::Invalid { .. } => EX_CONFIG,
    })
}

/// Problems that do not stop the program but that an operator should act on.
fn warnings(snapshot: &Snapshot, plan: &sidegate::mesh::Plan) -> Vec<String> {
    let expiring = snapshot
        .identity
        .as_ref()
        .and_then(|id| id.expiry_warning(std::time::SystemTime::now()));
    plan.warnings.iter().cloned().chain(expiring).collect()
}

/// The mesh state `check` and `explain` look at: the file's, or with `[consul]` the state
/// saved from the agent (the agent itself is not asked: these commands work offline).
fn offline_state(config: &config::Config) -> Snapshot {
    let Some(settings) = &config.consul else {
        return config.snapshot.clone();
    };
    match sidegate::consul::saved_snapshot(settings, &config.snapshot) {
        Ok(Some((snapshot, saved))) => {
            let age = sidegate::consul::status::now_unix().saturating_sub(saved);
            err!("consul: showing the last-known-good state saved {age} s ago; the agent at {} was not asked", settings.address);
            snapshot
        }
        Ok(None) => {
            err!("consul: configuration valid; the mesh state comes from the agent at {} and none is saved yet to show", settings.address);
            config.snapshot.clone()
        }
        Err(e) => {
            err!("consul: {e}");
            config.snapshot.clone()
        }
    }
}

fn check(config: &config::Config, json: bool) -> ExitCode {
    let snapshot = offline_state(config);
    let plan = plan(&snapshot);
    if json {
        match serde_json::to_string_pretty(&plan) {
            Ok(text) => out(&format!("{text}\n")),
            Err(e) => {
                err!("sidegate: cannot render the plan: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        out(&sidegate::mesh::plan::describe(&plan));
    }
    for w in config
        .warnings
        .iter()
        .cloned()
        .chain(warnings(&snapshot, &plan))
    {
        err!("warning: {w}");
    }
    ExitCode::SUCCESS
}

/// How long `check --agent` waits for the agent's complete state.
const AGENT_CHECK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
const EX_UNAVAILABLE: u8 = 69;

/// `check --agent`: a line per thing each role needs (`ok` or `MISSING`), then the plan the
/// agent's state gives. Exit 0 only when everything would work.
fn check_agent(config: &config::Config) -> ExitCode {
    let Some(settings) = &config.consul else {
        err!("sidegate: check --agent needs a [consul] section: this file does not use an agent");
        return ExitCode::from(EX_CONFIG);
    };
    for w in &config.warnings {
        err!("warning: {w}");
    }
    let report = sidegate::consul::agent_check::check(settings, &config.snapshot, AGENT_CHECK_WAIT);
    let mut text = format!("agent {}:\n", settings.address);
    for f in &report.findings {
        let mark = if f.ok { "ok     " } else { "MISSING" };
        text.push_str(&format!("  {mark} {}: {}\n", f.role, f.what));
    }
    match (&report.snapshot, &report.incomplete) {
        (Some(snapshot), _) => {
            text.push_str("plan from the agent's state:\n");
            text.push_str(&sidegate::mesh::plan::describe(&plan(snapshot)));
        }
        (None, Some(why)) if !report.unreachable => {
            text.push_str(&format!("  MISSING plan: {why}\n"));
        }
        _ => {}
    }
    out(&text);
    if report.all_ok() {
        ExitCode::SUCCESS
    } else if report.unreachable {
        ExitCode::from(EX_UNAVAILABLE)
    } else {
        ExitCode::FAILURE
    }
}

fn explain_sni(config: &config::Config, sni: &str) -> ExitCode {
    let snapshot = offline_state(config);
    let plan = plan(&snapshot);
    let Some(gw) = plan.gateway.as_ref() else {
        err!("no route: this configuration has no [gateway] section");
        return ExitCode::FAILURE;
    };
    match explain(gw, &snapshot.here, sni) {
        Ok(text) => {
            out(&format!("{text}\n"));
            ExitCode::SUCCESS
        }
        Err(why) => {
            out(&format!("{why}\n"));
            ExitCode::FAILURE
        }
    }
}

/// Serves until SIGTERM/SIGINT, then drains and exits 0. Its errors go to the log (the
/// journal under systemd), with the unit's status line saying why.
fn run(path: std::path::PathBuf) -> ExitCode {
    let notifier = Arc::new(Notifier::from_env());
    let (events, received) = lifecycle::channel();
    let requests = Arc::new(sidegate::lifecycle::signals::Requests::default());
    // Signals first: a SIGHUP during start-up waits for us instead of killing the process.
    if let Err(e) = sidegate::lifecycle::signals::forward(events.clone(), requests.clone()) {
        sidegate::error!("cannot handle signals: {e}");
        notifier.status(&format!("not started: cannot handle signals: {e}"));
        return ExitCode::from(EX_OSERR);
    }
    let config = match config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            sidegate::error!("{e}");
            notifier.status(&format!("not started: {path:?} is unreadable or invalid"));
            return load_failed(&e);
        }
    };
    sidegate::log::configure(config.operations.log_level, config.operations.log_format);
    for w in &config.warnings {
        sidegate::warn!("{w}");
    }
    // With [consul], serving starts with the first complete state from the agent (or the
    // saved one when the agent is unreachable).
    let source = match lifecycle::Source::start(&config, events.clone(), consul::Options::default())
    {
        Ok(s) => s,
        Err(e) => {
            sidegate::error!("cannot start following the Consul agent: {e}");
            notifier.status(&format!("not started: cannot follow the Consul agent: {e}"));
            return ExitCode::from(EX_OSERR);
        }
    };
    let (snapshot, receipt, reporting) = match &source {
        None => (config.snapshot.clone(), None, None),
        Some(source) => match first_state(&config, source, &received, &notifier) {
            Ok(Some((s, r, reporting))) => (s, Some(r), Some(reporting)),
            Ok(None) => return ExitCode::SUCCESS,
            Err(e) => return not_started(&notifier, &e),
        },
    };
    let plan = plan(&snapshot);
    for w in warnings(&snapshot, &plan) {
        sidegate::warn!("{w}");
    }
    let (ops, notified) = (config.operations, notifier.clone());
    let started = match reporting {
        None => Lifecycle::start(path, plan, ops, notified),
        Some(reporting) => Lifecycle::start_reporting(path, plan, ops, notified, reporting),
    };
    let lifecycle = match started {
        Ok(l) => {
            // In service now: only now is the agent's state saved as last-known-good.
            if let Some(r) = receipt {
                r.in_service();
            }
            l.with_consul(source)
        }
        Err(e) => return not_started(&notifier, &e),
    };
    // Signal handling and Consul watches send on clones of `events`; this one keeps the
    // channel open while neither exists.
    let _events = events;
    lifecycle.serve(&received, &requests);
    ExitCode::SUCCESS
}

/// With `[consul]`: opens the admin endpoint, then waits for the first complete state from
/// the agent (or the saved one when the agent is unreachable). `None`: a shutdown came first.
fn first_state(
    config: &config::Config,
    source: &lifecycle::Source,
    received: &std::sync::mpsc::Receiver<lifecycle::Event>,
    notifier: &Notifier,
) -> Result<Option<(Snapshot, Receipt, Reporting)>, BindError> {
    let reporting = Reporting::open(&config.operations)?;
    reporting.follow(source);
    notifier.status("waiting for the first state from the Consul agent");
    Ok(lifecycle::follower::first_snapshot(received).map(|(s, r)| (*s, r, reporting)))
}

/// A listener (or the admin endpoint) could not be bound at start: EX_OSERR, and why.
fn not_started(notifier: &Notifier, e: &BindError) -> ExitCode {
    sidegate::error!("{e}");
    notifier.status(&format!("not started: {e}"));
    ExitCode::from(EX_OSERR)
}

/// Writes to stdout; a closed pipe (`sidegate check | head`) is not an error worth a panic.
fn out(text: &str) {
    use std::io::Write;
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

/// Writes one line to stderr. Not `eprintln!`: it panics when stderr is a closed pipe
/// (`sidegate check 2>&1 | true`), and under `panic = "abort"` that turns exit 78 into 134.
/// A message nobody can read is simply lost; the exit code still says what happened.
fn err_line(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{args}");
}
