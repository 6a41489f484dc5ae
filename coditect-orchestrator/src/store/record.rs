//! Journal records and snapshots, and the one versioned, checksummed frame
//! every backend stores them in.
//!
//! A frame (format version 1, little-endian):
//!
//! ```text
//! version u8 | seq u64 | kind_len u8 | kind (ASCII) | payload_len u32 | payload | crc32 u32
//! ```
//!
//! The CRC-32 covers every byte before it. The version byte comes first, so a
//! frame written by a newer format is recognised as such
//! ([`StoreError::UnsupportedVersion`]) before anything else is read; a frame
//! that fails any other check is [`StoreError::Corrupt`], naming the run and the
//! sequence number. Frames are self-delimiting, so a backend may store several
//! back to back (the JetStream backend stores one append as one message).

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;
use smol_str::SmolStr;

use crate::RunId;

use super::StoreError;

/// The stored format version this build writes, and the newest it reads.
pub const FORMAT_VERSION: u8 = 1;

/// The longest record kind, in bytes.
pub const MAX_KIND_LEN: usize = 64;

/// Bytes a frame adds to its kind and payload.
pub(crate) const FRAME_OVERHEAD: usize = 1 + 8 + 1 + 4 + 4;

/// The kind written into snapshot frames.
pub(crate) const SNAPSHOT_KIND: &str = "snapshot";

/// A record to append: a short kind tag and an opaque payload.
///
/// The store does not look inside the payload; the orchestrator puts
/// serialized run events, effect results and pause requests in it and tells
/// them apart by `kind`.
///
/// ```
/// use coditect_orchestrator::store::NewRecord;
/// let r = NewRecord::json("event", &serde_json::json!({"step": "a"}))?;
/// assert_eq!(r.kind(), "event");
/// assert_eq!(&r.payload()[..], br#"{"step":"a"}"#);
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRecord {
    kind: SmolStr,
    payload: Bytes,
}

impl NewRecord {
    /// A record of `kind` with these payload bytes. The kind is checked when
    /// the record is appended: 1 to [`MAX_KIND_LEN`] printable ASCII bytes.
    pub fn new(kind: impl Into<SmolStr>, payload: impl Into<Bytes>) -> Self {
        Self {
            kind: kind.into(),
            payload: payload.into(),
        }
    }

    /// A record whose payload is `value` as JSON.
    ///
    /// # Errors
    /// The [`serde_json::Error`] if `value` cannot be serialized.
    pub fn json<T: Serialize + ?Sized>(
        kind: impl Into<SmolStr>,
        value: &T,
    ) -> Result<Self, serde_json::Error> {
        Ok(Self::new(kind, serde_json::to_vec(value)?))
    }

    /// Its kind tag.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// Its payload.
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }
}

/// A record read back from a run's journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Its position in the run's journal, from 0, without gaps.
    pub seq: u64,
    /// Its kind tag, as appended.
    pub kind: SmolStr,
    /// Its payload, as appended.
    pub payload: Bytes,
    /// The format version it was stored with.
    pub version: u8,
}

impl Record {
    /// Decodes the payload as JSON.
    ///
    /// # Errors
    /// The [`serde_json::Error`] if the payload is not a `T`.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.payload)
    }
}

/// A snapshot of a run's state (the fold of its journal up to `seq`), as
/// opaque bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The journal position it covers: records `0..seq` are folded into it.
    pub seq: u64,
    /// The state, as the orchestrator serialized it.
    pub payload: Bytes,
    /// The format version it was stored with.
    pub version: u8,
}

impl Snapshot {
    /// A snapshot covering the journal's records `0..seq`.
    pub fn new(seq: u64, payload: impl Into<Bytes>) -> Self {
        Self {
            seq,
            payload: payload.into(),
            version: FORMAT_VERSION,
        }
    }
}

/// Checks a record kind: 1 to [`MAX_KIND_LEN`] printable ASCII bytes.
pub(crate) fn check_kind(kind: &str) -> Result<(), StoreError> {
    if kind.is_empty() || kind.len() > MAX_KIND_LEN || !kind.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(StoreError::Invalid(format!(
            "record kind {kind:?}: it must be 1 to {MAX_KIND_LEN} printable ASCII bytes"
        )));
    }
    Ok(())
}

