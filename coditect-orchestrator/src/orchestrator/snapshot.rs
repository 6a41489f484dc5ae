//! Snapshots of a durable run: the fold of its journal up to a point, with
//! what the journal recorded for its steps (effects, answers), so that a
//! resume reads only the events after it.
//!
//! The journal stays the truth. A snapshot is written every
//! [`Orchestrator::snapshot_every`](crate::orchestrator::Orchestrator::snapshot_every)
//! events, after the events it covers are durable, in the background (the
//! store keeps it only if it covers more than the one it has). One that
//! cannot be read back — corrupt, from another format version, of another
//! run — is passed over with a warning and the whole journal is folded
//! instead: nothing is trusted in part, and nothing is lost.

use serde::{Deserialize, Serialize};

use crate::id::{RunId, StepId};
use crate::journal::{EffectKey, Recorded};
use crate::orchestrator::DurableError;
use crate::orchestrator::durable::{self, StoredRun};
use crate::orchestrator::state::RunState;
use crate::store::{Snapshot, Store, StoreErrorKind};

/// What a snapshot holds, as written (borrowed from the driver).
#[derive(Serialize)]
pub(crate) struct BodyRef<'a> {
    pub(crate) state: &'a RunState,
    pub(crate) effects: Vec<(&'a EffectKey, &'a serde_json::Value)>,
    pub(crate) recorded: Vec<(&'a StepId, &'a Recorded)>,
}

/// What a snapshot holds, as read back.
#[derive(Deserialize)]
pub(crate) struct Body {
    pub(crate) state: RunState,
    pub(crate) effects: Vec<(EffectKey, serde_json::Value)>,
    pub(crate) recorded: Vec<(StepId, Recorded)>,
}

/// What the journal had recorded by a snapshot's point, beside the state.
pub(crate) struct Restored {
    pub(crate) effects: Vec<(EffectKey, serde_json::Value)>,
    pub(crate) recorded: Vec<(StepId, Recorded)>,
}

/// Reads a snapshot back, checking that it is the fold of `run`'s first
/// `snapshot.seq` events.
fn decode(run: RunId, snapshot: &Snapshot) -> Result<Body, String> {
    let body: Body = serde_json::from_slice(&snapshot.payload).map_err(|e| e.to_string())?;
    if body.state.run != Some(run) {
        return Err(format!("it is of run {:?}", body.state.run));
    }
    if body.state.events != snapshot.seq {
        return Err(format!(
            "it folds {} events but says it covers {}",
            body.state.events, snapshot.seq
        ));
    }
    Ok(body)
}

/// Loads a run to resume it: from its latest snapshot and the events after
/// it, or — with no usable snapshot — from its whole journal. The returned
/// run's `events` are those after the snapshot; its state is the fold of
/// the whole journal either way.
///
/// # Errors
/// As [`durable::load`]; a snapshot that cannot be read is no error.
pub(crate) async fn load_for_resume(
    store: &dyn Store,
    run: RunId,
) -> Result<(StoredRun, Option<Restored>), DurableError> {
    match store.latest_snapshot(run).await {
        Ok(Some(snapshot)) => match decode(run, &snapshot) {
            Ok(body) => {
                let stored = durable::load_from(store, run, snapshot.seq, body.state).await?;
                let restored = Restored {
                    effects: body.effects,
                    recorded: body.recorded,
                };
                return Ok((stored, Some(restored)));
            }
            Err(why) => {
                tracing::warn!(%run, seq = snapshot.seq, %why, "the run's snapshot cannot be used; folding its whole journal");
            }
        },
        Ok(None) => {}
        Err(e)
            if matches!(
                e.kind(),
                StoreErrorKind::Corrupt | StoreErrorKind::UnsupportedVersion
            ) =>
        {
            tracing::warn!(%run, error = %e, "the run's snapshot cannot be read; folding its whole journal");
        }
        Err(e) => return Err(DurableError::store(e)),
    }
    Ok((durable::load(store, run).await?, None))
}
