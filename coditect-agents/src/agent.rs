//! `LlmAgent`: an [`Agent`] made of a model, a system prompt, tools and a card.
//!
//! It runs the loop model → tool calls → tool results → model until the model
//! ends its turn, bounded by a maximum number of model turns. While it works it
//! streams the model's deltas as progress events through its
//! [`AgentContext`], reports every call's token usage (and cost, given a
//! [`Pricing`]) so the run's budgets apply, and stops on its own when the
//! budget it was handed is spent or its caller gives up.
//!
//! # Examples
//!
//! ```
//! use coditect_agents::{LlmAgent, ScriptedModel, ScriptedReply};
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let model = ScriptedModel::new().then(ScriptedReply::text("Bonjour"));
//! let agent = LlmAgent::builder(model).system("Translate to French.").build();
//! let answer = agent.run(serde_json::json!("Hello"), None).await?;
//! assert_eq!(answer.text, "Bonjour");
//! assert_eq!(answer.iterations, 1);
//! # Ok::<_, coditect_orchestrator::AgentError>(()) }).unwrap();
//! ```

use std::fmt;
use std::sync::Arc;

use coditect_orchestrator::{Agent, AgentContext, AgentError, AgentErrorKind};
use futures::StreamExt;
use serde_json::Value;
use tracing::Instrument;

use crate::delegate::DelegateTool;
use crate::model::{
    CompletionRequest, CompletionResponse, DynLanguageModel, LanguageModel, Message, ModelError,
    ModelErrorKind, Role, StopReason, StreamDelta, Usage,
};
use crate::progress::{AgentProgress, clip};
use crate::tool::DynTool;
use crate::toolbox::{ToolCall, Toolbox};

/// Turns a model's usage into US dollars: `(model name, usage) -> cost`.
pub type Pricing = Arc<dyn Fn(&str, &Usage) -> f64 + Send + Sync>;

/// An agent that thinks with a language model and acts with tools.
///
/// Cheap to clone (the configuration is shared), so a runtime factory can
/// hand out one per id: `runtime.register("writer", move |_| agent.clone())`.
#[derive(Clone)]
pub struct LlmAgent {
    inner: Arc<Config>,
}

struct Config {
    model: Arc<dyn DynLanguageModel>,
    system: Option<String>,
    toolbox: Toolbox,
    max_iterations: u32,
    max_tokens: u32,
    temperature: Option<f32>,
    streaming: bool,
    pricing: Option<Pricing>,
}

impl fmt::Debug for LlmAgent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LlmAgent")
            .field("system", &self.inner.system)
            .field("toolbox", &self.inner.toolbox)
            .field("max_iterations", &self.inner.max_iterations)
            .finish_non_exhaustive()
    }
}

/// Builds an [`LlmAgent`].
#[must_use = "a builder does nothing until .build()"]
pub struct LlmAgentBuilder {
    config: Config,
    delegate: Option<DelegateTool>,
}

impl LlmAgentBuilder {
    /// The system prompt.
    pub fn system(mut self, system: impl Into<String>) -> Self {
        self.config.system = Some(system.into());
        self
    }

    /// Gives the agent a tool (its allow-list is exactly the tools it is given).
    pub fn tool(mut self, tool: impl DynTool) -> Self {
        self.config.toolbox.add(Arc::new(tool));
        self
    }

    /// Gives the agent a shared tool.
    pub fn shared_tool(mut self, tool: Arc<dyn DynTool>) -> Self {
        self.config.toolbox.add(tool);
        self
    }

    /// Gives the agent a set of shared tools (an MCP server's granted tools,
    /// say); each is added as by [`shared_tool`](Self::shared_tool).
    pub fn tools(mut self, tools: impl IntoIterator<Item = Arc<dyn DynTool>>) -> Self {
        for tool in tools {
            self.config.toolbox.add(tool);
        }
        self
    }

    /// Replaces the toolbox (its tools and limits).
    pub fn toolbox(mut self, toolbox: Toolbox) -> Self {
        self.config.toolbox = toolbox;
        self
    }

