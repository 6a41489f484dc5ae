//! The quickstart's team: a researcher with a fact-sheet lookup tool, a risk
//! analyst who delegates claims to a fact checker, a cost estimator with a
//! calculator tool, and a synthesizer — registered with the cards a planner
//! reads, thinking with Claude when a key is set and with scripts otherwise.
//!
//! Used by `quickstart` (runs a task over it), `mcp_server` (serves it over
//! MCP) and `a2a_server` (publishes it over A2A).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use coditect_agents::model::{DynLanguageModel, Usage};
use coditect_agents::tool::{Tool, ToolContext, ToolError};
use coditect_agents::{LlmAgent, LlmAgentBuilder, Pricing, ScriptedModel, ScriptedReply};
use coditect_claude::{ClaudeModel, Client, PriceTable, RetryPolicy};
use coditect_orchestrator::orchestrator::RunPolicy;
use coditect_orchestrator::{RegisterError, Runtime};
use serde_json::json;

/// The question the quickstart asks the team.
pub const GOAL: &str = "Should our team adopt Rust for the new log-ingestion service? \
Write a short recommendation covering evidence, risks and cost.";

/// The team's specialists: kind, capability, and the description on its card.
pub const SPECIALISTS: [(&str, &str, &str); 5] = [
    (
        "researcher",
        "research",
        "Gathers evidence on a question with a fact-sheet lookup tool.",
    ),
    (
        "analyst",
        "risk_analysis",
        "Finds the risks of a proposal; has claims fact-checked.",
    ),
    (
        "fact_checker",
        "fact_check",
        "Checks one claim against the fact sheet.",
    ),
    (
        "estimator",
        "cost_estimate",
        "Estimates the cost of a project with a calculator tool.",
    ),
    (
        "synthesizer",
        "synthesize",
        "Writes a final recommendation from research, risks and cost.",
    ),
];

/// The limits a run of the team gets: they end a runaway run with a clear
/// error.
pub fn policy() -> RunPolicy {
    RunPolicy {
        max_depth: 2,
        max_tokens: Some(300_000),
        max_cost_usd: Some(2.0),
        deadline: Some(Duration::from_secs(300)),
        ..RunPolicy::default()
    }
}

/// Registers the specialists on `runtime`, each kind with its card.
///
/// # Errors
///
/// [`RegisterError`] if the runtime refuses a kind (one of these names is
/// registered already, or the runtime is shutting down).
pub async fn register(runtime: &Runtime, brains: &Brains) -> Result<(), RegisterError> {
    let priced = |b: LlmAgentBuilder| match &brains.pricing {
        Some(p) => b.pricing(p.clone()),
        None => b,
    };
    for (kind, capability, description) in SPECIALISTS {
        let agent = match kind {
            "researcher" => LlmAgent::builder_shared(brains.researcher.clone())
                .system("You are a researcher. Use the lookup tool to gather evidence, then list the findings that matter for the question, citing the fact sheet.")
                .tool(Lookup),
            "analyst" => LlmAgent::builder_shared(brains.analyst.clone())
                .system("You are a risk analyst. Name the main risks of the proposal. Before relying on a claim you are unsure of, delegate it to a fact checker.")
                .delegate_to("fact_check", "Checks one claim against the team's fact sheet."),
            "fact_checker" => LlmAgent::builder_shared(brains.fact_checker.clone())
                .system("You are a fact checker. Check the claim with the lookup tool and answer: true, false or partly true, with the evidence.")
                .tool(Lookup),
            "estimator" => LlmAgent::builder_shared(brains.estimator.clone())
                .system("You estimate project cost. Assume 3 engineers at $4,000 a week unless told otherwise; use the estimate_cost tool for the arithmetic.")
                .tool(EstimateCost),
            _ => LlmAgent::builder_shared(brains.synthesizer.clone())
                .system("You write the final recommendation from the research, risks and cost you are given: a verdict first, then the reasons, in under 200 words."),
        };
        let agent = priced(agent).build();
        runtime
            .kind(kind)
            .description(description)
            .capability(capability)
            .register(move |_| agent.clone())
            .await?;
    }
    Ok(())
}

