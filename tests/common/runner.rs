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
    private_fixture_keys();
    let runner = runner().unwrap_or_default();
    let mut argv: Vec<String> = runner.split_whitespace().map(str::to_owned).collect();
    argv.push(bin.to_string_lossy().into_owned());
    argv
}

/// Git keeps no file modes but the executable bit, so a checkout leaves the fixtures' private
/// keys readable by everyone, and `check` warns about such a key file. Keys are 0600 where
/// they are kept properly; the fixtures are made so before the binary reads them.
pub fn private_fixture_keys() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tls");
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let name = entry.file_name();
            if name.to_string_lossy().ends_with("-key.pem")
                || name.to_string_lossy().contains("-key-")
            {
                let _ =
                    std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o600));
            }
        }
    });
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