    /// Lets the model hand subtasks to agents offering `capability` through the
    /// `delegate` tool. Only capabilities allowed here can be reached.
    pub fn delegate_to(
        mut self,
        capability: impl Into<String>,
        description: impl Into<String>,
    ) -> Self {
        let tool = self.delegate.take().unwrap_or_default();
        self.delegate = Some(tool.allow(capability, description));
        self
    }

    /// The most model turns per message (default 8): past it the agent fails
    /// with a policy error instead of looping.
    pub fn max_iterations(mut self, n: u32) -> Self {
        self.config.max_iterations = n.max(1);
        self
    }

    /// The most tokens one model turn may generate (default 2048).
    pub fn max_tokens(mut self, n: u32) -> Self {
        self.config.max_tokens = n;
        self
    }

    /// The sampling temperature.
    pub fn temperature(mut self, t: f32) -> Self {
        self.config.temperature = Some(t);
        self
    }

    /// Whether to stream the model's answers (default true): streamed text
    /// reaches the run's events as it is generated.
    pub fn streaming(mut self, on: bool) -> Self {
        self.config.streaming = on;
        self
    }

    /// How to price usage, so cost budgets apply.
    pub fn pricing(mut self, pricing: Pricing) -> Self {
        self.config.pricing = Some(pricing);
        self
    }

    /// The agent.
    pub fn build(mut self) -> LlmAgent {
        if let Some(d) = self.delegate {
            self.config.toolbox.add(Arc::new(d));
        }
        LlmAgent {
            inner: Arc::new(self.config),
        }
    }
}

/// What an [`LlmAgent`] answered, with what it cost.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// The final text.
    pub text: String,
    /// Model turns taken.
    pub iterations: u32,
    /// Tokens used over all turns.
    pub usage: Usage,
    /// Cost over all turns, if priced.
    pub cost_usd: f64,
    /// The whole conversation, the final answer included.
    pub messages: Vec<Message>,
}

impl LlmAgent {
    /// Starts building an agent that thinks with `model`.
    pub fn builder(model: impl LanguageModel + 'static) -> LlmAgentBuilder {
        Self::builder_shared(Arc::new(model))
    }

    /// Starts building an agent around a shared model.
    pub fn builder_shared(model: Arc<dyn DynLanguageModel>) -> LlmAgentBuilder {
        LlmAgentBuilder {
            config: Config {
                model,
                system: None,
                toolbox: Toolbox::new(),
                max_iterations: 8,
                max_tokens: 2048,
                temperature: None,
                streaming: true,
                pricing: None,
            },
            delegate: None,
        }
    }

    /// The agent's tools.
    pub fn toolbox(&self) -> &Toolbox {
        &self.inner.toolbox
    }

