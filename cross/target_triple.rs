// Records the target triple for `sidegate --version`: on a fleet of mixed boards the first
// question about a binary is which one it is. Also names the link order list as an input: the
// static builds' linker (cross/ordered-cc) lays out code by it, which cargo cannot see.
fn main() {
    let target = std::env::var("TARGET").unwrap_or_else(|_| "unknown".into());
    println!("cargo:rustc-env=SIDEGATE_TARGET={target}");
    // Only this file matters (TARGET is fixed per build); without the line cargo reruns the
    // script, and recompiles the crate, whenever any file of the package changes.
    println!("cargo:rerun-if-changed=cross/target_triple.rs");
    println!("cargo:rerun-if-changed=cross/link-order.txt");
    println!("cargo:rerun-if-changed=cross/ordered-cc");
}
