//! What an MCP tool call returns, in coditect's own types, and the text a
//! model reads of it.

use rmcp::model as wire;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One piece of an MCP tool's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum McpContent {
    /// Text.
    Text {
        /// The text.
        text: String,
    },
    /// An image, base64-encoded.
    Image {
        /// Its MIME type, such as `image/png`.
        mime_type: String,
        /// The base64-encoded bytes.
        data: String,
    },
    /// A sound, base64-encoded.
    Audio {
        /// Its MIME type, such as `audio/wav`.
        mime_type: String,
        /// The base64-encoded bytes.
        data: String,
    },
    /// A resource embedded in the result: text or a base64 blob.
    Resource {
        /// The resource's URI.
        uri: String,
        /// Its MIME type, if given.
        mime_type: Option<String>,
        /// Its text, for a text resource.
        text: Option<String>,
        /// Its base64-encoded bytes, for a binary resource.
        blob: Option<String>,
    },
    /// A link to a resource the server can read.
    ResourceLink {
        /// The resource's URI.
        uri: String,
        /// Its name.
        name: String,
        /// What it is, if said.
        description: Option<String>,
    },
    /// A kind of block this version does not know, as the server sent it.
    Other {
        /// The block's JSON.
        value: Value,
    },
}

/// The result of one MCP tool call.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct CallOutcome {
    /// The content blocks, in the server's order.
    pub content: Vec<McpContent>,
    /// The structured result, when the tool has an output schema.
    pub structured: Option<Value>,
    /// Whether the tool reports that it failed (the server ran it, and it
    /// says it did not work: a tool-level error, for the model to read).
    pub is_error: bool,
}

impl CallOutcome {
    /// The text a model reads: every block in order, one per line; the
    /// structured result as JSON only when there is no text block (servers
    /// are asked to repeat it as text, and the text is what they mean a
    /// text-only reader to see).
    ///
    /// Coditect's tool results are text, so images, sounds and blobs reach the
    /// model as a note naming their type and size; the bytes stay in
    /// [`content`](Self::content) for code that calls the tool directly.
    ///
    /// # Examples
    ///
    /// ```
    /// use coditect_agents::mcp::{CallOutcome, McpContent};
    ///
    /// let outcome = CallOutcome {
    ///     content: vec![
    ///         McpContent::Text { text: "a red dot".into() },
    ///         McpContent::Image { mime_type: "image/png".into(), data: "iVBORw0K".into() },
    ///     ],
    ///     ..CallOutcome::default()
    /// };
    /// assert_eq!(outcome.text(), "a red dot\n[image: image/png, 6 bytes]");
    /// ```
    pub fn text(&self) -> String {
        let has_text = self
            .content
            .iter()
            .any(|c| matches!(c, McpContent::Text { .. }));
        let mut parts: Vec<String> = Vec::with_capacity(self.content.len() + 1);
        if let Some(structured) = self.structured.as_ref().filter(|_| !has_text) {
            parts.push(structured.to_string());
        }
        parts.extend(self.content.iter().map(render));
        parts.join("\n")
    }
}

fn render(content: &McpContent) -> String {
    match content {
        McpContent::Text { text } => text.clone(),
        McpContent::Image { mime_type, data } => {
            format!("[image: {mime_type}, {} bytes]", decoded_len(data))
        }
        McpContent::Audio { mime_type, data } => {
            format!("[audio: {mime_type}, {} bytes]", decoded_len(data))
        }
        McpContent::Resource {
            uri,
            mime_type,
            text,
            blob,
        } => match (text, blob) {
            (Some(text), _) => format!("[resource {uri}]\n{text}"),
            (None, Some(blob)) => format!(
                "[resource {uri}: {}, {} bytes]",
                mime_type.as_deref().unwrap_or("binary"),
                decoded_len(blob)
            ),
            (None, None) => format!("[resource {uri}]"),
        },
        McpContent::ResourceLink {
            uri,
            name,
            description,
        } => match description {
            Some(d) => format!("[resource link {uri}: {name} — {d}]"),
            None => format!("[resource link {uri}: {name}]"),
        },
        McpContent::Other { value } => value.to_string(),
    }
}

