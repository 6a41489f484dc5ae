//! `sse_parse`: how fast coditect-claude's SSE parser turns a long stream, in the exact
//! format the Claude API sends, into events — against a baseline that only splits the
//! same bytes into lines.
//!
//! Both sides get the stream in 16 KiB chunks, as a socket read would deliver it, so
//! both pay for lines cut by chunk boundaries. Extra fields: `mb_per_s` (ours),
//! `baseline_mb_per_s`, `typed_mb_per_s` (parser + JSON decoding of every event + the
//! accumulator, i.e. everything between the socket and the final message), `events`,
//! `stream_bytes`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use coditect_claude::sse::SseParser;
use coditect_claude::testing::{message, sse_text};
use coditect_claude::types::{ContentBlock, StopReason};
use coditect_claude::{MessageAccumulator, decode};

use crate::report::{Mode, Report, median};

const CHUNK: usize = 16 * 1024;

/// A long answer: prose with some multi-byte characters, then a tool call.
fn recorded_stream() -> String {
    let sentence =
        "The orchestrator dispatches every ready step in parallel — naïve retries are bounded. ";
    let text: String = sentence.repeat(60_000 / sentence.len() * 40);
    let input = serde_json::json!({"query": sentence.repeat(50), "limit": 10});
    sse_text(&message(
        vec![
            ContentBlock::text(text),
            ContentBlock::tool_use("toolu_1", "search", input),
        ],
        StopReason::ToolUse,
    ))
}

fn ours(bytes: &[u8]) -> usize {
    let mut parser = SseParser::new();
    let mut n = 0;
    for chunk in bytes.chunks(CHUNK) {
        parser
            .feed(chunk, |event, data| {
                black_box((event, data));
                n += 1;
            })
            .expect("valid stream");
    }
    parser.finish();
    n
}

fn typed(bytes: &[u8]) -> usize {
    let mut parser = SseParser::new();
    let mut acc = MessageAccumulator::new();
    for chunk in bytes.chunks(CHUNK) {
        parser
            .feed(chunk, |event, data| {
                if let Some(ev) = decode(event, data).expect("valid event") {
                    acc.push(&ev).expect("consistent events");
                }
            })
            .expect("valid stream");
    }
    black_box(acc.finish().expect("complete message"))
        .content
        .len()
}

/// The baseline: split into lines (any chunk-crossing line copied once), nothing more.
fn baseline(bytes: &[u8]) -> usize {
    let mut partial: Vec<u8> = Vec::new();
    let mut lines = 0;
    for chunk in bytes.chunks(CHUNK) {
        let mut rest = chunk;
        while let Some(i) = memchr::memchr(b'\n', rest) {
            if partial.is_empty() {
                black_box(&rest[..i]);
            } else {
                partial.extend_from_slice(&rest[..i]);
                black_box(&partial);
                partial.clear();
            }
            lines += 1;
            rest = &rest[i + 1..];
        }
        partial.extend_from_slice(rest);
    }
    lines
}

fn time(iters: usize, f: impl Fn() -> usize) -> f64 {
    let start = Instant::now();
    for _ in 0..iters {
        black_box(f());
    }
    start.elapsed().as_nanos() as f64 / iters as f64
}

fn mb_per_s(bytes: usize, ns: f64) -> f64 {
    bytes as f64 / (ns / 1e9) / 1e6
}

/// Runs the workload.
pub fn run(mode: Mode) -> Report {
    let stream = recorded_stream();
    let bytes = stream.as_bytes();
    let events = ours(bytes);
    assert!(events > 1000, "the stream should be long");
    // About 50 ms per side per round.
    let probe = time(1, || ours(bytes)).max(1.0);
    let iters = ((Duration::from_millis(50).as_nanos() as f64 / probe) as usize).clamp(1, 1000);
    let (mut o, mut b, mut t) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..mode.rounds() {
        o.push(time(iters, || ours(bytes)));
        b.push(time(iters, || baseline(bytes)));
        t.push(time(iters.div_ceil(4), || typed(bytes)));
    }
    let (o, b, t) = (median(&mut o), median(&mut b), median(&mut t));
    Report::new("sse_parse", "line_split", o, b)
        .field("mb_per_s", crate::report::round2(mb_per_s(bytes.len(), o)))
        .field(
            "baseline_mb_per_s",
            crate::report::round2(mb_per_s(bytes.len(), b)),
        )
        .field(
            "typed_mb_per_s",
            crate::report::round2(mb_per_s(bytes.len(), t)),
        )
        .field("events", events as u64)
        .field("stream_bytes", bytes.len() as u64)
}