// ─────────────────────────────────────────────────────────────── the tools

/// A tiny built-in fact sheet (demo data, not live research).
pub fn fact_sheet() -> HashMap<&'static str, &'static str> {
    HashMap::from([
        (
            "performance",
            "In the team's 2025 benchmark the Rust prototype parsed 1.9 GB/s of logs, 2.7× the current Python service, at a third of the memory.",
        ),
        (
            "adoption",
            "Two of the five engineers have shipped Rust in production; the platform team already runs two Rust services.",
        ),
        (
            "learning",
            "Teams new to Rust report 2–3 months before full productivity; pairing with experienced engineers shortens it.",
        ),
        (
            "hiring",
            "Rust roles took 30% longer to fill than Python roles in the last hiring round.",
        ),
        (
            "safety",
            "Of last year's 14 ingestion incidents, 9 were memory or concurrency bugs of a kind Rust's compiler rules out.",
        ),
    ])
}

/// Looks a topic up in the team's fact sheet.
pub struct Lookup;

/// What to look up.
#[derive(serde::Deserialize, schemars::JsonSchema)]
pub struct LookupArgs {
    /// A topic: performance, adoption, learning, hiring or safety.
    pub topic: String,
}

impl Tool for Lookup {
    type Args = LookupArgs;
    type Output = String;
    fn name(&self) -> String {
        "lookup".into()
    }
    fn description(&self) -> String {
        "Looks a topic up in the team's fact sheet. Topics: performance, adoption, learning, hiring, safety.".into()
    }
    async fn call(&self, args: LookupArgs, _: ToolContext<'_>) -> Result<String, ToolError> {
        let topic = args.topic.trim().to_lowercase();
        fact_sheet()
            .into_iter()
            .find(|(k, _)| topic.contains(k))
            .map(|(_, v)| v.to_owned())
            .ok_or_else(|| {
                ToolError::failed(format!(
                    "no fact on {topic:?}; topics are performance, adoption, learning, hiring, safety"
                ))
            })
    }
}

/// Multiplies out a staffing estimate.
pub struct EstimateCost;

/// A staffing estimate.
#[derive(serde::Deserialize, schemars::JsonSchema)]
pub struct EstimateArgs {
    /// Engineers on the project.
    pub engineers: u32,
    /// Weeks of work.
    pub weeks: u32,
    /// Cost of one engineer-week in US dollars.
    pub weekly_rate_usd: f64,
}

impl Tool for EstimateCost {
    type Args = EstimateArgs;
    type Output = serde_json::Value;
    fn name(&self) -> String {
        "estimate_cost".into()
    }
    fn description(&self) -> String {
        "Computes the cost of engineers × weeks × weekly rate.".into()
    }
    async fn call(
        &self,
        a: EstimateArgs,
        _: ToolContext<'_>,
    ) -> Result<serde_json::Value, ToolError> {
        if !a.weekly_rate_usd.is_finite() || a.weekly_rate_usd < 0.0 {
            return Err(ToolError::failed(
                "weekly_rate_usd must be a non-negative number",
            ));
        }
        let engineer_weeks = u64::from(a.engineers) * u64::from(a.weeks);
        Ok(json!({
            "engineer_weeks": engineer_weeks,
            "total_usd": engineer_weeks as f64 * a.weekly_rate_usd,
        }))
    }
}

// ─────────────────────────────────────────────────────────────── the brains

