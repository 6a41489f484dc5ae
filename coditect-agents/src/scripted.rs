//! `ScriptedModel`: a deterministic [`LanguageModel`] that answers from a script.
//!
//! For tests, and for running examples offline. It is an honest stand-in: it
//! generates nothing, it replays what it was told to say — in order (by turn),
//! or by matching the request (a rule), or by computing the reply from the
//! request (a responder). Code that shows its output to people should say that
//! a scripted model produced it.
//!
//! Rules are tried first, in the order added; then the next scripted turn.
//! A request that nothing answers gets a [`ModelError`] (never a panic), so a
//! test with a too-short script fails clearly.
//!
//! Usage is deterministic: about one token per four characters in and out,
//! unless a reply sets its own.
//!
//! # Examples
//!
//! ```
//! use coditect_agents::model::{CompletionRequest, LanguageModel, Message};
//! use coditect_agents::{ScriptedModel, ScriptedReply};
//!
//! let model = ScriptedModel::new()
//!     .then(ScriptedReply::tool_call("search", serde_json::json!({"q": "rust"})))
//!     .then(ScriptedReply::text("Rust is a language."))
//!     .when(|req| req.last_user_text().contains("weather"), ScriptedReply::text("Sunny."));
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let ask = |q: &str| CompletionRequest::new(vec![Message::user(q)], 100);
//! assert_eq!(model.complete(ask("weather?")).await?.text(), "Sunny.");
//! assert_eq!(model.complete(ask("what is rust?")).await?.tool_calls().count(), 1);
//! assert_eq!(model.complete(ask("go on")).await?.text(), "Rust is a language.");
//! assert!(model.complete(ask("more?")).await.is_err()); // the script is spent
//! assert_eq!(model.requests().len(), 4);
//! # Ok::<_, coditect_agents::ModelError>(()) }).unwrap();
//! ```

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::Value;

use crate::model::{
    CompletionRequest, CompletionResponse, ContentBlock, LanguageModel, ModelError, ModelErrorKind,
    ModelStream, StopReason, Usage,
};

/// The model name scripted responses carry.
pub const SCRIPTED_MODEL_NAME: &str = "scripted";

/// One scripted answer: a response (text, tool calls) or an error.
#[derive(Debug, Clone, PartialEq)]
pub struct ScriptedReply {
    outcome: Result<Reply, ModelError>,
}

#[derive(Debug, Clone, PartialEq)]
struct Reply {
    content: Vec<ContentBlock>,
    stop_reason: Option<StopReason>,
    usage: Option<Usage>,
}

impl ScriptedReply {
    /// A text answer that ends the turn.
    pub fn text(text: impl Into<String>) -> Self {
        Self::blocks(vec![ContentBlock::text(text)])
    }

    /// One tool call (its id is made up by the model).
    pub fn tool_call(name: impl Into<String>, input: Value) -> Self {
        Self::tool_calls([(name, input)])
    }

    /// Several tool calls in one turn.
    pub fn tool_calls<N: Into<String>>(calls: impl IntoIterator<Item = (N, Value)>) -> Self {
        Self::blocks(
            calls
                .into_iter()
                .map(|(name, input)| ContentBlock::ToolUse {
                    id: String::new(),
                    name: name.into(),
                    input,
                })
                .collect(),
        )
    }

    /// Any content. Tool-use blocks with an empty id get a fresh one; the stop
    /// reason is `tool_use` if there is a tool call, else `end_turn`.
    pub fn blocks(content: Vec<ContentBlock>) -> Self {
        Self {
            outcome: Ok(Reply {
                content,
                stop_reason: None,
                usage: None,
            }),
        }
    }

    /// A failed call.
    pub fn error(error: ModelError) -> Self {
        Self {
            outcome: Err(error),
        }
    }

    /// Sets the stop reason.
    #[must_use]
    pub fn stop_reason(mut self, reason: StopReason) -> Self {
        if let Ok(r) = &mut self.outcome {
            r.stop_reason = Some(reason);
        }
        self
    }

    /// Sets the usage the reply reports.
    #[must_use]
    pub fn usage(mut self, usage: Usage) -> Self {
        if let Ok(r) = &mut self.outcome {
            r.usage = Some(usage);
        }
        self
    }
}

type Matcher = Box<dyn Fn(&CompletionRequest) -> bool + Send + Sync>;
type Responder = Box<dyn Fn(&CompletionRequest) -> ScriptedReply + Send + Sync>;

struct Rule {
    matches: Matcher,
    respond: Responder,
    uses_left: Option<usize>,
}

#[derive(Default)]
struct Script {
    rules: Vec<Rule>,
    turns: VecDeque<ScriptedReply>,
    requests: Vec<CompletionRequest>,
}

