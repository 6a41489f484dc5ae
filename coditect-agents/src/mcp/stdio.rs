//! An MCP server as a child process: newline-delimited JSON-RPC on its stdin
//! and stdout, its stderr kept (the last lines) for error reports.
//!
//! rmcp's own child-process transport skips lines that are not JSON, so a
//! server that prints garbage would leave a call waiting until its timeout.
//! This transport treats the first line that is not MCP's JSON-RPC as the end
//! of the session: it records why (naming the server, quoting the line) and
//! closes, so every waiting call fails at once with
//! [`McpErrorKind::OffProtocol`]. When the process exits, the same happens
//! with [`McpErrorKind::ServerDied`], its exit status and its last stderr lines.

use std::collections::VecDeque;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rmcp::RoleClient;
use rmcp::model::{ClientJsonRpcMessage, ServerJsonRpcMessage};
use rmcp::transport::Transport;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use super::error::{McpError, McpErrorKind};
use super::session::Fault;

/// The longest line (one JSON-RPC message) accepted from a server: 64 MiB.
const MAX_LINE: u64 = 64 * 1024 * 1024;
/// How many of the server's last stderr lines an error report quotes.
const STDERR_LINES: usize = 8;

/// What to start.
#[derive(Debug, Clone)]
pub(crate) struct StdioCommand {
    pub(crate) program: String,
    pub(crate) args: Vec<String>,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) cwd: Option<std::path::PathBuf>,
}

pub(crate) struct StdioTransport {
    server: Arc<str>,
    child: Option<Child>,
    stdin: Arc<tokio::sync::Mutex<Option<ChildStdin>>>,
    stdout: BufReader<ChildStdout>,
    line: Vec<u8>,
    stderr: Arc<Mutex<VecDeque<String>>>,
    fault: Arc<Fault>,
}

impl StdioTransport {
    /// Starts the server's process.
    pub(crate) fn spawn(
        server: Arc<str>,
        command: &StdioCommand,
        fault: Arc<Fault>,
    ) -> Result<Self, McpError> {
        let mut cmd = Command::new(&command.program);
        cmd.args(&command.args)
            .envs(command.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(dir) = &command.cwd {
            cmd.current_dir(dir);
        }
        let mut child = cmd.spawn().map_err(|e| {
            McpError::new(
                McpErrorKind::Spawn,
                &*server,
                format!("could not start {:?}: {e}", command.program),
            )
            .with_source(e)
        })?;
        let missing = |what: &str| {
            McpError::new(
                McpErrorKind::Spawn,
                &*server,
                format!("the child process has no {what} pipe"),
            )
        };
        let stdin = child.stdin.take().ok_or_else(|| missing("stdin"))?;
        let stdout = child.stdout.take().ok_or_else(|| missing("stdout"))?;
        let stderr_tail = Arc::new(Mutex::new(VecDeque::with_capacity(STDERR_LINES)));
        if let Some(stderr) = child.stderr.take() {
            let tail = stderr_tail.clone();
            let name = server.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stderr).lines();
                // Ends with the process (EOF) or on a read error.
                while let Ok(Some(line)) = lines.next_line().await {
                    tracing::debug!(server = %name, "stderr: {line}");
                    if let Ok(mut t) = tail.lock() {
                        if t.len() == STDERR_LINES {
                            t.pop_front();
                        }
                        t.push_back(line);
                    }
                }
            });
        }
        Ok(Self {
            server,
            child: Some(child),
            stdin: Arc::new(tokio::sync::Mutex::new(Some(stdin))),
            stdout: BufReader::new(stdout),
            line: Vec::with_capacity(4096),
            stderr: stderr_tail,
            fault,
        })
    }

    fn stderr_tail(&self) -> String {
        self.stderr
            .lock()
            .map(|t| t.iter().cloned().collect::<Vec<_>>().join(" | "))
            .unwrap_or_default()
    }

    /// Records that the process is gone, with how it ended.
    async fn exited(&mut self) {
        let status = match self.child.as_mut() {
            // The process closed its stdout; give it a moment to be reaped.
            Some(c) => match tokio::time::timeout(Duration::from_millis(500), c.wait()).await {
                Ok(Ok(status)) => format!("exited with {status}"),
                _ => "closed its stdout".to_owned(),
            },
            None => "is gone".to_owned(),
        };
        // Let the stderr reader catch the process's last words.
        tokio::task::yield_now().await;
        let tail = self.stderr_tail();
        let message = if tail.is_empty() {
            format!("the server process {status}")
        } else {
            format!("the server process {status}; its last stderr: {tail}")
        };
        self.fault.set(McpErrorKind::ServerDied, message);
    }
}

