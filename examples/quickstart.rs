//! Quickstart (filled in with the runtime).
fn main() {}
