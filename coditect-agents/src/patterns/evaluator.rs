//! Evaluator-optimizer: a generator drafts, a critic scores the draft and sends
//! it back with feedback, until a draft passes or the rounds run out.

use std::sync::Arc;

use coditect_orchestrator::{Agent, AgentContext, AgentError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::agent::{Pricing, emit, model_error, render_input, report_usage};
use crate::model::{CompletionRequest, DynLanguageModel, LanguageModel, Message};
use crate::patterns::policy_aware;
use crate::progress::AgentProgress;
use crate::structured::{StructuredAsk, StructuredError, ask_structured};

/// A critic's judgement of a draft.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Verdict {
    /// Whether the draft is good enough to ship as is.
    pub passed: bool,
    /// The draft's quality from 0 (useless) to 10 (perfect).
    pub score: u8,
    /// What to change, concretely; empty if nothing.
    pub feedback: String,
}

/// A critic agent: a model scores a draft against a rubric and answers a
/// [`Verdict`] (structured output, checked: the score is 0–10).
///
/// Its input is `{"task": …, "draft": …}` (what [`EvaluatorOptimizer`] sends)
/// or any value, read as the draft.
#[derive(Clone)]
pub struct Critic {
    model: Arc<dyn DynLanguageModel>,
    rubric: String,
    pass_score: Option<u8>,
    pricing: Option<Pricing>,
}

impl std::fmt::Debug for Critic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Critic")
            .field("rubric", &self.rubric)
            .field("pass_score", &self.pass_score)
            .finish_non_exhaustive()
    }
}

impl Critic {
    /// A critic judging with `model` against `rubric`.
    pub fn new(model: impl LanguageModel + 'static, rubric: impl Into<String>) -> Self {
        Self {
            model: Arc::new(model),
            rubric: rubric.into(),
            pass_score: None,
            pricing: None,
        }
    }

    /// A draft passes only if the model passes it and it scores at least `score`.
    #[must_use]
    pub fn pass_score(mut self, score: u8) -> Self {
        self.pass_score = Some(score);
        self
    }

    /// Prices the model's usage, so cost budgets apply.
    #[must_use]
    pub fn pricing(mut self, pricing: Pricing) -> Self {
        self.pricing = Some(pricing);
        self
    }
}

impl Agent for Critic {
    type Input = Value;
    type Output = Verdict;

    async fn handle(&mut self, input: Value, ctx: &AgentContext) -> Result<Verdict, AgentError> {
        let prompt = match (input.get("task"), input.get("draft")) {
            (Some(task), Some(draft)) => format!(
                "Task:\n{}\n\nDraft to review:\n{}",
                render_input(task),
                render_input(draft)
            ),
            _ => format!("Draft to review:\n{}", render_input(&input)),
        };
        let mut request = CompletionRequest::new(vec![Message::user(prompt)], 1024);
        request.system = Some(format!(
            "You are a strict reviewer. Judge the draft against this rubric and answer by calling submit_verdict.\nRubric:\n{}",
            self.rubric
        ));
        let ask = StructuredAsk::new("submit_verdict", "Submits the verdict on the draft.");
        let result = ask_structured(&*self.model, request, &ask, |v: &Verdict| {
            if v.score <= 10 {
                Ok(())
            } else {
                Err(format!("score {} is outside 0–10", v.score))
            }
        })
        .await;
        match result {
            Ok(s) => {
                let cost = self.pricing.as_ref().map_or(0.0, |p| p(&s.model, &s.usage));
                report_usage(ctx, &s.model, &s.usage, cost).await;
                let mut v = s.value;
                if let Some(min) = self.pass_score {
                    v.passed = v.passed && v.score >= min;
                }
                Ok(v)
            }
            Err(e) => {
                report_usage(ctx, self.model.model_name(), &e.usage(), 0.0).await;
                Err(match e {
                    StructuredError::Model { error, .. } => model_error(error),
                    other => AgentError::permanent(format!("the critic gave no verdict: {other}")),
                })
            }
        }
    }
}

/// The evaluator-optimizer loop as an agent: its input is the task; it asks
/// the generator capability for a draft and the critic capability for a
/// [`Verdict`], sends the draft back with the feedback, and stops when a
/// draft passes or after `max_rounds` drafts.
///
/// # Examples
///
/// ```
/// use coditect_agents::patterns::EvaluatorOptimizer;
/// let loop_ = EvaluatorOptimizer::new("write", "review").max_rounds(3);
/// # let _ = loop_;
/// ```
#[derive(Debug, Clone)]
pub struct EvaluatorOptimizer {
    generator: String,
    critic: String,
    max_rounds: u32,
}

/// What the loop ends with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Reviewed {
    /// The last draft.
    pub draft: Value,
    /// Whether it passed review (false: the rounds ran out).
    pub passed: bool,
    /// Drafts made.
    pub rounds: u32,
    /// Every verdict, in order.
    pub verdicts: Vec<Verdict>,
}

impl EvaluatorOptimizer {
    /// Drafts by `generator`, reviewed by `critic` (capabilities), at most 3 rounds.
    pub fn new(generator: impl Into<String>, critic: impl Into<String>) -> Self {
        Self {
            generator: generator.into(),
            critic: critic.into(),
            max_rounds: 3,
        }
    }

    /// The most drafts (default 3).
    #[must_use]
    pub fn max_rounds(mut self, n: u32) -> Self {
        self.max_rounds = n.max(1);
        self
    }
}

impl Agent for EvaluatorOptimizer {
    type Input = Value;
    type Output = Reviewed;

    async fn handle(&mut self, task: Value, ctx: &AgentContext) -> Result<Reviewed, AgentError> {
        let mut verdicts: Vec<Verdict> = Vec::new();
        let mut draft = Value::Null;
        for round in 1..=self.max_rounds {
            let ask = match verdicts.last() {
                None => task.clone(),
                Some(v) => Value::String(format!(
                    "Task:\n{}\n\nYour previous draft:\n{}\n\nA reviewer scored it {}/10 and asked for changes:\n{}\n\nWrite an improved draft. Answer with the draft only.",
                    render_input(&task),
                    render_input(&draft),
                    v.score,
                    v.feedback
                )),
            };
            draft = ctx
                .delegate::<Value>(&self.generator, ask)
                .await
                .map_err(|e| {
                    policy_aware(e, format!("draft {round} by {} failed", self.generator))
                })?;
            let verdict: Verdict = ctx
                .delegate(
                    &self.critic,
                    serde_json::json!({"task": task, "draft": draft}),
                )
                .await
                .map_err(|e| {
                    policy_aware(e, format!("review {round} by {} failed", self.critic))
                })?;
            emit(
                ctx,
                AgentProgress::Decision {
                    summary: format!(
                        "draft {round}: {} ({}/10){}",
                        if verdict.passed {
                            "passed"
                        } else {
                            "sent back"
                        },
                        verdict.score,
                        if verdict.feedback.is_empty() {
                            String::new()
                        } else {
                            format!(": {}", verdict.feedback)
                        }
                    ),
                },
            )
            .await;
            let passed = verdict.passed;
            verdicts.push(verdict);
            if passed {
                return Ok(Reviewed {
                    draft,
                    passed: true,
                    rounds: round,
                    verdicts,
                });
            }
        }
        Ok(Reviewed {
            draft,
            passed: false,
            rounds: self.max_rounds,
            verdicts,
        })
    }
}