/// A deterministic model that answers from a script. Clones share the script.
#[derive(Clone, Default)]
pub struct ScriptedModel {
    script: Arc<Mutex<Script>>,
    ids: Arc<AtomicU64>,
}

impl fmt::Debug for ScriptedModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (rules, turns) = self
            .script
            .lock()
            .map(|s| (s.rules.len(), s.turns.len()))
            .unwrap_or_default();
        f.debug_struct("ScriptedModel")
            .field("rules", &rules)
            .field("turns_left", &turns)
            .finish()
    }
}

impl ScriptedModel {
    /// A model with an empty script.
    pub fn new() -> Self {
        Self::default()
    }

    fn edit(&self, f: impl FnOnce(&mut Script)) {
        // A poisoned lock means a panicking test; the script is still usable.
        let mut guard = match self.script.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        f(&mut guard);
    }

    /// Adds the next turn: answered once, in order, when no rule matches.
    #[must_use]
    pub fn then(self, reply: ScriptedReply) -> Self {
        self.push(reply);
        self
    }

    /// Adds the next turn to a shared model.
    pub fn push(&self, reply: ScriptedReply) {
        self.edit(|s| s.turns.push_back(reply));
    }

    /// Answers every request that `matches` with `reply`.
    #[must_use]
    pub fn when(
        self,
        matches: impl Fn(&CompletionRequest) -> bool + Send + Sync + 'static,
        reply: ScriptedReply,
    ) -> Self {
        self.rule(matches, move |_| reply.clone(), None)
    }

    /// Answers the first request that `matches` with `reply`, then no more.
    #[must_use]
    pub fn when_once(
        self,
        matches: impl Fn(&CompletionRequest) -> bool + Send + Sync + 'static,
        reply: ScriptedReply,
    ) -> Self {
        self.rule(matches, move |_| reply.clone(), Some(1))
    }

    /// Answers every request that `matches` with a reply computed from it
    /// (deterministically, from the request alone).
    #[must_use]
    pub fn respond(
        self,
        matches: impl Fn(&CompletionRequest) -> bool + Send + Sync + 'static,
        respond: impl Fn(&CompletionRequest) -> ScriptedReply + Send + Sync + 'static,
    ) -> Self {
        self.rule(matches, respond, None)
    }

    fn rule(
        self,
        matches: impl Fn(&CompletionRequest) -> bool + Send + Sync + 'static,
        respond: impl Fn(&CompletionRequest) -> ScriptedReply + Send + Sync + 'static,
        uses_left: Option<usize>,
    ) -> Self {
        self.edit(|s| {
            s.rules.push(Rule {
                matches: Box::new(matches),
                respond: Box::new(respond),
                uses_left,
            });
        });
        self
    }

    /// Every request received so far, oldest first.
    pub fn requests(&self) -> Vec<CompletionRequest> {
        self.script
            .lock()
            .map(|s| s.requests.clone())
            .unwrap_or_default()
    }

    /// Scripted turns not yet used.
    pub fn turns_left(&self) -> usize {
        self.script.lock().map(|s| s.turns.len()).unwrap_or(0)
    }

    fn answer(&self, request: &CompletionRequest) -> Result<CompletionResponse, ModelError> {
        let mut reply = None;
        self.edit(|s| {
            s.requests.push(request.clone());
            for rule in &mut s.rules {
                if rule.uses_left != Some(0) && (rule.matches)(request) {
                    if let Some(n) = &mut rule.uses_left {
                        *n -= 1;
                    }
                    reply = Some((rule.respond)(request));
                    return;
                }
            }
            reply = s.turns.pop_front();
        });
        let Some(reply) = reply else {
            return Err(ModelError::new(
                ModelErrorKind::InvalidRequest,
                "the scripted model has no reply for this request (script spent, no rule matched)",
                false,
            ));
        };
        let reply = reply.outcome?;
        let mut content = reply.content;
        for block in &mut content {
            if let ContentBlock::ToolUse { id, .. } = block
                && id.is_empty()
            {
                *id = format!("toolu_s{}", self.ids.fetch_add(1, Ordering::Relaxed) + 1);
            }
        }
        let has_tool_use = content
            .iter()
            .any(|b| matches!(b, ContentBlock::ToolUse { .. }));
        let stop_reason = reply.stop_reason.unwrap_or(if has_tool_use {
            StopReason::ToolUse
        } else {
            StopReason::EndTurn
        });
        let usage = reply.usage.unwrap_or_else(|| Usage {
            input_tokens: estimate_request(request),
            output_tokens: estimate_blocks(&content),
            ..Usage::default()
        });
        Ok(CompletionResponse {
            content,
            stop_reason,
            usage,
            model: SCRIPTED_MODEL_NAME.into(),
            id: None,
        })
    }
}

