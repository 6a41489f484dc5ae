//! Property tests: any chunking of a valid stream gives the same result; any bytes
//! give an error or events, never a panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use bytes::Bytes;
use coditect_claude::sse::{SseEvent, SseParser};
use coditect_claude::testing::{message, sse_text};
use coditect_claude::types::{ContentBlock, Message, StopReason};
use coditect_claude::{ErrorKind, MessageStream};
use proptest::prelude::*;
use serde_json::json;

fn sample(text: &str, thinking: &str, arg: &str) -> Message {
    message(
        vec![
            ContentBlock::Thinking {
                thinking: thinking.into(),
                signature: "sig".into(),
            },
            ContentBlock::text(text),
            ContentBlock::tool_use("toolu_1", "f", json!({"arg": arg, "n": [1, 2.5, null]})),
        ],
        StopReason::ToolUse,
    )
}

/// Cuts `bytes` at the given offsets (repeated offsets give empty chunks, which a
/// network read can also deliver).
fn cut(bytes: &[u8], offsets: Vec<usize>) -> Vec<Bytes> {
    let mut offsets: Vec<usize> = offsets.into_iter().map(|o| o % (bytes.len() + 1)).collect();
    offsets.sort_unstable();
    let mut chunks = Vec::new();
    let mut start = 0;
    for o in offsets {
        if o >= start {
            chunks.push(Bytes::copy_from_slice(&bytes[start..o]));
            start = o;
        }
    }
    chunks.push(Bytes::copy_from_slice(&bytes[start..]));
    chunks
}

fn parse(chunks: &[Bytes]) -> Result<Vec<SseEvent>, coditect_claude::sse::SseError> {
    let mut p = SseParser::new();
    let mut out = Vec::new();
    for c in chunks {
        p.push(c, &mut out)?;
    }
    p.finish();
    Ok(out)
}

fn accumulate(chunks: Vec<Bytes>) -> coditect_claude::Result<Message> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async move {
        let stream = MessageStream::from_byte_stream(
            futures::stream::iter(chunks.into_iter().map(Ok)),
            Duration::from_secs(60),
        );
        tokio::time::timeout(Duration::from_secs(10), stream.final_message())
            .await
            .expect("stream hung")
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn any_chunking_of_a_valid_stream_gives_the_same_message(
        text in "\\PC{0,60}",
        thinking in "\\PC{0,40}",
        arg in "\\PC{0,30}",
        offsets in proptest::collection::vec(prop_oneof![any::<usize>(), 0..600usize], 0..40),
        crlf in any::<bool>(),
    ) {
        let expected = sample(&text, &thinking, &arg);
        let mut wire = sse_text(&expected);
        if crlf {
            wire = wire.replace('\n', "\r\n");
        }
        let whole = parse(&[Bytes::from(wire.clone())]).unwrap();
        let chunks = cut(wire.as_bytes(), offsets);
        prop_assert_eq!(&parse(&chunks).unwrap(), &whole);
        let got = accumulate(chunks).unwrap();
        prop_assert_eq!(got, expected);
    }

    #[test]
    fn a_stream_cut_short_is_an_error_not_a_short_message(text in "\\PC{1,60}", at in any::<usize>()) {
        let wire = sse_text(&sample(&text, "t", "a"));
        let end = wire.find("event: message_stop").unwrap();
        let at = at % end;
        let err = accumulate(vec![Bytes::copy_from_slice(&wire.as_bytes()[..at])]).unwrap_err();
        prop_assert_eq!(err.kind(), ErrorKind::Stream);
    }

    #[test]
    fn random_bytes_are_an_error_never_a_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..2048),
        offsets in proptest::collection::vec(any::<usize>(), 0..10),
    ) {
        let chunks = cut(&bytes, offsets);
        let _ = parse(&chunks);
        prop_assert!(accumulate(chunks).is_err());
    }

    #[test]
    fn sse_shaped_garbage_is_an_error_never_a_panic(
        lines in proptest::collection::vec(
            prop_oneof![
                Just("event: message_start".to_owned()),
                Just("event: content_block_delta".to_owned()),
                Just("event: message_stop".to_owned()),
                Just("data: {\"type\":\"message_stop\"}".to_owned()),
                Just("data: {\"type\":\"content_block_stop\",\"index\":3}".to_owned()),
                Just(String::new()),
                "data: \\PC{0,20}",
                "\\PC{0,20}",
            ],
            0..30,
        ),
    ) {
        let wire = lines.join("\n");
        prop_assert!(accumulate(vec![Bytes::from(wire)]).is_err());
    }
}
