//! Starts a real PostgreSQL server for tests: `initdb` into a temporary
//! directory, `postgres` on a free loopback port, stopped by its PID on drop.
//!
//! The binaries come from Debian's `postgresql` package
//! (`/usr/lib/postgresql/<version>/bin`, newest first), `$POSTGRES_BIN_DIR`,
//! or `PATH`. PostgreSQL refuses to run as root, so as root the server runs as
//! an unprivileged user (`$CODITECT_PG_USER`, else `postgres`, else `nobody`)
//! through `setpriv` (which execs, so the child's PID is the server's) or
//! `runuser`; the temporary directory is handed to that user.

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How to install the server when it is missing.
pub const POSTGRES_INSTALL_HINT: &str = "PostgreSQL not found: `apt-get install -y postgresql` \
(Debian's package puts initdb and postgres in /usr/lib/postgresql/<version>/bin), or set \
POSTGRES_BIN_DIR to the directory holding them; scripts/test-store.sh installs it for you";

/// The database user the test server is initialised with (trust auth).
pub const TEST_USER: &str = "coditect";

/// Why a test PostgreSQL could not be started.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PostgresError(String);

/// Finds the directory holding `initdb` and `postgres`.
///
/// # Errors
/// [`PostgresError`] with [`POSTGRES_INSTALL_HINT`] when there is none.
pub fn postgres_bin_dir() -> Result<PathBuf, PostgresError> {
    let has = |d: &Path| d.join("initdb").is_file() && d.join("postgres").is_file();
    if let Some(d) = std::env::var_os("POSTGRES_BIN_DIR") {
        let d = PathBuf::from(d);
        if has(&d) {
            return Ok(d);
        }
        return Err(PostgresError(format!(
            "POSTGRES_BIN_DIR={} holds no initdb and postgres; {POSTGRES_INSTALL_HINT}",
            d.display()
        )));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            has(&bin).then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if has(&dir) {
                return Ok(dir);
            }
        }
    }
    Err(PostgresError(POSTGRES_INSTALL_HINT.to_owned()))
}

/// Whether this process runs as root (read from `/proc/self/status`).
fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

fn user_exists(user: &str) -> bool {
    std::fs::read_to_string("/etc/passwd")
        .map(|p| p.lines().any(|l| l.split(':').next() == Some(user)))
        .unwrap_or(false)
}

fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/bin".into(), "/usr/sbin".into(), "/bin".into()])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// How to run the server's binaries: as ourselves, or as another user.
#[derive(Debug, Clone)]
enum RunAs {
    Me,
    /// `setpriv --reuid --regid --init-groups` (execs in place).
    Setpriv(PathBuf, String),
    /// `runuser -u USER --` (forks; the server's PID is read from its pid file).
    Runuser(PathBuf, String),
}

impl RunAs {
    fn pick() -> Result<Self, PostgresError> {
        if !running_as_root() {
            return Ok(Self::Me);
        }
        let user = std::env::var("CODITECT_PG_USER")
            .ok()
            .filter(|u| user_exists(u))
            .or_else(|| ["postgres", "nobody"].into_iter().find(|u| user_exists(u)).map(str::to_owned))
            .ok_or_else(|| {
                PostgresError("running as root and no unprivileged user (postgres, nobody) to run PostgreSQL as".into())
            })?;
        if let Some(p) = find_tool("setpriv") {
            return Ok(Self::Setpriv(p, user));
        }
        if let Some(p) = find_tool("runuser") {
            return Ok(Self::Runuser(p, user));
        }
        Err(PostgresError(
            "running as root and neither setpriv nor runuser is installed (util-linux)".into(),
        ))
    }

    fn command(&self, program: &Path) -> Command {
        match self {
            Self::Me => Command::new(program),
            Self::Setpriv(setpriv, user) => {
                let mut c = Command::new(setpriv);
                c.args(["--reuid", user, "--regid", user, "--init-groups", "--"])
                    .arg(program);
                c
            }
            Self::Runuser(runuser, user) => {
                let mut c = Command::new(runuser);
                c.args(["-u", user, "--"]).arg(program);
                c
            }
        }
    }

    fn user(&self) -> Option<&str> {
        match self {
            Self::Me => None,
            Self::Setpriv(_, u) | Self::Runuser(_, u) => Some(u),
        }
    }
}

fn free_port() -> Result<u16, PostgresError> {
    let l = TcpListener::bind("127.0.0.1:0")
        .map_err(|e| PostgresError(format!("no free port: {e}")))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| PostgresError(format!("no free port: {e}")))
}

