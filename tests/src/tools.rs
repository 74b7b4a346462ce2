//! The programs the tests run besides the server under test (PostgreSQL's
//! own binaries, `pgbouncer`, `openssl`, `runuser`), found once, with a
//! failure that says which one is missing and how to get it.
//!
//! `scripts/test` installs all of them on Debian or Ubuntu; see
//! [`missing`] for the message a test prints when one is absent.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Why a test could not run: `tool` is not installed. Names the Debian
/// package to install, and `scripts/test`, which installs everything.
pub fn missing(tool: &str, package: &str, looked: &str) -> String {
    format!(
        "{tool} is not installed (looked {looked}): install it with \
         `apt-get install {package}`, or run the tests with scripts/test, \
         which installs and starts what they need"
    )
}

/// An executable file at `path`?
fn executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// `name` in a directory of `PATH`, as an absolute path.
pub fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_absolute() && executable(p))
}

/// A tool: the file named by the environment variable `env` if set, else
/// the first executable of `places`, else `name` on `PATH`. Panics (failing
/// the test) with [`missing`]'s message naming `package` if none exists.
pub fn locate(name: &str, env: &str, places: &[&str], package: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env).filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        assert!(
            executable(&p),
            "{env}={} is not an executable file",
            p.display()
        );
        return p;
    }
    places
        .iter()
        .map(PathBuf::from)
        .find(|p| executable(p))
        .or_else(|| on_path(name))
        .unwrap_or_else(|| {
            let mut looked = format!("in ${env}");
            for p in places {
                looked.push_str(&format!(", {p}"));
            }
            looked.push_str(" and on PATH");
            panic!("{}", missing(name, package, &looked))
        })
}

/// `pgbouncer` (`PGBOUNCER`, else the Debian package's `/usr/sbin/pgbouncer`).
pub fn pgbouncer() -> PathBuf {
    locate(
        "pgbouncer",
        "PGBOUNCER",
        &["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"],
        "pgbouncer",
    )
}

/// The `openssl` command line (`OPENSSL`, else on `PATH`).
pub fn openssl() -> PathBuf {
    locate("openssl", "OPENSSL", &["/usr/bin/openssl"], "openssl")
}

/// The newest `/usr/lib/postgresql/<version>/bin` that has `initdb` (or
/// `PG_BIN_DIR`).
pub fn pg_bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PG_BIN_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let not_found = || {
        missing(
            "the PostgreSQL server (initdb, pg_ctl)",
            "postgresql",
            "for /usr/lib/postgresql/*/bin/initdb; set PG_BIN_DIR to use another place",
        )
    };
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .unwrap_or_else(|_| panic!("{}", not_found()))
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            executable(&bin.join("initdb")).then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .unwrap_or_else(|| panic!("{}", not_found()))
}

/// Whether this process runs as root (then the server's tools, which refuse
/// root, run as `postgres` through `runuser`).
pub fn is_root() -> bool {
    // No libc dependency: ask `id -u`.
    static ROOT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ROOT.get_or_init(|| {
        Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false)
    })
}

/// A command that runs `exe` as the server's user: through
/// `runuser -u postgres --` when this process is root, else directly.
pub fn as_server_user(exe: &Path) -> Command {
    if !is_root() {
        return Command::new(exe);
    }
    let runuser = locate("runuser", "RUNUSER", &["/usr/sbin/runuser"], "util-linux");
    let known = Command::new("id")
        .arg("postgres")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        known,
        "{}",
        missing(
            "the postgres user",
            "postgresql",
            "with `id postgres`; the server package creates it"
        )
    );
    let mut c = Command::new(runuser);
    c.args(["-u", "postgres", "--"]).arg(exe);
    c
}

/// Runs `exe` with `args` in `dir`; panics with its output if it fails.
pub fn run_checked(exe: &Path, args: &[&str], dir: &Path) {
    let out = Command::new(exe)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", exe.display()));
    assert!(
        out.status.success(),
        "{} {args:?} failed ({}):\n{}\n{}",
        exe.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A temporary directory that the server's user can read (owned by
/// `postgres` when this process is root), deleted on drop.
#[derive(Debug)]
pub struct ServerReadableDir {
    /// Its path.
    pub path: PathBuf,
}

impl ServerReadableDir {
    /// Creates `{temp}/{prefix}-{pid}-{n}`.
    pub fn create(prefix: &str) -> ServerReadableDir {
        let path = std::env::temp_dir().join(crate::unique(prefix));
        std::fs::create_dir_all(&path).expect("cannot create a temp dir");
        ServerReadableDir { path }
    }

    /// Gives everything in it to `postgres` (when root); a no-op otherwise.
    pub fn hand_over(&self) {
        if is_root() {
            run_checked(
                Path::new("chown"),
                &["-R", "postgres:postgres", &self.path.display().to_string()],
                &self.path,
            );
        }
    }
}

impl Drop for ServerReadableDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
