//! An MCP server's tools as coditect tools, granted per agent.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::client::{McpClient, McpToolInfo};
use super::error::{McpError, McpErrorKind};
use crate::model::{BoxFuture, ToolDefinition};
use crate::progress::AgentProgress;
use crate::tool::{DynTool, ToolContext, ToolError, ToolErrorKind};

/// Which of a server's tools an agent is granted: none until you say.
///
/// The granted tools are the only ones the agent's model is offered; a call
/// the model makes to any other is refused by the agent's toolbox and never
/// reaches the server (OWASP LLM06, excessive agency).
///
/// # Examples
///
/// ```no_run
/// use coditect_agents::{LlmAgent, ScriptedModel};
/// use coditect_agents::mcp::McpServer;
///
/// # async fn demo() -> Result<(), coditect_agents::mcp::McpError> {
/// let files = McpServer::stdio("files", "mcp-server-filesystem").arg("/srv/docs").connect().await?;
/// let reader = LlmAgent::builder(ScriptedModel::new())
///     .tools(files.toolset().allow(["read_text_file", "list_directory"]).build()?)
///     .build();
/// # let _ = reader; Ok(()) }
/// ```
#[derive(Debug, Clone)]
#[must_use = "a toolset does nothing until .build()"]
pub struct McpToolset {
    client: McpClient,
    granted: Grant,
    prefix: Option<String>,
}

#[derive(Debug, Clone)]
enum Grant {
    Only(BTreeSet<String>),
    All,
}

impl McpToolset {
    pub(crate) fn new(client: McpClient) -> Self {
        Self {
            client,
            granted: Grant::Only(BTreeSet::new()),
            prefix: None,
        }
    }

    /// Grants these tools (by their names on the server).
    pub fn allow<S: Into<String>>(mut self, names: impl IntoIterator<Item = S>) -> Self {
        match &mut self.granted {
            Grant::Only(set) => set.extend(names.into_iter().map(Into::into)),
            Grant::All => {}
        }
        self
    }

    /// Grants every tool the server listed.
    pub fn allow_all(mut self) -> Self {
        self.granted = Grant::All;
        self
    }

    /// Names the tools `<prefix><name>` for the model, so tools of several
    /// servers cannot clash (`files_` gives `files_read_file`).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = Some(prefix.into());
        self
    }

    /// The granted tools, ready for [`LlmAgentBuilder::tools`](crate::LlmAgentBuilder::tools).
    ///
    /// # Errors
    ///
    /// [`McpErrorKind::NotAllowed`] if a granted name is not a tool of the
    /// server (a typo would otherwise silently grant nothing).
    pub fn build(self) -> Result<Vec<Arc<dyn DynTool>>, McpError> {
        let infos: Vec<&McpToolInfo> = match &self.granted {
            Grant::All => self.client.tools().iter().collect(),
            Grant::Only(names) => {
                let mut infos = Vec::with_capacity(names.len());
                for n in names {
                    match self.client.tool(n) {
                        Some(t) => infos.push(t),
                        None => {
                            let known: Vec<&str> = self
                                .client
                                .tools()
                                .iter()
                                .map(|t| t.name.as_str())
                                .collect();
                            return Err(McpError::new(
                                McpErrorKind::NotAllowed,
                                self.client.name(),
                                format!(
                                    "the server has no tool {n:?} to grant; its tools are: {}",
                                    known.join(", ")
                                ),
                            ));
                        }
                    }
                }
                infos
            }
        };
        let prefix = self.prefix.unwrap_or_default();
        Ok(infos
            .into_iter()
            .map(|info| {
                Arc::new(McpTool {
                    client: self.client.clone(),
                    definition: ToolDefinition {
                        name: format!("{prefix}{}", info.name),
                        description: info.description.clone(),
                        input_schema: info.input_schema.clone(),
                    },
                    remote_name: info.name.clone(),
                }) as Arc<dyn DynTool>
            })
            .collect())
    }
}

/// One granted tool of an MCP server, as a coditect tool.
struct McpTool {
    client: McpClient,
    definition: ToolDefinition,
    remote_name: String,
}

impl DynTool for McpTool {
    fn definition(&self) -> ToolDefinition {
        self.definition.clone()
    }

    fn call_json<'a>(
        &'a self,
        input: Value,
        ctx: ToolContext<'a>,
    ) -> BoxFuture<'a, Result<String, ToolError>> {
        Box::pin(async move {
            let agent = ctx.agent();
            let call_id = ctx.call_id();
            let outcome = self
                .client
                .call_with_progress(&self.remote_name, input, |p| async move {
                    if let Some(a) = agent {
                        let progress = AgentProgress::ToolProgress {
                            id: call_id.to_owned(),
                            name: self.definition.name.clone(),
                            progress: p.progress,
                            total: p.total,
                            message: p.message,
                        };
                        if let Err(e) = a.emit(progress).await {
                            tracing::debug!(error = %e, "tool progress not delivered");
                        }
                    }
                })
                .await
                .map_err(tool_error)?;
            if outcome.is_error {
                Err(ToolError::failed(outcome.text()))
            } else {
                Ok(outcome.text())
            }
        })
    }

    fn timeout(&self) -> Option<Duration> {
        // The client's own timeout fires first, with a clearer message and a
        // cancellation sent to the server.
        Some(self.client.call_timeout() + Duration::from_secs(1))
    }
}

fn tool_error(e: McpError) -> ToolError {
    let kind = match e.kind() {
        McpErrorKind::Timeout => ToolErrorKind::Timeout,
        McpErrorKind::NotAllowed => ToolErrorKind::NotAllowed,
        _ => ToolErrorKind::Failed,
    };
    ToolError::new(kind, e.to_string())
}
