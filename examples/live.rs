//! The examples' live terminal view and pictures of a run.
//!
//! On a terminal, a spinner line per active step (indicatif); otherwise plain
//! lines. At the end, a summary table (steps, time, tokens, cost, cache hits),
//! and the pictures asked for with `--trace-html FILE` and `--mermaid FILE`.
// Each example uses the parts it needs.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use coditect_orchestrator::observe::{CostReport, mermaid, timeline};
use coditect_orchestrator::orchestrator::{RunEvent, RunEventRecord};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

/// The pictures asked for on the command line.
#[derive(Debug, Default)]
pub(crate) struct Pictures {
    /// `--trace-html FILE`.
    pub(crate) html: Option<PathBuf>,
    /// `--mermaid FILE`.
    pub(crate) mermaid: Option<PathBuf>,
    /// The other arguments, in order.
    pub(crate) rest: Vec<String>,
}

impl Pictures {
    /// Reads `--trace-html FILE` and `--mermaid FILE` from the arguments.
    pub(crate) fn from_args() -> Result<Self, String> {
        let mut p = Pictures::default();
        let mut args = std::env::args().skip(1);
        while let Some(a) = args.next() {
            match a.as_str() {
                "--trace-html" => {
                    p.html = Some(args.next().ok_or("--trace-html needs a file")?.into())
                }
                "--mermaid" => {
                    p.mermaid = Some(args.next().ok_or("--mermaid needs a file")?.into())
                }
                _ => p.rest.push(a),
            }
        }
        Ok(p)
    }

    /// Writes the pictures of a run's events.
    pub(crate) fn write(&self, events: &[RunEventRecord]) -> std::io::Result<()> {
        if let Some(path) = &self.html {
            std::fs::write(path, timeline::html(events))?;
            println!("timeline written to {}", path.display());
        }
        if let Some(path) = &self.mermaid {
            std::fs::write(path, mermaid::sequence(events))?;
            println!("sequence diagram written to {}", path.display());
        }
        Ok(())
    }
}

/// The live view: spinners on a terminal, plain lines elsewhere; it keeps
/// every event for the summary and the pictures.
pub(crate) struct Live {
    bars: Option<MultiProgress>,
    active: HashMap<String, ProgressBar>,
    /// Every event seen, in order.
    pub(crate) events: Vec<RunEventRecord>,
}

impl Live {
    /// Spinners if standard output is a terminal.
    pub(crate) fn new() -> Self {
        Self {
            bars: std::io::stdout().is_terminal().then(MultiProgress::new),
            active: HashMap::new(),
            events: Vec::new(),
        }
    }

    /// Takes one event: a spinner starts with its step and stops with it.
    pub(crate) fn on(&mut self, record: &RunEventRecord) {
        self.events.push(record.clone());
        let Some(bars) = &self.bars else { return };
        match &record.event {
            RunEvent::StepStarted { step, agent, .. } => {
                let bar = bars.add(ProgressBar::new_spinner());
                bar.set_style(
                    ProgressStyle::with_template("{spinner} {msg} {elapsed}")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                bar.set_message(format!("{step} on {agent}"));
                bar.enable_steady_tick(Duration::from_millis(100));
                if let Some(old) = self.active.insert(step.to_string(), bar) {
                    old.finish_and_clear();
                }
            }
            RunEvent::StepSucceeded { step, .. } | RunEvent::StepFailed { step, .. } => {
                if let Some(bar) = self.active.remove(step.as_str()) {
                    bar.finish_and_clear();
                }
            }
            RunEvent::RunFinished { .. } => {
                for (_, bar) in self.active.drain() {
                    bar.finish_and_clear();
                }
            }
            _ => {}
        }
    }

    /// Prints a line above the spinners.
    pub(crate) fn println(&self, line: &str) {
        match &self.bars {
            Some(bars) => {
                let _ = bars.println(line);
            }
            None => println!("{line}"),
        }
    }

    /// Runs `f` with the spinners hidden (for text streamed as it comes).
    pub(crate) fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        match &self.bars {
            Some(bars) => bars.suspend(f),
            None => f(),
        }
    }
}

/// The summary table of a run: steps, time, tokens, cost, cache hits.
pub(crate) fn table(events: &[RunEventRecord]) -> String {
    let cost = CostReport::from_events(events);
    let mut rows: Vec<(String, String, u64, u64, u64, f64)> = Vec::new();
    let mut began: HashMap<String, u64> = HashMap::new();
    let mut took: HashMap<String, u64> = HashMap::new();
    let mut status: HashMap<String, &'static str> = HashMap::new();
    for r in events {
        match &r.event {
            RunEvent::StepDispatched { step, .. } => {
                began.entry(step.to_string()).or_insert(r.at_ms);
            }
            RunEvent::StepSucceeded { step, .. } => {
                took.insert(
                    step.to_string(),
                    r.at_ms - began.get(step.as_str()).copied().unwrap_or(r.at_ms),
                );
                status.insert(step.to_string(), "ok");
            }
            RunEvent::StepFailed {
                step,
                will_retry: false,
                ..
            } => {
                took.insert(
                    step.to_string(),
                    r.at_ms - began.get(step.as_str()).copied().unwrap_or(r.at_ms),
                );
                status.insert(step.to_string(), "failed");
            }
            _ => {}
        }
    }
    for (step, t) in &cost.by_step {
        rows.push((
            step.clone(),
            status.get(step.as_str()).copied().unwrap_or("-").to_owned(),
            took.get(step.as_str()).copied().unwrap_or_default(),
            t.total(),
            t.cache_read,
            t.cost_usd(),
        ));
    }
    for step in status.keys() {
        if !cost.by_step.contains_key(step) {
            rows.push((
                step.clone(),
                status[step].to_owned(),
                took.get(step).copied().unwrap_or_default(),
                0,
                0,
                0.0,
            ));
        }
    }
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = format!(
        "{:<16} {:<7} {:>8} {:>9} {:>11} {:>9}\n",
        "step", "status", "time ms", "tokens", "cache hits", "cost"
    );
    for (step, st, ms, tok, cache, usd) in &rows {
        out.push_str(&format!(
            "{step:<16} {st:<7} {ms:>8} {tok:>9} {cache:>11} {:>9}\n",
            format!("${usd:.4}")
        ));
    }
    let t = &cost.total;
    out.push_str(&format!(
        "{:<16} {:<7} {:>8} {:>9} {:>11} {:>9}\n",
        "total",
        "",
        events.last().map_or(0, |e| e.at_ms),
        t.total(),
        t.cache_read,
        format!("${:.4}", t.cost_usd())
    ));
    out
}
