//! `LlmPlanner`: a model decomposes the task into a plan over the team's cards.
//!
//! This is the orchestrator-workers pattern: the model sees every registered
//! agent's card (capabilities, description, input schema) and the task, and
//! answers with a [`Plan`] as structured output (a tool whose input schema is
//! the plan's JSON Schema). The plan is validated with [`Plan::validate`]
//! against the same cards and the run's step limit; an invalid plan — not JSON,
//! not a plan, an unknown capability, a cycle, a dangling dependency — goes
//! back to the model with the validation error, a bounded number of times,
//! then planning fails with a [`PlanError::Planner`] naming the last error.
//! Re-planning after a failed step goes through the same model and checks.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use coditect_orchestrator::AgentCard;
use coditect_orchestrator::orchestrator::{
    Plan, PlanError, Planner, PlanningContext, RunState, StepFailure, StepStatus, TaskSpec,
};

use crate::model::{CompletionRequest, DynLanguageModel, LanguageModel, Message, Usage};
use crate::progress::clip;
use crate::structured::{StructuredAsk, StructuredError, ask_structured};

/// The name of the tool the planner's model answers through.
pub const SUBMIT_PLAN_TOOL: &str = "submit_plan";

const SYSTEM: &str = "You are the planner of a team of agents. Decompose the task into a plan: \
a directed acyclic graph of steps, each done by an agent offering one of the listed capabilities. \
Answer only by calling the tool submit_plan with the plan.\n\
Rules:\n\
- Each step has a short unique id (a slug such as \"research\").\n\
- target is {\"capability\": \"<one of the listed capabilities>\"}.\n\
- input is one of: \"goal\" (the task's goal as text), \"task_input\" (the task's input data), \
{\"output\": \"<step id>\"} (the result of another step), {\"literal\": <any JSON>}, \
{\"object\": {\"<key>\": <input>, ...}} or {\"array\": [<input>, ...]}.\n\
- A step that uses another step's output depends on it; list extra dependencies in depends_on.\n\
- Steps that do not depend on each other run in parallel: prefer that when the work allows it.\n\
- Set output to the id of the step whose result is the final answer.\n\
- Write a one-line description for each step.";

/// A [`Planner`] that asks a language model for the plan.
///
/// # Examples
///
/// ```
/// use coditect_agents::{LlmPlanner, ScriptedModel, ScriptedReply};
/// use coditect_orchestrator::orchestrator::{Planner, PlanningContext, TaskSpec};
/// # use coditect_orchestrator::{AgentCard, AgentKind};
/// # let card = AgentCard { kind: AgentKind::new("writer").unwrap(), name: "writer".into(),
/// #     description: "Writes.".into(), capabilities: vec!["write".into()],
/// #     input_schema: serde_json::json!({}), output_schema: serde_json::json!({}) };
///
/// let model = ScriptedModel::new()
///     // An unknown capability is sent back with the error…
///     .then(ScriptedReply::tool_call("submit_plan", serde_json::json!({"steps": [
///         {"id": "a", "target": {"capability": "paint"}, "input": "goal"}]})))
///     // …and the model corrects itself.
///     .then(ScriptedReply::tool_call("submit_plan", serde_json::json!({"steps": [
///         {"id": "a", "target": {"capability": "write"}, "input": "goal"}]})));
/// let planner = LlmPlanner::new(model.clone());
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let plan = planner.plan(&TaskSpec::new("a poem"), &PlanningContext::new(vec![card])).await?;
/// assert_eq!(plan.steps.len(), 1);
/// assert!(model.requests()[1].last_tool_results()[0].1.contains("paint"));
/// # Ok::<_, coditect_orchestrator::orchestrator::PlanError>(()) }).unwrap();
/// ```
pub struct LlmPlanner {
    model: Arc<dyn DynLanguageModel>,
    max_repairs: u32,
    max_tokens: u32,
    instructions: Option<String>,
    usage: Mutex<Usage>,
}

impl std::fmt::Debug for LlmPlanner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlmPlanner")
            .field("max_repairs", &self.max_repairs)
            .field("max_tokens", &self.max_tokens)
            .finish_non_exhaustive()
    }
}

impl LlmPlanner {
    /// A planner thinking with `model`; an invalid plan is sent back twice
    /// before planning fails.
    pub fn new(model: impl LanguageModel + 'static) -> Self {
        Self::shared(Arc::new(model))
    }

    /// A planner around a shared model.
    pub fn shared(model: Arc<dyn DynLanguageModel>) -> Self {
        Self {
            model,
            max_repairs: 2,
            max_tokens: 4096,
            instructions: None,
            usage: Mutex::new(Usage::default()),
        }
    }

    /// How many invalid plans are sent back for repair before giving up.
    #[must_use]
    pub fn max_repairs(mut self, n: u32) -> Self {
        self.max_repairs = n;
        self
    }

    /// The most tokens one planning answer may take (default 4096).
    #[must_use]
    pub fn max_tokens(mut self, n: u32) -> Self {
        self.max_tokens = n;
        self
    }

