// Records the target triple for `sidegate --version`: on a fleet of mixed boards the first
// question about a binary is which one it is.
fn main() {
    let target = std::env::var("TARGET").unwrap_or_else(|_| "unknown".into());
    println!("cargo:rustc-env=SIDEGATE_TARGET={target}");
    // Only this file matters (TARGET is fixed per build); without the line cargo reruns the
    // script, and recompiles the crate, whenever any file of the package changes.
    println!("cargo:rerun-if-changed=cross/target_triple.rs");
}
