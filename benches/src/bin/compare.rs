//! Side-by-side benchmarks (filled in with the runtime).
fn main() {}
