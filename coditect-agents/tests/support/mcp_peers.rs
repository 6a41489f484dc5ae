//! Finds (and if need be installs) the MCP peers the tests run against:
//! `@modelcontextprotocol/server-everything` from npm and the Python `mcp`
//! SDK from PyPI, both under `target/mcp-peers` (or `$MCP_PEERS_DIR`).
//! `scripts/test-mcp.sh` installs them; a test that finds one missing tries
//! once itself. Without them a test is skipped with a loud notice — except
//! under `CI=true`, where a missing peer fails it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

pub(crate) fn peers_dir() -> PathBuf {
    match std::env::var_os("MCP_PEERS_DIR") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/mcp-peers"),
    }
}

fn missing(what: &str) -> Option<PathBuf> {
    let msg = format!(
        "{what} is not installed and could not be installed; run scripts/test-mcp.sh (needs node/npm and python3 with venv)"
    );
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{msg}");
    }
    eprintln!("\n************************************************************");
    eprintln!("*** SKIPPED: {msg}");
    eprintln!("************************************************************\n");
    None
}

/// The entry script of server-everything (run it with `node`).
pub(crate) fn everything() -> Option<PathBuf> {
    static FOUND: OnceLock<Option<PathBuf>> = OnceLock::new();
    FOUND
        .get_or_init(|| {
            let dir = peers_dir();
            let script =
                dir.join("node_modules/@modelcontextprotocol/server-everything/dist/index.js");
            if !script.exists() {
                let _ = Command::new("npm")
                    .args(["install", "--silent", "--no-audit", "--no-fund", "--prefix"])
                    .arg(&dir)
                    .arg("@modelcontextprotocol/server-everything")
                    .stdout(Stdio::null())
                    .status();
            }
            let node_ok = Command::new("node")
                .arg("--version")
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if script.exists() && node_ok {
                Some(script)
            } else {
                missing("@modelcontextprotocol/server-everything (npm)")
            }
        })
        .clone()
}

/// A Python with the `mcp` SDK importable.
pub(crate) fn python() -> Option<PathBuf> {
    static FOUND: OnceLock<Option<PathBuf>> = OnceLock::new();
    FOUND
        .get_or_init(|| {
            let venv = peers_dir().join("venv");
            let py = venv.join("bin/python");
            let importable = |py: &Path| {
                Command::new(py)
                    .args(["-c", "import mcp"])
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            };
            if !importable(&py) {
                let _ = Command::new("python3")
                    .args(["-m", "venv"])
                    .arg(&venv)
                    .status();
                let _ = Command::new(&py)
                    .args([
                        "-m",
                        "pip",
                        "install",
                        "--quiet",
                        "--disable-pip-version-check",
                        "mcp",
                    ])
                    .status();
            }
            if importable(&py) {
                Some(py)
            } else {
                missing("the Python mcp SDK (PyPI)")
            }
        })
        .clone()
}

/// A free port on 127.0.0.1 (bound and released: the peer binds it next).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process killed (by its pid) when the test ends.
pub(crate) struct Peer(pub(crate) Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
