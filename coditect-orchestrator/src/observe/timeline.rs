//! A run as a self-contained HTML timeline: one file that opens with no
//! network, showing each step attempt and delegation as a bar over time with
//! its agent, status, tokens and cost; clicking a bar shows its input,
//! output, error and progress.
//!
//! ```
//! use coditect_orchestrator::observe::timeline;
//! let html = timeline::html(&[]);
//! assert!(html.starts_with("<!DOCTYPE html>"));
//! ```

use std::collections::HashMap;

use serde::Serialize;
use serde_json::Value;

use super::cost::Tokens;
use crate::id::MessageId;
use crate::orchestrator::{RunEvent, RunEventRecord, RunState, RunStatus};

/// One bar: a step attempt or a delegated subtask.
#[derive(Clone, Debug, Serialize)]
pub struct Bar {
    /// The message it carries (the bar's id on the page).
    pub id: String,
    /// `step` or `delegation`.
    pub kind: &'static str,
    /// What it is: the step and attempt, or the subtask's agent kind.
    pub label: String,
    /// The step it belongs to.
    pub step: Option<String>,
    /// The agent that handled it.
    pub agent: Option<String>,
    /// `running`, `succeeded` or `failed`.
    pub status: &'static str,
    /// Delegation depth (0: a step).
    pub depth: u16,
    /// Start and end, in ms since the run began.
    pub start_ms: u64,
    /// The end (the run's end if it never finished).
    pub end_ms: u64,
    /// What its handler spent (not its subtasks).
    pub tokens: Tokens,
    /// The step's input as the plan gives it.
    pub input: Option<Value>,
    /// Its output.
    pub output: Option<Value>,
    /// Why it failed.
    pub error: Option<String>,
    /// What its agent reported on the way.
    pub progress: Vec<Value>,
}

/// The bars of a run's events, in the order they began.
pub fn bars(events: &[RunEventRecord]) -> Vec<Bar> {
    let mut bars: Vec<Bar> = Vec::new();
    let mut at: HashMap<MessageId, usize> = HashMap::new();
    let mut step_bar: HashMap<String, usize> = HashMap::new();
    let mut inputs: HashMap<String, Value> = HashMap::new();
    let end = events.last().map_or(0, |e| e.at_ms);
    let mut state = RunState::default();
    for r in events {
        state.apply(r);
        match &r.event {
            RunEvent::PlanMade { plan, .. } => {
                for s in &plan.steps {
                    if let Ok(v) = serde_json::to_value(&s.input) {
                        inputs.insert(s.id.to_string(), v);
                    }
                }
            }
            RunEvent::StepDispatched {
                step,
                attempt,
                message,
                to,
            } => {
                at.insert(*message, bars.len());
                step_bar.insert(step.to_string(), bars.len());
                bars.push(Bar {
                    id: message.to_string(),
                    kind: "step",
                    label: if *attempt > 1 {
                        format!("{step} #{attempt}")
                    } else {
                        step.to_string()
                    },
                    step: Some(step.to_string()),
                    agent: Some(to.clone()),
                    status: "running",
                    depth: 0,
                    start_ms: r.at_ms,
                    end_ms: end,
                    tokens: Tokens::default(),
                    input: inputs.get(step.as_str()).cloned(),
                    output: None,
                    error: None,
                    progress: Vec::new(),
                });
            }
            RunEvent::StepStarted { message, agent, .. } => {
                if let Some(&i) = at.get(message) {
                    bars[i].agent = Some(agent.to_string());
                }
            }
            RunEvent::Delegated {
                step,
                message,
                agent,
                depth,
                ..
            } => {
                at.insert(*message, bars.len());
                bars.push(Bar {
                    id: message.to_string(),
                    kind: "delegation",
                    label: agent.kind().to_string(),
                    step: step.as_ref().map(ToString::to_string),
                    agent: Some(agent.to_string()),
                    status: "running",
                    depth: *depth,
                    start_ms: r.at_ms,
                    end_ms: end,
                    tokens: Tokens::default(),
                    input: None,
                    output: None,
                    error: None,
                    progress: Vec::new(),
                });
            }
            RunEvent::DelegationFinished { message, failure } => {
                if let Some(&i) = at.get(message) {
                    let b = &mut bars[i];
                    b.end_ms = r.at_ms;
                    b.status = if failure.is_some() {
                        "failed"
                    } else {
                        "succeeded"
                    };
                    b.error = failure.as_ref().map(|f| f.message.clone());
                }
            }
            RunEvent::StepSucceeded { step, output, .. } => {
                if let Some(&i) = step_bar.get(step.as_str()) {
                    let b = &mut bars[i];
                    b.end_ms = r.at_ms;
                    b.status = "succeeded";
                    b.output = Some(output.clone());
                }
            }
            RunEvent::StepFailed { step, failure, .. } => {
                if let Some(&i) = step_bar.get(step.as_str()) {
                    let b = &mut bars[i];
                    b.end_ms = r.at_ms;
                    b.status = "failed";
                    b.error = Some(failure.message.clone());
                }
            }
            RunEvent::StepProgress { step, agent, data } => {
                // The latest bar of the agent on that step.
                let found = bars.iter().rposition(|b| {
                    b.agent.as_deref() == Some(agent.to_string().as_str())
                        && b.step.as_deref() == step.as_ref().map(|s| s.as_str())
                });
                if let Some(i) = found {
                    bars[i].progress.push(data.clone());
                }
            }
            _ => {}
        }
    }
    for s in &state.spend {
        if let Some(i) = s.message.and_then(|m| at.get(&m)) {
            let t = Tokens::of(&s.usage);
            let b = &mut bars[*i].tokens;
            b.input += t.input;
            b.output += t.output;
            b.cache_read += t.cache_read;
            b.cache_write += t.cache_write;
            b.cost_nano_usd += t.cost_nano_usd;
        }
    }
    bars
}