/// Checks an append before anything is written: kinds valid, every payload
/// within `max_record_bytes`.
pub(crate) fn check_append(
    run: RunId,
    records: &[NewRecord],
    max_record_bytes: usize,
) -> Result<(), StoreError> {
    for r in records {
        check_kind(&r.kind)?;
        if r.payload.len() > max_record_bytes {
            return Err(StoreError::TooLarge {
                run,
                what: "record",
                size: r.payload.len(),
                limit: max_record_bytes,
            });
        }
    }
    Ok(())
}

/// Checks a snapshot's size before it is written.
pub(crate) fn check_snapshot(
    run: RunId,
    snapshot: &Snapshot,
    max_snapshot_bytes: usize,
) -> Result<(), StoreError> {
    if snapshot.payload.len() > max_snapshot_bytes {
        return Err(StoreError::TooLarge {
            run,
            what: "snapshot",
            size: snapshot.payload.len(),
            limit: max_snapshot_bytes,
        });
    }
    Ok(())
}

/// Appends the frame of one record (or snapshot) to `out`.
pub(crate) fn encode_into(seq: u64, kind: &str, payload: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    out.reserve(FRAME_OVERHEAD + kind.len() + payload.len());
    out.push(FORMAT_VERSION);
    out.extend_from_slice(&seq.to_le_bytes());
    // Kinds are checked to be at most MAX_KIND_LEN (64) bytes before encoding.
    out.push(kind.len().min(u8::MAX as usize) as u8);
    out.extend_from_slice(kind.as_bytes());
    // Payloads are checked against max_record_bytes, which is capped below u32::MAX.
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
    let crc = crc32fast::hash(&out[start..]);
    out.extend_from_slice(&crc.to_le_bytes());
}

/// The frame of one record, as its own buffer.
pub(crate) fn encode(seq: u64, kind: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(seq, kind, payload, &mut out);
    out
}

/// What a frame holds, before it is checked against its place.
struct Frame<'a> {
    version: u8,
    seq: u64,
    kind: &'a str,
    payload: &'a [u8],
}

/// Reads one frame from the front of `buf`; returns it and its length.
/// `at` is the sequence number the frame should hold, for errors.
fn read_frame<'a>(
    run: RunId,
    what: &'static str,
    at: u64,
    buf: &'a [u8],
) -> Result<(Frame<'a>, usize), StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        run,
        seq: at,
        what,
        reason,
    };
    let Some(&version) = buf.first() else {
        return Err(corrupt("empty frame".into()));
    };
    if version > FORMAT_VERSION {
        return Err(StoreError::UnsupportedVersion {
            run,
            seq: at,
            what,
            version,
            supported: FORMAT_VERSION,
        });
    }
    if version == 0 {
        return Err(corrupt("format version 0".into()));
    }
    let fixed = 1 + 8 + 1;
    let Some(head) = buf.get(..fixed) else {
        return Err(corrupt(format!("truncated header ({} bytes)", buf.len())));
    };
    let mut seq_bytes = [0u8; 8];
    seq_bytes.copy_from_slice(&head[1..9]);
    let seq = u64::from_le_bytes(seq_bytes);
    let kind_len = head[9] as usize;
    let kind_end = fixed + kind_len;
    let Some(len_bytes) = buf.get(kind_end..kind_end + 4) else {
        return Err(corrupt("truncated kind".into()));
    };
    let mut n = [0u8; 4];
    n.copy_from_slice(len_bytes);
    let payload_len = u32::from_le_bytes(n) as usize;
    let payload_start = kind_end + 4;
    let crc_start = payload_start
        .checked_add(payload_len)
        .ok_or_else(|| corrupt("payload length overflows".into()))?;
    let Some(crc_bytes) = buf.get(crc_start..crc_start + 4) else {
        return Err(corrupt(format!(
            "truncated: payload of {payload_len} bytes, {} left",
            buf.len().saturating_sub(payload_start)
        )));
    };
    let mut c = [0u8; 4];
    c.copy_from_slice(crc_bytes);
    let stored = u32::from_le_bytes(c);
    let actual = crc32fast::hash(&buf[..crc_start]);
    if stored != actual {
        return Err(corrupt(format!(
            "checksum mismatch (stored {stored:08x}, computed {actual:08x})"
        )));
    }
    let kind = std::str::from_utf8(&buf[fixed..kind_end])
        .map_err(|_| corrupt("kind is not UTF-8".into()))?;
    Ok((
        Frame {
            version,
            seq,
            kind,
            payload: &buf[payload_start..crc_start],
        },
        crc_start + 4,
    ))
}

