//! [`Pgbouncer`]: a real pgbouncer in front of the test server, for
//! tests/tests/pgbouncer.rs.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::tools::{as_server_user, pgbouncer, run_checked, ServerReadableDir};
use crate::{db_url, free_port};

/// A real pgbouncer (the Debian package's `/usr/sbin/pgbouncer`, or
/// `PGBOUNCER`, see [`crate::tools::pgbouncer`]) in front of the test server
/// ([`db_url`]), on a free port of 127.0.0.1, with `auth_type = trust`;
/// killed on drop. Started as `postgres` through `runuser` when this process
/// is root (pgbouncer refuses to run as root).
#[derive(Debug)]
pub struct Pgbouncer {
    dir: ServerReadableDir,
    port: u16,
    db: String,
    user: String,
}

/// Where the proxy sends its clients: the test server's address and login.
struct Backend {
    host: String,
    port: u16,
    user: String,
    db: String,
    /// ` password='...'`, or empty.
    password: String,
}

impl Backend {
    fn of_test_server() -> Backend {
        use tokio_postgres::config::Host;
        let backend: tokio_postgres::Config = db_url().parse().expect("DATABASE_URL");
        let host = match backend.get_hosts().first() {
            Some(Host::Tcp(h)) => h.clone(),
            Some(Host::Unix(p)) => p.display().to_string(),
            None => "127.0.0.1".to_owned(),
        };
        let user = backend.get_user().unwrap_or("postgres").to_owned();
        let db = backend.get_dbname().unwrap_or(&user).to_owned();
        let password = match backend.get_password() {
            Some(p) => format!(
                " password='{}'",
                String::from_utf8_lossy(p).replace('\'', "\\'")
            ),
            None => String::new(),
        };
        Backend {
            host,
            port: backend.get_ports().first().copied().unwrap_or(5432),
            user,
            db,
            password,
        }
    }
}

/// Writes `pgbouncer.ini` and `userlist.txt` into `dir` (mode 0600, owned
/// by the server's user).
fn write_config(dir: &ServerReadableDir, b: &Backend, port: u16, settings: &[&str]) {
    let d = dir.path.display();
    let ini = format!(
        "[databases]\n\
         {db} = host={host} port={backend_port} dbname={db} user={user}{password}\n\
         [pgbouncer]\n\
         listen_addr = 127.0.0.1\n\
         listen_port = {port}\n\
         unix_socket_dir =\n\
         auth_type = trust\n\
         auth_file = {d}/userlist.txt\n\
         logfile = {d}/pgbouncer.log\n\
         pidfile = {d}/pgbouncer.pid\n\
         max_client_conn = 200\n\
         admin_users = {user}\n\
         ignore_startup_parameters = extra_float_digits\n\
         {}\n",
        settings.join("\n"),
        db = b.db,
        host = b.host,
        backend_port = b.port,
        user = b.user,
        password = b.password,
    );
    std::fs::write(dir.path.join("pgbouncer.ini"), ini).expect("cannot write pgbouncer.ini");
    std::fs::write(
        dir.path.join("userlist.txt"),
        format!("\"{}\" \"\"\n", b.user),
    )
    .expect("cannot write userlist.txt");
    run_checked(Path::new("chmod"), &["600", "pgbouncer.ini"], &dir.path);
    dir.hand_over();
}

impl Pgbouncer {
    /// Starts one whose `[pgbouncer]` section ends with `settings` (e.g.
    /// `"pool_mode = transaction"`, `"default_pool_size = 1"`), and waits
    /// (at most 20 s) until it listens. Panics with its log if it does not,
    /// and with how to install it if pgbouncer is missing.
    pub fn start(settings: &[&str]) -> Pgbouncer {
        let exe = pgbouncer();
        let backend = Backend::of_test_server();
        let dir = ServerReadableDir::create("advisory-locked-pgbouncer");
        let port = free_port();
        write_config(&dir, &backend, port, settings);
        // Daemonized (-d): the command returns once it has forked; its own
        // messages go to the log file. Its output goes to a file, so that
        // the daemon holds no pipe of ours.
        let stderr = std::fs::File::create(dir.path.join("start.err")).expect("start.err");
        let status = as_server_user(&exe)
            .arg("-d")
            .arg(dir.path.join("pgbouncer.ini"))
            .current_dir(&dir.path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .status()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", exe.display()));
        let bouncer = Pgbouncer {
            dir,
            port,
            db: backend.db,
            user: backend.user,
        };
        assert!(
            status.success(),
            "{} failed to start ({status}):\n{}",
            exe.display(),
            bouncer.log()
        );
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "pgbouncer did not listen:\n{}",
                bouncer.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        bouncer
    }

    /// A connection URL through the proxy (no password: `auth_type = trust`).
    pub fn url(&self) -> String {
        format!(
            "postgres://{}@127.0.0.1:{}/{}",
            self.user, self.port, self.db
        )
    }

    /// The clients connected to its databases now (its admin console's
    /// `SHOW CLIENTS`, without the console's own connection).
    pub async fn clients(&self) -> usize {
        let console = crate::raw_connect(&format!(
            "postgres://{}@127.0.0.1:{}/pgbouncer",
            self.user, self.port
        ))
        .await;
        let rows = console
            .simple_query("SHOW CLIENTS")
            .await
            .expect("SHOW CLIENTS");
        rows.iter()
            .filter(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => {
                    r.try_get("database").ok().flatten() != Some("pgbouncer")
                }
                _ => false,
            })
            .count()
    }

    /// Its log and start-up errors so far (for failure messages).
    pub fn log(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.dir.path.join(f)).unwrap_or_default();
        format!("{}{}", read("start.err"), read("pgbouncer.log"))
    }
}

impl Drop for Pgbouncer {
    fn drop(&mut self) {
        // SIGKILL: immediate in every version; the backends it held see
        // their sockets close and end, freeing their locks.
        let pid = std::fs::read_to_string(self.dir.path.join("pgbouncer.pid")).unwrap_or_default();
        let pid = pid.trim();
        if pid.is_empty() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-KILL", pid])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        // Gone, or a zombie (a daemon's parent may never reap it).
        let stat = Path::new("/proc").join(pid).join("stat");
        let alive = || {
            std::fs::read_to_string(&stat)
                .map(|s| {
                    s.rsplit(')')
                        .next()
                        .map(str::trim_start)
                        .is_some_and(|s| !s.starts_with('Z'))
                })
                .unwrap_or(false)
        };
        let start = Instant::now();
        while alive() && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
