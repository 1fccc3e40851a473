//! The `sidegate` binary as a command, also when the tests run under an emulator.

/// The `sidegate` binary as a command. When the tests run under emulation (cross/test.sh), the
/// binary is built for another architecture that the kernel cannot exec without binfmt_misc
/// (absent in containers and CI), so it is started through the runner cargo itself uses for
/// this target: `CARGO_TARGET_<TRIPLE>_RUNNER`, inherited from the environment. Every test that
/// starts the binary goes through here (or `sidegate_argv`).
pub fn sidegate_command() -> std::process::Command {
    command_for(std::path::Path::new(env!("CARGO_BIN_EXE_sidegate")))
}

/// The program and leading arguments that start `sidegate`, for helpers that build their own
/// command line (e.g. under a watchdog shell).
pub fn sidegate_argv() -> Vec<String> {
    argv_for(std::path::Path::new(env!("CARGO_BIN_EXE_sidegate")))
}

/// A command running `bin`, a program built for the tests' target, through that target's
/// runner when one is set.
pub fn command_for(bin: &std::path::Path) -> std::process::Command {
    let argv = argv_for(bin);
    let mut command = std::process::Command::new(&argv[0]);
    command.args(&argv[1..]);
    command
}

/// The runner's words (if any), then `bin`.
pub fn argv_for(bin: &std::path::Path) -> Vec<String> {
    let runner = runner().unwrap_or_default();
    let mut argv: Vec<String> = runner.split_whitespace().map(str::to_owned).collect();
    argv.push(bin.to_string_lossy().into_owned());
    argv
}

/// The runner (emulator) of the tests' target, when they run under one.
pub fn runner() -> Option<String> {
    let var = format!(
        "CARGO_TARGET_{}_RUNNER",
        env!("SIDEGATE_TARGET")
            .replace(['-', '.'], "_")
            .to_uppercase()
    );
    std::env::var(var).ok().filter(|r| !r.trim().is_empty())
}