/// Decodes exactly one record frame that must hold sequence number `seq`.
pub(crate) fn decode_record(run: RunId, seq: u64, buf: &[u8]) -> Result<Record, StoreError> {
    let (frame, used) = read_frame(run, "record", seq, buf)?;
    if used != buf.len() {
        return Err(StoreError::Corrupt {
            run,
            seq,
            what: "record",
            reason: format!("{} trailing bytes", buf.len() - used),
        });
    }
    record_from(run, seq, frame)
}

fn record_from(run: RunId, seq: u64, frame: Frame<'_>) -> Result<Record, StoreError> {
    if frame.seq != seq {
        return Err(StoreError::Corrupt {
            run,
            seq,
            what: "record",
            reason: format!("holds seq {} in place of {seq}", frame.seq),
        });
    }
    Ok(Record {
        seq,
        kind: SmolStr::new(frame.kind),
        payload: Bytes::copy_from_slice(frame.payload),
        version: frame.version,
    })
}

/// Decodes frames stored back to back, the first holding `first_seq`, the
/// rest following without gaps.
#[allow(dead_code)] // Used by the JetStream backend.
pub(crate) fn decode_records(
    run: RunId,
    first_seq: u64,
    mut buf: &[u8],
) -> Result<Vec<Record>, StoreError> {
    let mut out = Vec::new();
    let mut seq = first_seq;
    while !buf.is_empty() {
        let (frame, used) = read_frame(run, "record", seq, buf)?;
        out.push(record_from(run, seq, frame)?);
        buf = &buf[used..];
        seq += 1;
    }
    Ok(out)
}

/// The length of the frame at the front of `buf`, read from its length
/// fields alone (no checksum): how a reader steps over records before the
/// ones it was asked for. `None` if the lengths run past the buffer.
fn frame_len(buf: &[u8]) -> Option<usize> {
    let kind_len = *buf.get(9)? as usize;
    let at = 10 + kind_len;
    let mut n = [0u8; 4];
    n.copy_from_slice(buf.get(at..at + 4)?);
    let end = (at + 4)
        .checked_add(u32::from_le_bytes(n) as usize)?
        .checked_add(4)?;
    (end <= buf.len()).then_some(end)
}

/// Decodes, from frames stored back to back (the first holding
/// `first_seq`), the records `from..` up to `limit` of them; frames before
/// `from` are stepped over by their lengths.
#[allow(dead_code)] // Used by the JetStream backend.
pub(crate) fn decode_range(
    run: RunId,
    first_seq: u64,
    mut buf: &[u8],
    from: u64,
    limit: usize,
) -> Result<Vec<Record>, StoreError> {
    let mut out = Vec::new();
    let mut seq = first_seq;
    while !buf.is_empty() && out.len() < limit {
        if seq < from {
            let used = frame_len(buf).ok_or_else(|| StoreError::Corrupt {
                run,
                seq,
                what: "record",
                reason: "truncated frame".into(),
            })?;
            buf = &buf[used..];
        } else {
            let (frame, used) = read_frame(run, "record", seq, buf)?;
            out.push(record_from(run, seq, frame)?);
            buf = &buf[used..];
        }
        seq += 1;
    }
    Ok(out)
}

/// Splits frames stored back to back by their lengths (for tests that
/// rewrite one of them).
#[allow(dead_code)] // Used by the JetStream backend's test hook.
pub(crate) fn split_frames(mut buf: &[u8]) -> Option<Vec<&[u8]>> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        let n = frame_len(buf)?;
        out.push(&buf[..n]);
        buf = &buf[n..];
    }
    Some(out)
}

/// Encodes a snapshot's frame.
pub(crate) fn encode_snapshot(snapshot: &Snapshot) -> Vec<u8> {
    encode(snapshot.seq, SNAPSHOT_KIND, &snapshot.payload)
}