fn tokens(chars: usize) -> u64 {
    (chars as u64).div_ceil(4).max(1)
}

fn block_chars(b: &ContentBlock) -> usize {
    match b {
        ContentBlock::Text { text } => text.len(),
        ContentBlock::ToolUse { name, input, .. } => name.len() + input.to_string().len(),
        ContentBlock::ToolResult { content, .. } => content.len(),
        ContentBlock::Thinking { thinking, .. } => thinking.len(),
        ContentBlock::Image { .. } => 1000,
    }
}

fn estimate_request(r: &CompletionRequest) -> u64 {
    let chars = r.system.as_ref().map_or(0, String::len)
        + r.messages
            .iter()
            .flat_map(|m| &m.content)
            .map(block_chars)
            .sum::<usize>();
    tokens(chars)
}

fn estimate_blocks(content: &[ContentBlock]) -> u64 {
    tokens(content.iter().map(block_chars).sum())
}

impl LanguageModel for ScriptedModel {
    async fn complete(&self, request: CompletionRequest) -> Result<CompletionResponse, ModelError> {
        self.answer(&request)
    }

    fn provider(&self) -> &str {
        "coditect.scripted"
    }

    fn model_name(&self) -> &str {
        SCRIPTED_MODEL_NAME
    }

    /// Streams the scripted answer word by word, as a real model would.
    async fn stream(&self, request: CompletionRequest) -> Result<ModelStream, ModelError> {
        let response = self.answer(&request)?;
        Ok(crate::model::replay_chunked(response, &|text| {
            words(text).map(str::to_owned).collect()
        }))
    }
}

/// Splits text into words, each keeping the whitespace after it, so the pieces
/// concatenate back to the text.
fn words(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let word_end = rest
            .char_indices()
            .find(|(_, c)| c.is_whitespace())
            .map_or(rest.len(), |(i, _)| i);
        let end = rest[word_end..]
            .char_indices()
            .find(|(_, c)| !c.is_whitespace())
            .map_or(rest.len(), |(i, _)| word_end + i);
        let (piece, tail) = rest.split_at(end);
        rest = tail;
        Some(piece)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Message, StreamDelta};
    use futures::StreamExt;

    fn ask(q: &str) -> CompletionRequest {
        CompletionRequest::new(vec![Message::user(q)], 10)
    }

    #[tokio::test]
    async fn rules_come_before_turns_and_once_rules_are_spent() {
        let m = ScriptedModel::new()
            .then(ScriptedReply::text("turn 1"))
            .when_once(|r| r.last_user_text() == "x", ScriptedReply::text("rule"));
        assert_eq!(m.complete(ask("x")).await.unwrap().text(), "rule");
        assert_eq!(m.complete(ask("x")).await.unwrap().text(), "turn 1");
        let e = m.complete(ask("x")).await.unwrap_err();
        assert_eq!(e.kind(), ModelErrorKind::InvalidRequest);
    }

    #[tokio::test]
    async fn tool_calls_get_unique_ids_and_the_tool_use_stop_reason() {
        let m = ScriptedModel::new()
            .then(ScriptedReply::tool_calls([
                ("a", serde_json::json!({})),
                ("b", serde_json::json!({})),
            ]))
            .then(ScriptedReply::error(ModelError::new(
                ModelErrorKind::RateLimited,
                "slow down",
                true,
            )));
        let r = m.complete(ask("q")).await.unwrap();
        assert_eq!(r.stop_reason, StopReason::ToolUse);
        let ids: Vec<&str> = r.tool_calls().map(|(id, _, _)| id).collect();
        assert_eq!(ids.len(), 2);
        assert_ne!(ids[0], ids[1]);
        assert!(r.usage.input_tokens > 0 && r.usage.output_tokens > 0);
        assert!(m.complete(ask("q")).await.unwrap_err().is_retryable());
    }

    #[tokio::test]
    async fn the_stream_concatenates_to_the_response() {
        let m = ScriptedModel::new().then(ScriptedReply::text("one  two three\n"));
        let deltas: Vec<StreamDelta> = m
            .stream(ask("q"))
            .await
            .unwrap()
            .map(Result::unwrap)
            .collect()
            .await;
        let text: String = deltas
            .iter()
            .filter_map(|d| match d {
                StreamDelta::Text { text, .. } => Some(text.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(text, "one  two three\n");
        let pieces = deltas
            .iter()
            .filter(|d| matches!(d, StreamDelta::Text { .. }))
            .count();
        assert_eq!(pieces, 3);
        assert!(matches!(deltas.last(), Some(StreamDelta::Done(r)) if r.text() == text));
    }
}
