//! `claude_stream`: streams Claude's answer to a prompt to stdout as it arrives.
//!
//! Shows the streaming client: typed events, text deltas printed as they come, and
//! every failure (no key, an API refusal, a broken stream) as one clear line.
//!
//! ```text
//! cargo run -p coditect-examples --bin claude_stream -- "Why is the sky blue?"
//! ```
//!
//! Environment:
//! - `ANTHROPIC_API_KEY` (required): the API key.
//! - `ANTHROPIC_BASE_URL` (optional): another endpoint, such as a proxy.
//! - `CLAUDE_MODEL` (optional): the model, `claude-sonnet-4-5` by default.
//!
//! Exits 0 after a complete answer, 1 with a one-line error on stderr otherwise.

use std::io::Write;
use std::process::ExitCode;

use coditect_claude::Client;
use coditect_claude::types::{ContentDelta, MessageRequest, StopReason, StreamEvent};
use futures::StreamExt;

const DEFAULT_PROMPT: &str = "In three sentences, what is a multi-agent system?";

// `main` returns an `ExitCode` rather than a `Result` so that a failure prints the
// error's one-line `Display`, not its `Debug` dump.
#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("claude_stream: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let prompt = if args.is_empty() {
        DEFAULT_PROMPT.to_owned()
    } else {
        args.join(" ")
    };
    let model = std::env::var("CLAUDE_MODEL").unwrap_or_else(|_| "claude-sonnet-4-5".to_owned());

    let client = Client::from_env()?;
    let request = MessageRequest::new(model, 1024).user(prompt);
    let mut stream = client.messages().stream(&request).await?;

    let mut out = std::io::stdout().lock();
    let mut stop = None;
    let mut wrote = false;
    while let Some(event) = stream.next().await {
        let event = match event {
            Ok(event) => event,
            Err(e) => {
                // End the partial answer's line so the error gets a line of its own.
                if wrote {
                    writeln!(out)?;
                }
                return Err(e.into());
            }
        };
        match event {
            StreamEvent::ContentBlockDelta {
                delta: ContentDelta::TextDelta { text },
                ..
            } => {
                out.write_all(text.as_bytes())?;
                out.flush()?;
                wrote = true;
            }
            StreamEvent::MessageDelta { delta, .. } => stop = delta.stop_reason,
            _ => {}
        }
    }
    writeln!(out)?;
    if stop == Some(StopReason::MaxTokens) {
        eprintln!("claude_stream: note: the answer reached max_tokens and may be cut short");
    }
    Ok(())
}
