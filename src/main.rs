//! `sidegate`: arguments → configuration → run, with sysexits-style exit codes.

use std::process::ExitCode;

use sidegate::cli::{self, Command};
use sidegate::config::{self, LoadError};
use sidegate::lifecycle::{self, Lifecycle};
use sidegate::mesh::{explain::explain, plan};

const EX_USAGE: u8 = 64;
const EX_NOINPUT: u8 = 66;
const EX_OSERR: u8 = 71;
const EX_CONFIG: u8 = 78;

fn main() -> ExitCode {
    sidegate::log::init_from_env();
    let command = match cli::parse(std::env::args().skip(1)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sidegate: {e}\n\n{}", cli::USAGE);
            return ExitCode::from(EX_USAGE);
        }
    };
    match command {
        Command::Help => {
            println!("{}", cli::USAGE);
            ExitCode::SUCCESS
        }
        Command::Version => {
            println!(
                "sidegate {} ({})",
                env!("CARGO_PKG_VERSION"),
                env!("SIDEGATE_TARGET")
            );
            ExitCode::SUCCESS
        }
        Command::Check { config, json } => {
            load(&config).map_or_else(|code| code, |c| check(&c, json))
        }
        Command::Explain { config, sni } => {
            load(&config).map_or_else(|code| code, |c| explain_sni(&c, &sni))
        }
        Command::Run { config: path } => {
            load(&path).map_or_else(|code| code, |config| run(path, &config))
        }
    }
}

fn load(path: &std::path::Path) -> Result<config::Config, ExitCode> {
    config::load(path).map_err(|e| {
        eprintln!("sidegate: {e}");
        ExitCode::from(match e {
            LoadError::Read { .. } => EX_NOINPUT,
            LoadError::Invalid { .. } => EX_CONFIG,
        })
    })
}

/// Problems that do not stop the program but that an operator should act on.
fn warnings(config: &config::Config, plan: &sidegate::mesh::Plan) -> Vec<String> {
    let expiring = config
        .snapshot
        .identity
        .as_ref()
        .and_then(|id| id.expiry_warning(std::time::SystemTime::now()));
    plan.warnings.iter().cloned().chain(expiring).collect()
}

fn check(config: &config::Config, json: bool) -> ExitCode {
    let plan = plan(&config.snapshot);
    if json {
        match serde_json::to_string_pretty(&plan) {
            Ok(text) => println!("{text}"),
            Err(e) => {
                eprintln!("sidegate: cannot render the plan: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        print!("{}", sidegate::mesh::plan::describe(&plan));
    }
    for w in warnings(config, &plan) {
        eprintln!("warning: {w}");
    }
    ExitCode::SUCCESS
}

fn explain_sni(config: &config::Config, sni: &str) -> ExitCode {
    let plan = plan(&config.snapshot);
    let Some(gw) = plan.gateway.as_ref() else {
        eprintln!("no route: this configuration has no [gateway] section");
        return ExitCode::FAILURE;
    };
    match explain(gw, &config.snapshot.here, sni) {
        Ok(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(why) => {
            println!("{why}");
            ExitCode::FAILURE
        }
    }
}

fn run(path: std::path::PathBuf, config: &config::Config) -> ExitCode {
    let plan = plan(&config.snapshot);
    for w in warnings(config, &plan) {
        sidegate::warn!("{w}");
    }
    let lifecycle = match Lifecycle::start(path, plan) {
        Ok(l) => l,
        Err(e) => {
            sidegate::error!("{e}");
            return ExitCode::from(EX_OSERR);
        }
    };
    let (events, received) = lifecycle::channel();
    // Signal handling and Consul watches send on clones of `events`; this one keeps the
    // channel open while neither exists.
    let _events = events;
    lifecycle.serve(&received);
    ExitCode::SUCCESS
}