/// Decodes a snapshot frame stored for a snapshot at `seq` (as far as the
/// backend knows: for errors).
pub(crate) fn decode_snapshot(run: RunId, seq: u64, buf: &[u8]) -> Result<Snapshot, StoreError> {
    let (frame, used) = read_frame(run, "snapshot", seq, buf)?;
    let corrupt = |reason: String| StoreError::Corrupt {
        run,
        seq,
        what: "snapshot",
        reason,
    };
    if used != buf.len() {
        return Err(corrupt(format!("{} trailing bytes", buf.len() - used)));
    }
    if frame.kind != SNAPSHOT_KIND {
        return Err(corrupt(format!("holds a {:?} frame", frame.kind)));
    }
    Ok(Snapshot {
        seq: frame.seq,
        payload: Bytes::copy_from_slice(frame.payload),
        version: frame.version,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreErrorKind;
    use proptest::prelude::*;

    #[test]
    fn a_frame_round_trips_and_costs_its_overhead() {
        let run = RunId::new();
        let f = encode(7, "event", b"{}");
        assert_eq!(f.len(), FRAME_OVERHEAD + 5 + 2);
        let r = decode_record(run, 7, &f).unwrap();
        assert_eq!(
            (r.seq, r.kind.as_str(), &r.payload[..]),
            (7, "event", &b"{}"[..])
        );
        assert_eq!(r.version, FORMAT_VERSION);
    }

    #[test]
    fn a_frame_in_the_wrong_place_is_corrupt() {
        let run = RunId::new();
        let e = decode_record(run, 8, &encode(7, "event", b"x")).unwrap_err();
        assert_eq!(e.kind(), StoreErrorKind::Corrupt);
        assert!(e.to_string().contains("seq 8"), "{e}");
    }

    #[test]
    fn a_future_version_is_named_as_such() {
        let run = RunId::new();
        let mut f = encode(3, "event", b"x");
        f[0] = FORMAT_VERSION + 1;
        let e = decode_record(run, 3, &f).unwrap_err();
        assert!(
            matches!(e, StoreError::UnsupportedVersion { seq: 3, version, .. } if version == FORMAT_VERSION + 1)
        );
        assert!(e.to_string().contains(&run.to_string()));
    }

    #[test]
    fn snapshots_round_trip_and_are_not_records() {
        let run = RunId::new();
        let s = Snapshot::new(42, &b"state"[..]);
        let f = encode_snapshot(&s);
        assert_eq!(decode_snapshot(run, 42, &f).unwrap(), s);
        assert_eq!(
            decode_snapshot(run, 1, &encode(1, "event", b"x"))
                .unwrap_err()
                .kind(),
            StoreErrorKind::Corrupt
        );
    }

    proptest! {
        // Any byte string decodes to records or to a typed error, never a panic.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300), at in 0u64..10) {
            let run = RunId::new();
            match decode_records(run, at, &bytes) {
                Ok(records) => prop_assert!(records.iter().enumerate().all(|(i, r)| r.seq == at + i as u64)),
                Err(e) => prop_assert!(matches!(e.kind(), StoreErrorKind::Corrupt | StoreErrorKind::UnsupportedVersion)),
            }
            let _ = decode_snapshot(run, at, &bytes);
            if let Ok(records) = decode_range(run, at, &bytes, at + 1, 3) {
                prop_assert!(records.len() <= 3);
            }
        }

        // Frames back to back decode to what was encoded; any one flipped
        // bit is caught.
        #[test]
        fn frames_round_trip_and_every_flip_is_caught(
            records in proptest::collection::vec(("[a-z]{1,12}", proptest::collection::vec(any::<u8>(), 0..100)), 1..6),
            first in 0u64..1000,
            flip in any::<(usize, u8)>(),
        ) {
            let run = RunId::new();
            let mut buf = Vec::new();
            for (i, (kind, payload)) in records.iter().enumerate() {
                encode_into(first + i as u64, kind, payload, &mut buf);
            }
            let back = decode_records(run, first, &buf).unwrap();
            prop_assert_eq!(back.len(), records.len());
            for (r, (kind, payload)) in back.iter().zip(&records) {
                prop_assert_eq!(r.kind.as_str(), kind.as_str());
                prop_assert_eq!(&r.payload[..], &payload[..]);
            }
            let n = records.len() as u64;
            let tail = decode_range(run, first, &buf, first + n / 2, 10).unwrap();
            prop_assert_eq!(tail.len() as u64, n - n / 2);
            prop_assert_eq!(split_frames(&buf).unwrap().len(), records.len());
            let (at, bit) = (flip.0 % buf.len(), 1u8 << (flip.1 % 8));
            buf[at] ^= bit;
            let e = decode_records(run, first, &buf).unwrap_err();
            prop_assert!(matches!(e.kind(), StoreErrorKind::Corrupt | StoreErrorKind::UnsupportedVersion));
        }
    }
}