    /// Extra instructions for the planner (house rules, preferred shapes).
    #[must_use]
    pub fn instructions(mut self, text: impl Into<String>) -> Self {
        self.instructions = Some(text.into());
        self
    }

    /// Tokens the planner has used so far, over every run it planned. Each
    /// run also counts its own planning usage (reported through the
    /// [`PlanningContext`]) against its budget.
    pub fn usage(&self) -> Usage {
        self.usage.lock().map(|u| *u).unwrap_or_default()
    }

    async fn ask(
        &self,
        prompt: String,
        task: &TaskSpec,
        ctx: &PlanningContext,
    ) -> Result<Plan, PlanError> {
        let cards = &ctx.cards;
        let mut system = SYSTEM.to_owned();
        if let Some(extra) = &self.instructions {
            system.push_str("\n\n");
            system.push_str(extra);
        }
        let mut request = CompletionRequest::new(vec![Message::user(prompt)], self.max_tokens);
        request.system = Some(system);
        let ask =
            StructuredAsk::new(SUBMIT_PLAN_TOOL, "Submits the plan.").max_repairs(self.max_repairs);
        let max_steps = task.policy.max_steps;
        let result = ask_structured::<Plan, _>(&*self.model, request, &ask, |plan| {
            plan.validate(cards, max_steps).map_err(|e| e.to_string())
        })
        .await;
        let spent = match &result {
            Ok(s) => s.usage,
            Err(e) => e.usage(),
        };
        if let Ok(mut u) = self.usage.lock() {
            u.add(&spent);
        }
        // Planning counts against the run's token budget like any agent's
        // model calls.
        ctx.report_usage(coditect_orchestrator::Usage::new(
            spent
                .input_tokens
                .saturating_add(spent.cache_creation_input_tokens)
                .saturating_add(spent.cache_read_input_tokens),
            spent.output_tokens,
            0.0,
        ));
        match result {
            Ok(s) => Ok(s.value),
            Err(StructuredError::GaveUp {
                attempts,
                last_error,
                ..
            }) => Err(PlanError::Planner {
                message: format!(
                    "the model gave no valid plan in {attempts} attempts; the last was refused: {last_error}"
                ),
            }),
            Err(e) => Err(PlanError::Planner {
                message: e.to_string(),
            }),
        }
    }
}

fn describe_team(cards: &[AgentCard]) -> String {
    let mut s = String::from("Agents you can plan with:\n");
    for c in cards {
        s.push_str(&format!(
            "- capabilities {:?} (agent {}): {}\n",
            c.capabilities,
            c.name,
            if c.description.is_empty() {
                "no description"
            } else {
                &c.description
            }
        ));
        let has_shape = c.input_schema.get("properties").is_some()
            || c.input_schema.get("type").is_some_and(|t| t != "object");
        if has_shape {
            s.push_str(&format!("  input schema: {}\n", c.input_schema));
        }
    }
    s
}

fn describe_task(task: &TaskSpec) -> String {
    let mut s = format!("Task goal: {}\n", task.goal);
    if !task.input.is_null() {
        s.push_str(&format!(
            "Task input: {}\n",
            clip(&task.input.to_string(), 4000)
        ));
    }
    s.push_str(&format!(
        "The plan may have at most {} steps.\n",
        task.policy.max_steps
    ));
    s
}

#[async_trait]
impl Planner for LlmPlanner {
    async fn plan(&self, task: &TaskSpec, ctx: &PlanningContext) -> Result<Plan, PlanError> {
        let prompt = format!("{}\n{}", describe_team(&ctx.cards), describe_task(task));
        self.ask(prompt, task, ctx).await
    }

    async fn replan(
        &self,
        task: &TaskSpec,
        state: &RunState,
        failure: &StepFailure,
        ctx: &PlanningContext,
    ) -> Result<Option<Plan>, PlanError> {
        let mut prompt = format!("{}\n{}\n", describe_team(&ctx.cards), describe_task(task));
        if let Some(plan) = state.plan() {
            prompt.push_str(&format!(
                "The current plan: {}\n",
                serde_json::to_string(plan).unwrap_or_default()
            ));
        }
        let done: Vec<String> = state
            .steps
            .iter()
            .filter(|(_, s)| s.status == StepStatus::Succeeded)
            .map(|(id, s)| {
                format!(
                    "- {id}: {}",
                    clip(
                        &s.output.as_ref().map(|o| o.to_string()).unwrap_or_default(),
                        300
                    )
                )
            })
            .collect();
        if !done.is_empty() {
            prompt.push_str(&format!(
                "Finished steps (keep their ids to reuse their results; they will not run again):\n{}\n",
                done.join("\n")
            ));
        }
        prompt.push_str(&format!(
            "Step {} failed for good: {}\nSubmit a revised plan for the remaining work that avoids this failure.",
            failure.step, failure.failure
        ));
        self.ask(prompt, task, ctx).await.map(Some)
    }
}