    /// Runs the loop on one input. With `ctx` (inside a runtime) it reports
    /// progress and usage, may delegate, and watches cancellation and budget.
    ///
    /// # Errors
    ///
    /// An [`AgentError`]: transient if the model failed in a way worth retrying;
    /// [`AgentErrorKind::Policy`] past the iteration limit or the budget;
    /// cancelled if the caller gave up; permanent otherwise (a refusal, a
    /// context overflow, a failure not worth retrying).
    pub async fn run(
        &self,
        input: Value,
        ctx: Option<&AgentContext>,
    ) -> Result<Answer, AgentError> {
        let cfg = &*self.inner;
        let mut messages = vec![Message::user(render_input(&input))];
        let mut usage = Usage::default();
        let mut cost = 0.0;
        let (tokens_left, cost_left) = match ctx {
            Some(c) => (c.budget().tokens_left, c.budget().cost_left),
            None => (None, None),
        };
        for iteration in 1..=cfg.max_iterations {
            if let Some(left) = tokens_left {
                let used = usage.input_tokens.saturating_add(usage.output_tokens);
                if used >= left {
                    return Err(AgentError::with_kind(
                        AgentErrorKind::Policy,
                        format!(
                            "the run's token budget is spent: this agent used {used} of the {left} left"
                        ),
                    ));
                }
            }
            if let Some(left) = cost_left
                && cost >= left
            {
                return Err(AgentError::with_kind(
                    AgentErrorKind::Policy,
                    format!(
                        "the run's cost budget is spent: this agent spent ${cost:.4} of the ${left:.4} left"
                    ),
                ));
            }
            let request = CompletionRequest {
                system: cfg.system.clone(),
                messages: messages.clone(),
                tools: cfg.toolbox.definitions(),
                tool_choice: Default::default(),
                max_tokens: cfg.max_tokens,
                temperature: cfg.temperature,
                stop_sequences: Vec::new(),
            };
            let chat = crate::telemetry::chat(
                cfg.model.provider_dyn(),
                cfg.model.model_name_dyn(),
                &request,
                ctx,
                iteration,
            );
            // In a durable run each turn is an effect: a step executed again
            // (after a crash, a retry) gets its turns back from the journal
            // instead of paying for them again.
            let fresh = std::sync::atomic::AtomicBool::new(false);
            let response = match ctx {
                Some(c) if c.call_context().journal.is_some() => {
                    c.effect("model-turn", |_key| {
                        fresh.store(true, std::sync::atomic::Ordering::Relaxed);
                        self.call_model(request, ctx, &chat)
                            .instrument(chat.span.clone())
                    })
                    .await?
                }
                _ => {
                    fresh.store(true, std::sync::atomic::Ordering::Relaxed);
                    self.call_model(request, ctx, &chat)
                        .instrument(chat.span.clone())
                        .await?
                }
            };
            let fresh = fresh.into_inner();
            // A turn from the journal was watched when it was made.
            if fresh {
                chat.answered(&response);
            }
            usage.add(&response.usage);
            let turn_cost = cfg
                .pricing
                .as_ref()
                .map_or(0.0, |p| p(&response.model, &response.usage));
            cost += turn_cost;
            if let Some(c) = ctx {
                let u = &response.usage;
                // A turn taken from the journal was paid for, and counted,
                // when it was made.
                if fresh {
                    report_usage(c, &response.model, u, turn_cost).await;
                }
                emit(
                    c,
                    AgentProgress::Turn {
                        iteration,
                        input_tokens: u.input_tokens,
                        output_tokens: u.output_tokens,
                    },
                )
                .await;
            }
            let calls: Vec<ToolCall> = response
                .tool_calls()
                .map(|(id, name, input)| ToolCall::new(id, name, input.clone()))
                .collect();
            messages.push(response.to_message());
            if !calls.is_empty() {
                if let Some(c) = ctx {
                    for call in &calls {
                        emit(
                            c,
                            AgentProgress::ToolCall {
                                id: call.id.clone(),
                                name: call.name.clone(),
                                input: call.input.clone(),
                            },
                        )
                        .await;
                    }
                }
                let outcomes = match ctx {
                    // Tools (a delegation, say) stop when the caller gives up.
                    Some(c) => tokio::select! {
                        o = cfg.toolbox.run(calls, ctx) => o,
                        () = c.cancelled() => return Err(cancelled("the caller gave up; the tool calls were abandoned")),
                    },
                    None => cfg.toolbox.run(calls, None).await,
                };
                if let Some(c) = ctx {
                    for o in &outcomes {
                        let (ok, text) = match &o.result {
                            Ok(t) => (true, t.as_str()),
                            Err(e) => (false, e.message()),
                        };
                        emit(
                            c,
                            AgentProgress::ToolResult {
                                id: o.id.clone(),
                                name: o.name.clone(),
                                ok,
                                summary: clip(text, 200),
                            },
                        )
                        .await;
                    }
                }
                messages.push(Message {
                    role: Role::User,
                    content: outcomes.iter().map(|o| o.to_block()).collect(),
                });
                continue;
            }
            match response.stop_reason {
                StopReason::PauseTurn => continue,
                StopReason::Refusal => {
                    return Err(AgentError::permanent("the model refused to answer"));
                }
                StopReason::ContextWindowExceeded => {
                    return Err(AgentError::permanent(
                        "the conversation no longer fits the model's context window",
                    ));
                }
                StopReason::ToolUse => {
                    return Err(AgentError::permanent(
                        "the model stopped for tool use but asked for no tool",
                    ));
                }
                StopReason::EndTurn
                | StopReason::MaxTokens
                | StopReason::StopSequence
                | StopReason::Other(_) => {
                    if response.stop_reason == StopReason::MaxTokens {
                        tracing::warn!("the model reached max_tokens; the answer may be cut short");
                    }
                    return Ok(Answer {
                        text: response.text(),
                        iterations: iteration,
                        usage,
                        cost_usd: cost,
                        messages,
                    });
                }
            }
        }
        Err(AgentError::with_kind(
            AgentErrorKind::Policy,
            format!(
                "no final answer after {} model turns (max_iterations): the model kept calling tools",
                cfg.max_iterations
            ),
        ))
    }