/// Which model each member of the team (and its planner) thinks with.
pub struct Brains {
    /// The planner's model.
    pub planner: Arc<dyn DynLanguageModel>,
    /// The researcher's model.
    pub researcher: Arc<dyn DynLanguageModel>,
    /// The risk analyst's model.
    pub analyst: Arc<dyn DynLanguageModel>,
    /// The fact checker's model.
    pub fact_checker: Arc<dyn DynLanguageModel>,
    /// The cost estimator's model.
    pub estimator: Arc<dyn DynLanguageModel>,
    /// The synthesizer's model.
    pub synthesizer: Arc<dyn DynLanguageModel>,
    /// What a model's usage costs, when known.
    pub pricing: Option<Pricing>,
}

impl Brains {
    /// Claude when `ANTHROPIC_API_KEY` is set, the scripts otherwise; with a
    /// line saying which, for the example to print where it prints notes.
    ///
    /// # Errors
    ///
    /// A [`coditect_claude::Error`] if the key is set but the client cannot
    /// be built (a malformed `ANTHROPIC_BASE_URL`, say).
    pub fn from_env() -> Result<(Self, String), coditect_claude::Error> {
        match std::env::var("ANTHROPIC_API_KEY") {
            Ok(key) if !key.trim().is_empty() => Self::claude(),
            _ => Ok((
                Self::scripted(),
                "offline: no ANTHROPIC_API_KEY, so every agent runs on ScriptedModel — \
                 the answers are scripted, not generated by a model"
                    .to_owned(),
            )),
        }
    }

    /// Every agent thinks with Claude (`CLAUDE_MODEL`, `claude-sonnet-4-5` by
    /// default), with a line saying so.
    ///
    /// # Errors
    ///
    /// A [`coditect_claude::Error`] if the client cannot be built from the
    /// environment.
    pub fn claude() -> Result<(Self, String), coditect_claude::Error> {
        let model_name =
            std::env::var("CLAUDE_MODEL").unwrap_or_else(|_| "claude-sonnet-4-5".to_owned());
        // Few, quick retries: an unreachable API should fail in seconds, not minutes.
        let client = Client::builder()
            .from_env()
            .retry(RetryPolicy {
                max_retries: 1,
                ..RetryPolicy::default()
            })
            .build()?;
        let note = format!("using Claude ({model_name}) at {}", client.base_url());
        let model: Arc<dyn DynLanguageModel> = Arc::new(ClaudeModel::new(client, model_name));
        let prices = PriceTable::default();
        let pricing: Pricing = Arc::new(move |model: &str, u: &Usage| {
            let u = coditect_claude::types::Usage {
                input_tokens: u.input_tokens,
                output_tokens: u.output_tokens,
                cache_creation_input_tokens: u.cache_creation_input_tokens,
                cache_read_input_tokens: u.cache_read_input_tokens,
            };
            prices.cost(model, &u).unwrap_or(0.0)
        });
        let brains = Brains {
            planner: model.clone(),
            researcher: model.clone(),
            analyst: model.clone(),
            fact_checker: model.clone(),
            estimator: model.clone(),
            synthesizer: model,
            pricing: Some(pricing),
        };
        Ok((brains, note))
    }

