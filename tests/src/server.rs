//! [`ThrowawayServer`]: an independent PostgreSQL server in a temporary
//! directory, for the tests that need a second server, a standby, a server
//! with settings of its own, or one they may stop and start.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::tools::{as_server_user, is_root, pg_bin_dir};
use crate::{free_port, unique};

/// An independent PostgreSQL server: a fresh cluster in a temporary
/// directory (trust auth, loopback only, its unix socket in that directory),
/// on a free port, stopped and deleted on drop.
///
/// Runs the installed binaries (`/usr/lib/postgresql/*/bin`, see
/// [`pg_bin_dir`]) as the `postgres` user through `runuser` when this
/// process is root (initdb refuses to run as root).
#[derive(Debug)]
pub struct ThrowawayServer {
    dir: PathBuf,
    data: PathBuf,
    port: u16,
    bin: PathBuf,
    running: bool,
}

/// How long starting a throwaway server may take before the test fails.
const START_LIMIT: Duration = Duration::from_secs(60);

impl ThrowawayServer {
    /// Creates and starts a fresh cluster. Panics (failing the test) with the
    /// server's log if that does not work within a bounded time.
    pub fn start() -> ThrowawayServer {
        Self::start_with(&[])
    }

    /// Like [`ThrowawayServer::start`], with extra server settings on the
    /// command line (they override the defaults), e.g.
    /// `&["max_locks_per_transaction=10", "max_connections=10"]`. Kept for
    /// [`ThrowawayServer::start_again`].
    pub fn start_with(settings: &[&str]) -> ThrowawayServer {
        let mut server = Self::empty("primary");
        let data = server.data.display().to_string();
        server.run(
            "initdb",
            &[
                "-D",
                &data,
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
                "--no-instructions",
            ],
        );
        let extra: String = settings.iter().map(|s| format!(" -c {s}")).collect();
        std::fs::write(server.dir.join("extra-settings"), &extra)
            .expect("cannot write the extra settings");
        server.launch();
        server
    }

    /// A hot standby of `primary`, made with `pg_basebackup -R` and started
    /// on its own port. Returns once it accepts connections.
    pub fn standby_of(primary: &ThrowawayServer) -> ThrowawayServer {
        let mut server = Self::empty("standby");
        let data = server.data.display().to_string();
        let port = primary.port.to_string();
        server.run(
            "pg_basebackup",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "postgres",
                "-D",
                &data,
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
                "--no-sync",
            ],
        );
        server.launch();
        server
    }

    fn empty(what: &str) -> ThrowawayServer {
        let bin = pg_bin_dir();
        let dir = std::env::temp_dir().join(unique(&format!("advisory-locked-{what}")));
        std::fs::create_dir_all(&dir).expect("cannot create the server's temp dir");
        if is_root() {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status()
                .expect("cannot run chown");
            assert!(status.success(), "chown of {} failed", dir.display());
        }
        let data = dir.join("data");
        ThrowawayServer {
            dir,
            data,
            port: free_port(),
            bin,
            running: false,
        }
    }

    /// Runs one of the server's binaries as the server's user; panics with
    /// its output if it fails.
    fn run(&self, tool: &str, args: &[&str]) {
        let exe = self.bin.join(tool);
        let out = as_server_user(&exe)
            .args(args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", exe.display()));
        assert!(
            out.status.success(),
            "{tool} failed ({}):\n{}\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
    }

    /// Stops the server (`pg_ctl stop -m <mode>`: `smart`, `fast` or
    /// `immediate`) and waits until it is down. Blocking.
    pub fn stop(&mut self, mode: &str) {
        let data = self.data.display().to_string();
        self.run(
            "pg_ctl",
            &["-D", &data, "-m", mode, "-w", "-t", "30", "stop"],
        );
        self.running = false;
    }

    /// Starts a stopped server again, same data, port and settings, and
    /// waits until it accepts TCP connections. Blocking.
    pub fn start_again(&mut self) {
        assert!(!self.running, "the server is running");
        self.launch();
    }

    fn launch(&mut self) {
        let extra = std::fs::read_to_string(self.dir.join("extra-settings")).unwrap_or_default();
        let data = self.data.display().to_string();
        let log = self.dir.join("server.log").display().to_string();
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=40 -c shared_buffers=16MB{extra}",
            self.port,
            self.dir.display()
        );
        let timeout = START_LIMIT.as_secs().to_string();
        self.running = true;
        self.run(
            "pg_ctl",
            &[
                "-D", &data, "-l", &log, "-o", &opts, "-w", "-t", &timeout, "start",
            ],
        );
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                start.elapsed() < START_LIMIT,
                "server did not listen:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The server's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A connection URL for database `db` as user `postgres`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// The server's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// The cluster's data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// The directory of the server's Unix-domain socket (`-k`).
    pub fn socket_dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for ThrowawayServer {
    fn drop(&mut self) {
        if self.running {
            let _ = as_server_user(&self.bin.join("pg_ctl"))
                .args(["-D"])
                .arg(&self.data)
                .args(["-m", "immediate", "-w", "-t", "30", "stop"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