    /// One model call: streamed (deltas emitted as progress) or not, and
    /// abandoned if the caller gives up.
    async fn call_model(
        &self,
        request: CompletionRequest,
        ctx: Option<&AgentContext>,
        chat: &crate::telemetry::Chat,
    ) -> Result<CompletionResponse, AgentError> {
        let call = async {
            if !self.inner.streaming {
                return self.inner.model.complete(request).await;
            }
            let mut stream = self.inner.model.stream(request).await?;
            while let Some(delta) = stream.next().await {
                match delta? {
                    StreamDelta::Done(response) => return Ok(response),
                    StreamDelta::Text { text, .. } => {
                        if let Some(c) = ctx {
                            emit(c, AgentProgress::Text { text }).await;
                        }
                    }
                    StreamDelta::Thinking { thinking, .. } => {
                        if let Some(c) = ctx {
                            emit(c, AgentProgress::Thinking { text: thinking }).await;
                        }
                    }
                    _ => {}
                }
            }
            Err(ModelError::new(
                ModelErrorKind::InvalidResponse,
                "the model's stream ended before the answer was complete",
                true,
            ))
        };
        let result = match ctx {
            Some(c) => tokio::select! {
                r = call => r,
                () = c.cancelled() => return Err(cancelled("the caller gave up; the model call was abandoned")),
            },
            None => call.await,
        };
        result.map_err(|e| {
            chat.failed(&e);
            model_error(e)
        })
    }
}

fn cancelled(message: &str) -> AgentError {
    AgentError::with_kind(AgentErrorKind::Cancelled, message)
}

/// A model error as an agent error: transient when worth retrying.
pub(crate) fn model_error(e: ModelError) -> AgentError {
    let message = e.to_string();
    if e.is_retryable() {
        AgentError::transient(message).with_source(e)
    } else {
        AgentError::permanent(message).with_source(e)
    }
}

/// Reports a model call's usage to the run, so its budgets apply.
pub(crate) async fn report_usage(ctx: &AgentContext, model: &str, u: &Usage, cost_usd: f64) {
    let reported = coditect_orchestrator::Usage::new(
        u.input_tokens
            .saturating_add(u.cache_creation_input_tokens)
            .saturating_add(u.cache_read_input_tokens),
        u.output_tokens,
        cost_usd,
    )
    .with_cache(u.cache_read_input_tokens, u.cache_creation_input_tokens);
    let model = (!model.is_empty()).then_some(model);
    if let Err(e) = ctx.report_model_usage(model, reported).await {
        tracing::warn!(error = %e, "could not report usage to the run");
    }
}

pub(crate) async fn emit(ctx: &AgentContext, progress: AgentProgress) {
    if let Err(e) = ctx.emit(progress).await {
        tracing::debug!(error = %e, "progress not delivered");
    }
}

/// The text a model reads for an input: a string as is, anything else as JSON.
pub(crate) fn render_input(input: &Value) -> String {
    match input {
        Value::String(s) => s.clone(),
        Value::Null => "(no input)".to_owned(),
        other => serde_json::to_string_pretty(other).unwrap_or_else(|_| other.to_string()),
    }
}

impl Agent for LlmAgent {
    type Input = Value;
    type Output = String;

    async fn handle(&mut self, input: Value, ctx: &AgentContext) -> Result<String, AgentError> {
        Ok(self.run(input, Some(ctx)).await?.text)
    }
}
