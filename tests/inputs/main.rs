//! Inputs from outside: Consul's own naming test vectors, and the fuzzers' corpus and crash
//! reproducers replayed. One test binary (each links the whole crate); neither needs sockets
//! or processes.

mod fuzz_corpus;
mod naming_vectors;