/// Whether a line that does not parse as a message is still JSON-RPC that a
/// client may ignore: a notification whose method it does not know.
fn ignorable(line: &[u8]) -> bool {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(line) else {
        return false;
    };
    v.get("jsonrpc").and_then(|j| j.as_str()) == Some("2.0")
        && v.get("id").is_none()
        && v.get("method").is_some_and(|m| m.is_string())
}

/// The start of a line, for an error message.
fn excerpt(line: &[u8]) -> String {
    let text = String::from_utf8_lossy(line);
    let mut out: String = text.chars().take(120).collect();
    if text.chars().count() > 120 {
        out.push('…');
    }
    out
}

impl Transport<RoleClient> for StdioTransport {
    type Error = std::io::Error;

    fn send(
        &mut self,
        item: ClientJsonRpcMessage,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        let stdin = self.stdin.clone();
        let encoded = serde_json::to_vec(&item).map(|mut v| {
            v.push(b'\n');
            v
        });
        async move {
            let bytes = encoded.map_err(std::io::Error::other)?;
            let mut guard = stdin.lock().await;
            let Some(w) = guard.as_mut() else {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::NotConnected,
                    "the server's stdin is closed",
                ));
            };
            w.write_all(&bytes).await?;
            w.flush().await
        }
    }

    async fn receive(&mut self) -> Option<ServerJsonRpcMessage> {
        loop {
            self.line.clear();
            let read = (&mut self.stdout)
                .take(MAX_LINE)
                .read_until(b'\n', &mut self.line)
                .await;
            match read {
                Ok(0) => {
                    self.exited().await;
                    return None;
                }
                Ok(_) => {}
                Err(e) => {
                    self.fault.set(
                        McpErrorKind::ServerDied,
                        format!("reading the server's stdout failed: {e}"),
                    );
                    return None;
                }
            }
            if !self.line.ends_with(b"\n") && self.line.len() as u64 >= MAX_LINE {
                self.fault.set(
                    McpErrorKind::OffProtocol,
                    format!("the server wrote a line longer than {MAX_LINE} bytes"),
                );
                return None;
            }
            let mut line = self.line.as_slice();
            line = line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line);
            while let Some((last, rest)) = line.split_last() {
                if last.is_ascii_whitespace() {
                    line = rest;
                } else {
                    break;
                }
            }
            if line.is_empty() {
                continue;
            }
            match serde_json::from_slice::<ServerJsonRpcMessage>(line) {
                Ok(message) => return Some(message),
                Err(_) if ignorable(line) => {
                    tracing::debug!(server = %self.server, "ignoring an unknown notification");
                    continue;
                }
                Err(e) => {
                    self.fault.set(
                        McpErrorKind::OffProtocol,
                        format!(
                            "the server wrote something that is not MCP JSON-RPC ({e}): {:?}",
                            excerpt(line)
                        ),
                    );
                    return None;
                }
            }
        }
    }

    async fn close(&mut self) -> Result<(), Self::Error> {
        // Closing stdin asks a well-behaved server to exit; kill it if it does not.
        drop(self.stdin.lock().await.take());
        if let Some(mut child) = self.child.take() {
            match tokio::time::timeout(Duration::from_millis(500), child.wait()).await {
                Ok(_) => {}
                Err(_) => {
                    let _ = child.start_kill();
                    let _ = tokio::time::timeout(Duration::from_secs(2), child.wait()).await;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_notifications_may_be_ignored_but_garbage_may_not() {
        assert!(ignorable(br#"{"jsonrpc":"2.0","method":"vendor/thing"}"#));
        assert!(!ignorable(br#"{"jsonrpc":"2.0","id":1,"method":"x"}"#));
        assert!(!ignorable(b"hello world"));
        assert!(!ignorable(br#"{"result":1}"#));
    }

    #[test]
    fn excerpts_are_short() {
        let long = "x".repeat(500);
        assert_eq!(excerpt(long.as_bytes()).chars().count(), 121);
        assert_eq!(excerpt(b"abc"), "abc");
    }
}
