//! Side-by-side benchmarks: one JSON line per workload.
//!
//! `cargo run --release -p coditect-benches --bin compare -- [--quick]`

use coditect_benches::report::Mode;

fn main() {
    let mode = if std::env::args().any(|a| a == "--quick") {
        Mode::Quick
    } else {
        Mode::Full
    };
    let workloads: [fn(Mode) -> coditect_benches::report::Report; 1] = [coditect_benches::sse::run];
    for run in workloads {
        println!("{}", run(mode).to_json());
    }
}