/// A PostgreSQL server in a temporary directory on a free loopback port,
/// stopped (by its PID) when dropped.
///
/// ```no_run
/// use coditect_orchestrator::testing::PostgresServer;
/// let pg = PostgresServer::start().expect("postgres");
/// println!("{}", pg.connection_string());
/// ```
#[derive(Debug)]
pub struct PostgresServer {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
    pid: Option<u32>,
}

impl PostgresServer {
    /// Initialises a cluster and starts the server, waiting (bounded) until it
    /// accepts connections.
    ///
    /// # Errors
    /// [`PostgresError`] if the binaries are missing or the server does not
    /// start.
    pub fn start() -> Result<Self, PostgresError> {
        let bin = postgres_bin_dir()?;
        let run_as = RunAs::pick()?;
        let dir = tempfile::tempdir().map_err(|e| PostgresError(format!("no temp dir: {e}")))?;
        if let Some(user) = run_as.user() {
            let ok = Command::new("chown")
                .arg("-R")
                .arg(format!("{user}:"))
                .arg(dir.path())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if !ok {
                return Err(PostgresError(format!(
                    "cannot hand {} to {user}",
                    dir.path().display()
                )));
            }
        }
        let data = dir.path().join("data");
        let out = run_as
            .command(&bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                TEST_USER,
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| PostgresError(format!("cannot run initdb: {e}")))?;
        if !out.status.success() {
            return Err(PostgresError(format!(
                "initdb failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        let port = free_port()?;
        let log = dir.path().join("server.log");
        let log_file = std::fs::File::create(&log)
            .map_err(|e| PostgresError(format!("cannot create the log: {e}")))?;
        let log_err = log_file
            .try_clone()
            .map_err(|e| PostgresError(format!("cannot create the log: {e}")))?;
        let child = run_as
            .command(&bin.join("postgres"))
            .arg("-D")
            .arg(&data)
            .arg("-p")
            .arg(port.to_string())
            .arg("-k")
            .arg(dir.path())
            .args(["-h", "127.0.0.1", "-c", "max_connections=200"])
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(log_err)
            .spawn()
            .map_err(|e| PostgresError(format!("cannot start postgres: {e}")))?;
        let direct = !matches!(run_as, RunAs::Runuser(..));
        let mut server = Self {
            pid: direct.then(|| child.id()),
            dir,
            port,
            child: Some(child),
        };
        server.wait_ready(&data, &log, Duration::from_secs(60))?;
        Ok(server)
    }

    fn wait_ready(
        &mut self,
        data: &Path,
        log: &Path,
        limit: Duration,
    ) -> Result<(), PostgresError> {
        let start = Instant::now();
        let read_log = || {
            let mut s = String::new();
            if let Ok(mut f) = std::fs::File::open(log) {
                let _ = f.read_to_string(&mut s);
            }
            s
        };
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(PostgresError(format!(
                    "postgres exited ({status}):\n{}",
                    read_log()
                )));
            }
            if self.pid.is_none() {
                // Through runuser: the server's own PID is the pid file's first line.
                self.pid = std::fs::read_to_string(data.join("postmaster.pid"))
                    .ok()
                    .and_then(|s| s.lines().next().and_then(|l| l.trim().parse().ok()));
            }
            if read_log().contains("ready to accept connections")
                && std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
            {
                return Ok(());
            }
            if start.elapsed() > limit {
                return Err(PostgresError(format!(
                    "postgres did not get ready within {limit:?}:\n{}",
                    read_log()
                )));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// A libpq-style connection string for the server's `postgres` database.
    pub fn connection_string(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user={TEST_USER} dbname=postgres",
            self.port
        )
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's PID.
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// The directory holding its data, socket and log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // A fast shutdown (SIGINT) of this server's PID only, then SIGKILL if
        // it has not gone within a bound.
        if let Some(pid) = self.pid {
            let signal = |sig: &str| {
                let _ = Command::new("kill")
                    .args([sig, &pid.to_string()])
                    .stderr(Stdio::null())
                    .status();
            };
            signal("-INT");
            let start = Instant::now();
            loop {
                // A direct child stays a zombie until reaped: try_wait reaps it.
                let gone = if pid == child.id() {
                    matches!(child.try_wait(), Ok(Some(_)))
                } else {
                    !Path::new(&format!("/proc/{pid}")).exists()
                };
                if gone {
                    break;
                }
                if start.elapsed() > Duration::from_secs(10) {
                    signal("-KILL");
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        self.stop();
    }
}