    /// Every agent answers from a script: deterministic, offline, and honest
    /// about it. Where an answer depends on a tool's result, the script quotes
    /// the result. The scripts answer every request the same way (a server
    /// answers many): tool calls on a first turn, text after.
    pub fn scripted() -> Self {
        let first_turn =
            |r: &coditect_agents::model::CompletionRequest| r.last_tool_results().is_empty();
        let planner = ScriptedModel::new().when(
            |_| true,
            ScriptedReply::tool_call(
                "submit_plan",
                json!({
                    "steps": [
                        {"id": "research", "target": {"capability": "research"}, "input": "goal",
                         "description": "Gather the evidence for and against."},
                        {"id": "risks", "target": {"capability": "risk_analysis"}, "input": "goal",
                         "description": "Name the risks, fact-checking the shaky claims."},
                        {"id": "cost", "target": {"capability": "cost_estimate"}, "input": "goal",
                         "description": "Estimate the cost of the rewrite."},
                        {"id": "recommendation", "target": {"capability": "synthesize"},
                         "input": {"object": {
                             "question": "goal",
                             "research": {"output": "research"},
                             "risks": {"output": "risks"},
                             "cost": {"output": "cost"}}},
                         "description": "Write the recommendation."}
                    ],
                    "output": "recommendation"
                }),
            ),
        );
        let researcher = ScriptedModel::new()
            .when(
                first_turn,
                ScriptedReply::tool_calls([
                    ("lookup", json!({"topic": "performance"})),
                    ("lookup", json!({"topic": "safety"})),
                    ("lookup", json!({"topic": "adoption"})),
                ]),
            )
            .respond(
                |_| true,
                |r| {
                    let facts: Vec<String> = r
                        .last_tool_results()
                        .iter()
                        .map(|(_, t, _)| format!("- {t}"))
                        .collect();
                    ScriptedReply::text(format!(
                        "Evidence from the fact sheet:\n{}",
                        facts.join("\n")
                    ))
                },
            );
        let analyst = ScriptedModel::new()
            .when(
                first_turn,
                ScriptedReply::tool_call(
                    "delegate",
                    json!({"capability": "fact_check",
                           "task": "Claim: a team new to Rust needs months before it is fully productive."}),
                ),
            )
            .respond(
                |_| true,
                |r| {
                    let check = r.last_tool_results().first().map_or(String::new(), |(_, t, _)| (*t).to_owned());
                    ScriptedReply::text(format!(
                        "Risks:\n1. Ramp-up time. Fact check: {check}\n2. Hiring is slower for Rust roles.\n3. Two codebases during the migration."
                    ))
                },
            );
        let fact_checker = ScriptedModel::new()
            .when(
                first_turn,
                ScriptedReply::tool_call("lookup", json!({"topic": "learning"})),
            )
            .respond(
                |_| true,
                |r| {
                    let evidence = r
                        .last_tool_results()
                        .first()
                        .map_or(String::new(), |(_, t, _)| (*t).to_owned());
                    ScriptedReply::text(format!("True. {evidence}"))
                },
            );
        let estimator = ScriptedModel::new()
            .when(
                first_turn,
                ScriptedReply::tool_call(
                    "estimate_cost",
                    json!({"engineers": 3, "weeks": 10, "weekly_rate_usd": 4000}),
                ),
            )
            .respond(
                |_| true,
                |r| {
                    let result = r
                        .last_tool_results()
                        .first()
                        .map_or(String::new(), |(_, t, _)| (*t).to_owned());
                    let total = serde_json::from_str::<serde_json::Value>(&result)
                        .ok()
                        .and_then(|v| v["total_usd"].as_f64())
                        .unwrap_or(0.0);
                    ScriptedReply::text(format!(
                        "Cost: 3 engineers for 10 weeks is about ${total:.0} (estimate_cost: {result})."
                    ))
                },
            );
        let synthesizer = ScriptedModel::new().respond(
            |_| true,
            |r| {
                // The input is the object the plan built from the other steps.
                let input: serde_json::Value =
                    serde_json::from_str(&r.last_user_text()).unwrap_or(serde_json::Value::Null);
                let cost = input["cost"].as_str().unwrap_or("unknown cost");
                ScriptedReply::text(format!(
                    "Recommendation: adopt Rust for the ingestion service, with a staged migration.\n\n\
                     Why: the prototype is 2.7× faster at a third of the memory, and most past incidents \
                     were bugs Rust rules out. Risks: ramp-up takes months and hiring is slower, so pair new \
                     Rust engineers with the two who have shipped it. {cost}"
                ))
            },
        );
        let arc = |m: ScriptedModel| -> Arc<dyn DynLanguageModel> { Arc::new(m) };
        Brains {
            planner: arc(planner),
            researcher: arc(researcher),
            analyst: arc(analyst),
            fact_checker: arc(fact_checker),
            estimator: arc(estimator),
            synthesizer: arc(synthesizer),
            pricing: None,
        }
    }
}
