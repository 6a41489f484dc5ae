//! `orchestrate`: a 1,000-step plan of no-op agents, wide and chained, run by
//! the orchestrator — against the same DAG driven by hand with a tokio
//! `JoinSet` (spawn each ready step, which asks a hand-written no-op agent over
//! mpsc + oneshot; collect; release its dependents).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use coditect_orchestrator::orchestrator::{
    Orchestrator, Plan, StaticPlanner, Step, StepInput, TaskSpec,
};
use coditect_orchestrator::{Agent, AgentContext, AgentError, InMemoryTransport, Runtime};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

use crate::report::{Mode, Report, median, round2};

const STEPS: usize = 1_000;

/// Does nothing but answer.
pub struct Noop;

impl Agent for Noop {
    type Input = serde_json::Value;
    type Output = u64;
    async fn handle(
        &mut self,
        _: serde_json::Value,
        _ctx: &AgentContext,
    ) -> Result<u64, AgentError> {
        Ok(1)
    }
}

fn wide() -> Plan {
    Plan::new((0..STEPS).map(|i| Step::new(format!("s{i}"), "noop", StepInput::literal(i))))
}

fn chained() -> Plan {
    let mut steps = vec![Step::new("s0", "noop", StepInput::literal(0))];
    for i in 1..STEPS {
        steps.push(Step::new(
            format!("s{i}"),
            "noop",
            StepInput::output(format!("s{}", i - 1)),
        ));
    }
    Plan::new(steps)
}

type Ask = (u64, oneshot::Sender<u64>);

/// A hand-written no-op agent: a task answering on a channel.
fn spawn_noop_agent() -> mpsc::Sender<Ask> {
    let (tx, mut rx) = mpsc::channel::<Ask>(256);
    tokio::spawn(async move {
        while let Some((v, reply)) = rx.recv().await {
            let _ = reply.send(std::hint::black_box(v) + 1);
        }
    });
    tx
}

/// The DAG by hand: each ready step is a task in a JoinSet that asks a no-op
/// agent (mpsc + oneshot, spread over 16 agents as coditect's kind is);
/// finishing one releases its dependents.
async fn by_hand(deps: &[Vec<usize>], agents: &[mpsc::Sender<Ask>]) -> usize {
    let n = deps.len();
    let mut waiting: Vec<usize> = deps.iter().map(Vec::len).collect();
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, d) in deps.iter().enumerate() {
        for &p in d {
            dependents[p].push(i);
        }
    }
    let mut outputs: HashMap<usize, u64> = HashMap::with_capacity(n);
    let mut set = JoinSet::new();
    let spawn = |set: &mut JoinSet<(usize, u64)>, i: usize| {
        let agent = agents[i % agents.len()].clone();
        set.spawn(async move {
            let (tx, rx) = oneshot::channel();
            let _ = agent.send((i as u64, tx)).await;
            (i, rx.await.unwrap_or(0))
        });
    };
    for (i, w) in waiting.iter().enumerate() {
        if *w == 0 {
            spawn(&mut set, i);
        }
    }
    while let Some(Ok((i, out))) = set.join_next().await {
        outputs.insert(i, out);
        for &d in &dependents[i] {
            waiting[d] -= 1;
            if waiting[d] == 0 {
                spawn(&mut set, d);
            }
        }
    }
    outputs.len()
}

pub(crate) async fn one(shape: &str, mode: Mode) -> Report {
    let rt = Runtime::builder(InMemoryTransport::new())
        .build()
        .await
        .expect("runtime");
    rt.kind("noop")
        .instances(16)
        .register(|_| Noop)
        .await
        .expect("register");
    let (plan, deps): (Plan, Vec<Vec<usize>>) = match shape {
        "wide" => (wide(), vec![Vec::new(); STEPS]),
        _ => (
            chained(),
            (0..STEPS)
                .map(|i| if i == 0 { vec![] } else { vec![i - 1] })
                .collect(),
        ),
    };
    let orch = Orchestrator::new(rt.clone(), StaticPlanner::new(plan));
    let agents: Vec<mpsc::Sender<Ask>> = (0..16).map(|_| spawn_noop_agent()).collect();
    let mut ours = Vec::new();
    let mut base = Vec::new();
    // Warm-up.
    orch.run(TaskSpec::new("warm")).await.expect("run");
    by_hand(&deps, &agents).await;
    // `ORCHESTRATE_ROUNDS=300` makes a run long enough to profile.
    let rounds = std::env::var("ORCHESTRATE_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(mode.rounds());
    for _ in 0..rounds {
        let start = Instant::now();
        let out = orch.run(TaskSpec::new("bench")).await.expect("run");
        ours.push(start.elapsed().as_nanos() as f64 / STEPS as f64);
        assert_eq!(out.steps.len(), STEPS);

        let start = Instant::now();
        assert_eq!(by_hand(&deps, &agents).await, STEPS);
        base.push(start.elapsed().as_nanos() as f64 / STEPS as f64);
    }
    rt.shutdown(Duration::from_secs(5)).await;
    let ours = median(&mut ours);
    let base = median(&mut base);
    Report::new(
        &format!("orchestrate_{shape}"),
        "tokio JoinSet DAG by hand, no-op agents on mpsc+oneshot",
        ours,
        base,
    )
    .field("steps", STEPS)
    .field("overhead_ns_per_step", round2(ours - base))
}

/// Both shapes.
pub async fn run(mode: Mode) -> Vec<Report> {
    vec![one("wide", mode).await, one("chained", mode).await]
}
