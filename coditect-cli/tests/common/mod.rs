//! What the `coditect` tool's tests share.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use tokio::time::timeout;

/// How long any one step of a test may take.
pub(crate) const T: Duration = Duration::from_secs(60);

/// Runs the `coditect` binary with `args`: whether it succeeded, its stdout
/// and its stderr.
pub(crate) async fn coditect(args: &[&str]) -> (bool, String, String) {
    let out = timeout(
        T,
        tokio::process::Command::new(env!("CARGO_BIN_EXE_coditect"))
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap()
    .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