/// The byte length base64 text decodes to (padding aware), without decoding it.
fn decoded_len(b64: &str) -> usize {
    let trimmed = b64.trim_end_matches('=');
    let len = trimmed.len();
    len / 4 * 3 + (len % 4).saturating_sub(1)
}

impl From<wire::CallToolResult> for CallOutcome {
    fn from(r: wire::CallToolResult) -> Self {
        Self {
            content: r.content.into_iter().map(McpContent::from).collect(),
            structured: r.structured_content,
            is_error: r.is_error.unwrap_or(false),
        }
    }
}

impl From<wire::ContentBlock> for McpContent {
    fn from(c: wire::ContentBlock) -> Self {
        match c {
            wire::ContentBlock::Text(t) => McpContent::Text { text: t.text },
            wire::ContentBlock::Image(i) => McpContent::Image {
                mime_type: i.mime_type,
                data: i.data,
            },
            wire::ContentBlock::Audio(a) => McpContent::Audio {
                mime_type: a.mime_type,
                data: a.data,
            },
            wire::ContentBlock::Resource(r) => match r.resource {
                wire::ResourceContents::TextResourceContents {
                    uri,
                    mime_type,
                    text,
                    ..
                } => McpContent::Resource {
                    uri,
                    mime_type,
                    text: Some(text),
                    blob: None,
                },
                wire::ResourceContents::BlobResourceContents {
                    uri,
                    mime_type,
                    blob,
                    ..
                } => McpContent::Resource {
                    uri,
                    mime_type,
                    text: None,
                    blob: Some(blob),
                },
                other => other_block(&other),
            },
            wire::ContentBlock::ResourceLink(l) => McpContent::ResourceLink {
                uri: l.uri,
                name: l.name,
                description: l.description,
            },
            other => other_block(&other),
        }
    }
}

fn other_block<T: Serialize>(block: &T) -> McpContent {
    match serde_json::to_value(block) {
        Ok(value) => McpContent::Other { value },
        Err(e) => McpContent::Text {
            text: format!("[a content block that could not be read: {e}]"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn structured_content_is_read_once_and_only_without_text() {
        let mut outcome = CallOutcome {
            content: vec![McpContent::Text {
                text: r#"{"t": 33}"#.into(),
            }],
            structured: Some(json!({"t": 33})),
            is_error: false,
        };
        assert_eq!(outcome.text(), r#"{"t": 33}"#);
        outcome.content.clear();
        assert_eq!(outcome.text(), r#"{"t":33}"#);
    }

    #[test]
    fn every_block_is_rendered_in_order() {
        let outcome = CallOutcome {
            content: vec![
                McpContent::Text { text: "one".into() },
                McpContent::Resource {
                    uri: "file:///a".into(),
                    mime_type: None,
                    text: Some("body".into()),
                    blob: None,
                },
                McpContent::ResourceLink {
                    uri: "file:///b".into(),
                    name: "b".into(),
                    description: None,
                },
                McpContent::Audio {
                    mime_type: "audio/wav".into(),
                    data: "AAAA".into(),
                },
            ],
            ..CallOutcome::default()
        };
        assert_eq!(
            outcome.text(),
            "one\n[resource file:///a]\nbody\n[resource link file:///b: b]\n[audio: audio/wav, 3 bytes]"
        );
    }

    #[test]
    fn a_wire_result_keeps_its_blocks_and_error_flag() {
        let wire: wire::CallToolResult = serde_json::from_value(json!({
            "content": [
                {"type": "text", "text": "hi"},
                {"type": "image", "data": "iVBORw0KGgo=", "mimeType": "image/png"}
            ],
            "isError": true
        }))
        .unwrap();
        let outcome = CallOutcome::from(wire);
        assert!(outcome.is_error);
        assert_eq!(outcome.content.len(), 2);
        assert_eq!(outcome.text(), "hi\n[image: image/png, 8 bytes]");
    }

    proptest! {
        #[test]
        fn decoded_len_matches_real_base64(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let b64 = base64_encode(&bytes);
            prop_assert_eq!(decoded_len(&b64), bytes.len());
        }
    }

    /// A plain base64 encoder, for the test only.
    fn base64_encode(bytes: &[u8]) -> String {
        const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }
}