#[derive(Serialize)]
struct Page<'a> {
    run: String,
    goal: String,
    status: &'static str,
    duration_ms: u64,
    total: Tokens,
    bars: &'a [Bar],
}

/// The HTML page of a run's events: one file, no network.
pub fn html(events: &[RunEventRecord]) -> String {
    let bars = bars(events);
    let cost = super::CostReport::from_events(events);
    let mut state = RunState::default();
    for e in events {
        state.apply(e);
    }
    let page = Page {
        run: events
            .first()
            .map(|e| e.run.to_string())
            .unwrap_or_default(),
        goal: state
            .task
            .as_ref()
            .map(|t| t.goal.clone())
            .unwrap_or_default(),
        status: match state.status {
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
            RunStatus::Running => "running",
            _ => "pending",
        },
        duration_ms: events.last().map_or(0, |e| e.at_ms),
        total: cost.total,
        bars: &bars,
    };
    // `</` may not appear inside a script element.
    let data = serde_json::to_string(&page)
        .unwrap_or_else(|_| "{}".to_owned())
        .replace("</", "<\\/");
    TEMPLATE.replace("/*DATA*/", &data)
}

const TEMPLATE: &str = r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>coditect run</title>
<style>
body{font:14px system-ui,sans-serif;margin:16px;color:#222}
h1{font-size:18px;margin:0 0 4px}
#summary{color:#555;margin-bottom:12px}
.row{display:flex;align-items:center;height:26px;border-bottom:1px solid #eee;cursor:pointer}
.row:hover{background:#f6f8fa}
.name{width:260px;flex:none;overflow:hidden;white-space:nowrap;text-overflow:ellipsis}
.track{position:relative;flex:1;height:18px}
.bar{position:absolute;height:18px;border-radius:3px;min-width:3px}
.succeeded{background:#2da44e}.failed{background:#cf222e}.running{background:#bf8700}
.meta{width:220px;flex:none;text-align:right;color:#555;font-size:12px}
#details{margin-top:16px;border:1px solid #ddd;padding:8px;display:none;white-space:pre-wrap;font:12px monospace}
</style></head><body>
<h1>Run <span id="run"></span></h1><div id="summary"></div>
<div id="rows"></div><pre id="details"></pre>
<script id="data" type="application/json">/*DATA*/</script>
<script>
(function(){
var d=JSON.parse(document.getElementById('data').textContent);
function usd(n){return '$'+(n/1e9).toFixed(4)}
document.getElementById('run').textContent=d.run;
document.getElementById('summary').textContent=d.goal+' \u2014 '+d.status+', '+d.duration_ms+' ms, '+
  (d.total.input+d.total.output)+' tokens ('+d.total.cache_read+' cache read), '+usd(d.total.cost_nano_usd);
var span=Math.max(d.duration_ms,1),rows=document.getElementById('rows'),det=document.getElementById('details');
d.bars.forEach(function(b){
  var row=document.createElement('div');row.className='row';row.dataset.id=b.id;row.dataset.kind=b.kind;
  var name=document.createElement('div');name.className='name';
  name.style.paddingLeft=(b.depth*16)+'px';name.textContent=b.label+' \u00b7 '+(b.agent||'?');
  var track=document.createElement('div');track.className='track';
  var bar=document.createElement('div');bar.className='bar '+b.status;
  bar.style.left=(100*b.start_ms/span)+'%';bar.style.width=(100*Math.max(b.end_ms-b.start_ms,0)/span)+'%';
  bar.title=b.status;track.appendChild(bar);
  var meta=document.createElement('div');meta.className='meta';
  meta.textContent=b.status+' \u00b7 '+(b.tokens.input+b.tokens.output)+' tok \u00b7 '+usd(b.tokens.cost_nano_usd);
  row.appendChild(name);row.appendChild(track);row.appendChild(meta);
  row.addEventListener('click',function(){
    det.style.display='block';det.dataset.id=b.id;
    det.textContent=[b.kind+' '+b.label+' ('+b.status+')','agent: '+(b.agent||'?'),
      'time: '+b.start_ms+'\u2013'+b.end_ms+' ms',
      'tokens: in '+b.tokens.input+', out '+b.tokens.output+', cache read '+b.tokens.cache_read+', cache write '+b.tokens.cache_write+', '+usd(b.tokens.cost_nano_usd),
      'input: '+JSON.stringify(b.input,null,2),'output: '+JSON.stringify(b.output,null,2),
      'error: '+(b.error||'none'),'progress: '+JSON.stringify(b.progress,null,2)].join('\n');
  });
  rows.appendChild(row);
});
})();
</script></body></html>
"#;
