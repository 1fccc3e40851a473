fn main() {
    println!("sidegate {}", env!("CARGO_PKG_VERSION"));
}
