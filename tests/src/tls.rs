//! TLS for tests/tests/tls.rs: certificates made with the `openssl` command
//! line, and a throwaway server that accepts only TLS on TCP.

use std::path::{Path, PathBuf};

use tokio_postgres::Client;

use crate::tools::{openssl, run_checked, ServerReadableDir};
use crate::{raw_connect, ThrowawayServer};

/// Certificates made for one test with the `openssl` command line (P-256
/// keys, valid for two days), in a directory the server can read, private
/// keys mode 0600:
///
/// - `ca.crt`: a throwaway certificate authority, which signed
/// - `server.crt` / `server.key`: a server certificate for `127.0.0.1` and `localhost`;
/// - `self.crt` / `self.key`: a self-signed server certificate (not a CA) for the same names;
/// - `other-ca.crt`: another authority, which signed nothing here.
#[derive(Debug)]
pub struct TestCertificates {
    dir: ServerReadableDir,
}

/// The extensions of a server certificate, and the `openssl req` settings
/// that make a self-signed one.
const LEAF_CNF: &str = "[req]\n\
distinguished_name = dn\n\
x509_extensions = leaf\n\
prompt = no\n\
[dn]\n\
CN = 127.0.0.1\n\
[leaf]\n\
subjectAltName = IP:127.0.0.1,DNS:localhost\n\
basicConstraints = critical,CA:FALSE\n\
keyUsage = critical,digitalSignature\n\
extendedKeyUsage = serverAuth\n";

/// `openssl req` arguments for a new P-256 key, unencrypted.
const NEW_KEY: [&str; 5] = [
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
];

/// Runs `openssl` with `args` in `dir`; panics if it fails.
fn openssl_in(dir: &Path, args: &[&str]) {
    run_checked(&openssl(), args, dir);
}

impl TestCertificates {
    /// Makes them; panics if `openssl` is missing (saying how to get it) or fails.
    pub fn make() -> TestCertificates {
        let dir = ServerReadableDir::create("advisory-locked-certs");
        let d = &dir.path;
        std::fs::write(d.join("leaf.cnf"), LEAF_CNF).expect("cannot write leaf.cnf");
        for (name, cn) in [
            ("ca", "advisory-locked test CA"),
            ("other-ca", "another CA"),
        ] {
            let (keyout, out, subj) = (
                format!("{name}.key"),
                format!("{name}.crt"),
                format!("/CN={cn}"),
            );
            let mut args = vec!["req", "-x509"];
            args.extend(NEW_KEY);
            args.extend([
                "-keyout", &keyout, "-out", &out, "-days", "2", "-subj", &subj,
            ]);
            openssl_in(d, &args);
        }
        Self::signed_server_certificate(d);
        let mut args = vec!["req", "-x509", "-config", "leaf.cnf"];
        args.extend(NEW_KEY);
        args.extend(["-keyout", "self.key", "-out", "self.crt", "-days", "2"]);
        openssl_in(d, &args);
        for k in ["ca.key", "other-ca.key", "server.key", "self.key"] {
            run_checked(Path::new("chmod"), &["600", k], d);
        }
        dir.hand_over();
        TestCertificates { dir }
    }

    /// `server.key`, and `server.crt` signed by `ca.crt`.
    fn signed_server_certificate(d: &Path) {
        let mut args = vec!["req", "-new"];
        args.extend(NEW_KEY);
        args.extend([
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ]);
        openssl_in(d, &args);
        openssl_in(
            d,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "server.crt",
                "-days",
                "2",
                "-extfile",
                "leaf.cnf",
                "-extensions",
                "leaf",
            ],
        );
    }

    /// The path of one of the files (`"server.crt"`, `"server.key"`, ...).
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path.join(file)
    }

    /// The PEM text of one of the files.
    pub fn pem(&self, file: &str) -> Vec<u8> {
        std::fs::read(self.path(file)).unwrap_or_else(|e| panic!("cannot read {file}: {e}"))
    }
}

/// A PostgreSQL server (a [`ThrowawayServer`]) that accepts only TLS on TCP:
/// `ssl = on` with `cert` / `key` of `certs` (e.g. `"server.crt"`,
/// `"server.key"`), and a `pg_hba.conf` of its own: trust over TLS from
/// 127.0.0.1, reject without TLS, trust on its unix socket.
#[derive(Debug)]
pub struct TlsServer {
    /// The server (its unix socket is in the parent of its data directory).
    pub server: ThrowawayServer,
    _hba: ServerReadableDir,
}

impl TlsServer {
    /// Starts it; panics with the server's log if that fails.
    pub fn start(certs: &TestCertificates, cert: &str, key: &str) -> TlsServer {
        let hba = ServerReadableDir::create("advisory-locked-hba");
        std::fs::write(
            hba.path.join("pg_hba.conf"),
            "local all all trust\n\
             hostssl all all 127.0.0.1/32 trust\n\
             hostnossl all all 127.0.0.1/32 reject\n",
        )
        .expect("cannot write pg_hba.conf");
        hba.hand_over();
        let settings = [
            "ssl=on".to_owned(),
            format!("ssl_cert_file={}", certs.path(cert).display()),
            format!("ssl_key_file={}", certs.path(key).display()),
            format!("hba_file={}", hba.path.join("pg_hba.conf").display()),
        ];
        let settings: Vec<&str> = settings.iter().map(String::as_str).collect();
        let server = ThrowawayServer::start_with(&settings);
        TlsServer { server, _hba: hba }
    }

    /// A URL for database `postgres` as `postgres` over TCP, with `params`
    /// (e.g. `"sslmode=require"`, or `""`).
    pub fn url(&self, params: &str) -> String {
        let url = self.server.url("postgres");
        if params.is_empty() {
            url
        } else {
            format!("{url}?{params}")
        }
    }

    /// A plain connection over the server's unix socket (no TLS needed).
    pub async fn local_client(&self) -> Client {
        let socket_dir = self
            .server
            .data_dir()
            .parent()
            .expect("the data dir has a parent")
            .display()
            .to_string();
        raw_connect(&format!(
            "host={socket_dir} port={} user=postgres dbname=postgres",
            self.server.port()
        ))
        .await
    }
}
