//! Routing: a model classifies the input and one specialist handles it.

use std::sync::Arc;

use coditect_orchestrator::{Agent, AgentContext, AgentError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::agent::{Pricing, emit, model_error, render_input, report_usage};
use crate::model::{CompletionRequest, DynLanguageModel, LanguageModel, Message};
use crate::patterns::policy_aware;
use crate::progress::AgentProgress;
use crate::structured::{Structured, StructuredAsk, StructuredError, ask_structured};

/// The model's choice of route.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RouteChoice {
    /// The capability that should handle the input (one of those listed).
    pub route: String,
    /// Why, in one sentence.
    pub reason: String,
}

/// A router agent: asks a model which of its routes fits the input, then
/// delegates the input, unchanged, to that capability and answers its result.
///
/// Only the routes given here can be chosen; a choice outside them goes back
/// to the model for repair.
///
/// # Examples
///
/// ```
/// use coditect_agents::patterns::Route;
/// use coditect_agents::{ScriptedModel, ScriptedReply};
///
/// let model = ScriptedModel::new().then(ScriptedReply::tool_call(
///     "choose_route",
///     serde_json::json!({"route": "billing", "reason": "it is about an invoice"}),
/// ));
/// let router = Route::new(model)
///     .route("billing", "Questions about invoices and payments.")
///     .route("tech", "Technical problems.");
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let choice = router.choose(&serde_json::json!("Why was I charged twice?")).await.unwrap();
/// assert_eq!(choice.value.route, "billing");
/// # });
/// ```
#[derive(Clone)]
pub struct Route {
    model: Arc<dyn DynLanguageModel>,
    routes: Vec<(String, String)>,
    instructions: Option<String>,
    pricing: Option<Pricing>,
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Route")
            .field("routes", &self.routes)
            .finish_non_exhaustive()
    }
}

impl Route {
    /// A router choosing with `model`, with no routes yet.
    pub fn new(model: impl LanguageModel + 'static) -> Self {
        Self {
            model: Arc::new(model),
            routes: Vec::new(),
            instructions: None,
            pricing: None,
        }
    }

    /// Adds a route: a capability and when to use it.
    #[must_use]
    pub fn route(mut self, capability: impl Into<String>, when: impl Into<String>) -> Self {
        self.routes.push((capability.into(), when.into()));
        self
    }

    /// Extra instructions for the choice.
    #[must_use]
    pub fn instructions(mut self, text: impl Into<String>) -> Self {
        self.instructions = Some(text.into());
        self
    }

    /// Prices the model's usage, so cost budgets apply.
    #[must_use]
    pub fn pricing(mut self, pricing: Pricing) -> Self {
        self.pricing = Some(pricing);
        self
    }

    /// Asks the model to choose a route for `input`.
    ///
    /// # Errors
    ///
    /// [`StructuredError`] if the model fails or keeps choosing outside the routes.
    pub async fn choose(&self, input: &Value) -> Result<Structured<RouteChoice>, StructuredError> {
        let mut system = String::from(
            "You route requests to the one specialist best suited to handle them. Choose by calling choose_route. Routes:",
        );
        for (cap, when) in &self.routes {
            system.push_str(&format!("\n- {cap}: {when}"));
        }
        if let Some(extra) = &self.instructions {
            system.push_str("\n\n");
            system.push_str(extra);
        }
        let mut request = CompletionRequest::new(vec![Message::user(render_input(input))], 512);
        request.system = Some(system);
        let ask = StructuredAsk::new("choose_route", "Chooses the route for the request.");
        ask_structured(&*self.model, request, &ask, |c: &RouteChoice| {
            if self.routes.iter().any(|(r, _)| *r == c.route) {
                Ok(())
            } else {
                Err(format!(
                    "{:?} is not a route; choose one of: {}",
                    c.route,
                    self.routes
                        .iter()
                        .map(|(r, _)| r.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            }
        })
        .await
    }
}

impl Agent for Route {
    type Input = Value;
    type Output = Value;

    async fn handle(&mut self, input: Value, ctx: &AgentContext) -> Result<Value, AgentError> {
        let choice = match self.choose(&input).await {
            Ok(c) => c,
            Err(e) => {
                let u = e.usage();
                report_usage(ctx, "", &u, 0.0).await;
                return Err(match e {
                    StructuredError::Model { error, .. } => model_error(error),
                    other => AgentError::permanent(format!("the router could not choose: {other}")),
                });
            }
        };
        let cost = self
            .pricing
            .as_ref()
            .map_or(0.0, |p| p(&choice.model, &choice.usage));
        report_usage(ctx, &choice.model, &choice.usage, cost).await;
        let RouteChoice { route, reason } = choice.value;
        emit(
            ctx,
            AgentProgress::Decision {
                summary: format!("routed to {route}: {reason}"),
            },
        )
        .await;
        ctx.delegate::<Value>(&route, input)
            .await
            .map_err(|e| policy_aware(e, format!("route {route} failed")))
    }
}
