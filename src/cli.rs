//! Command-line arguments. Four commands and a handful of flags do not need a parser crate.

use std::path::PathBuf;

#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    Run {
        config: PathBuf,
    },
    Check {
        config: PathBuf,
        json: bool,
        /// `--agent`: ask the Consul agent whether the token and registrations will work.
        agent: bool,
    },
    Explain {
        config: PathBuf,
        sni: String,
    },
    Version,
    Help,
}

pub const USAGE: &str = "\
usage: sidegate run --config FILE              run every configured role
       sidegate check --config FILE [--json]   validate and print the resolved plan
       sidegate check --agent --config FILE    ask the Consul agent: registrations, ACL
                                               permissions, leaf, and the resulting plan
       sidegate explain --config FILE --sni NAME
                                               which gateway route NAME takes, and why
       sidegate --version

signals (run): SIGHUP reloads the file; SIGTERM/SIGINT drain, then exit 0

exit codes: 0 ok; 1 explain found no route, or check --agent found something missing;
            64 bad usage; 66 config file unreadable; 69 check --agent reached no agent;
            71 a listener could not be bound; 78 invalid configuration
environment: SIDEGATE_LOG=error|warn|info|debug (wins over [log] level)";

/// What is wrong with the command line; printed above the usage text.
#[derive(Debug, PartialEq, Eq)]
pub enum UsageError {
    /// A flag given last, without its value.
    NeedsValue(&'static str),
    UnknownArgument(String),
    NeedsConfig(String),
    NeedsSni,
    /// A known flag that this command does not take.
    WrongFlag(String),
    UnknownCommand(String),
}

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UsageError::NeedsValue(flag) => write!(f, "{flag} needs a value"),
            UsageError::UnknownArgument(arg) => write!(f, "unknown argument {arg:?}"),
            UsageError::NeedsConfig(cmd) => write!(f, "{cmd} needs --config FILE"),
            UsageError::NeedsSni => f.write_str("explain needs --sni NAME"),
            UsageError::WrongFlag(cmd) => write!(f, "{cmd} does not take that flag"),
            UsageError::UnknownCommand(cmd) => write!(f, "unknown command {cmd:?}"),
        }
    }
}

pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Command, UsageError> {
    let mut args = args.into_iter();
    let Some(cmd) = args.next() else {
        return Ok(Command::Help);
    };
    let mut config = None;
    let mut json = false;
    let mut agent = false;
    let mut sni = None;
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        let mut value = |name: &'static str| {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or(UsageError::NeedsValue(name))
        };
        match flag.as_str() {
            "--config" | "-c" => config = Some(PathBuf::from(value("--config")?)),
            "--sni" => sni = Some(value("--sni")?),
            "--json" if inline.is_none() => json = true,
            "--agent" if inline.is_none() => agent = true,
            _ => return Err(UsageError::UnknownArgument(arg)),
        }
    }
    let need_config = |c: Option<PathBuf>| c.ok_or_else(|| UsageError::NeedsConfig(cmd.clone()));
    match cmd.as_str() {
        "run" if !json && !agent && sni.is_none() => Ok(Command::Run {
            config: need_config(config)?,
        }),
        "check" if sni.is_none() && !(json && agent) => Ok(Command::Check {
            config: need_config(config)?,
            json,
            agent,
        }),
        "explain" if !json && !agent => Ok(Command::Explain {
            config: need_config(config)?,
            sni: sni.ok_or(UsageError::NeedsSni)?,
        }),
        "--version" | "-V" | "version" => Ok(Command::Version),
        "--help" | "-h" | "help" => Ok(Command::Help),
        "run" | "check" | "explain" => Err(UsageError::WrongFlag(cmd)),
        _ => Err(UsageError::UnknownCommand(cmd)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Command, UsageError> {
        parse(s.split_whitespace().map(String::from))
    }

    #[test]
    fn parses_commands() {
        assert_eq!(
            p("run --config a.toml"),
            Ok(Command::Run {
                config: "a.toml".into()
            })
        );
        assert_eq!(
            p("check --config=a.toml --json"),
            Ok(Command::Check {
                config: "a.toml".into(),
                json: true,
                agent: false
            })
        );
        assert_eq!(
            p("check --agent --config a.toml"),
            Ok(Command::Check {
                config: "a.toml".into(),
                json: false,
                agent: true
            })
        );
        assert!(p("check --agent --json --config a").is_err());
        assert!(p("run --agent --config a").is_err());
        assert_eq!(
            p("explain -c a.toml --sni x.y"),
            Ok(Command::Explain {
                config: "a.toml".into(),
                sni: "x.y".into()
            })
        );
        assert_eq!(p("--version"), Ok(Command::Version));
        assert_eq!(p(""), Ok(Command::Help));
        assert!(p("run").is_err());
        assert!(p("run --config").is_err());
        assert!(p("run --config a --json").is_err());
        assert!(p("explain --config a").is_err());
        assert!(p("serve --config a").is_err());
        assert!(p("check --config a --verbose").is_err());
    }
}
