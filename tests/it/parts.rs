//! The real parts of cluster mode's tests: Redis 7 and PostgreSQL 15 from Debian, started on
//! free loopback ports in temporary folders, stopped (by their own process id) when dropped.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::{free_port, wait_until};

/// A `redis-server` with AOF on (`appendfsync always`: nothing acknowledged is lost when it
/// is stopped), in its own folder.
pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
    /// Set: clients must send it (`requirepass`).
    pub password: Option<String>,
    /// Set: TLS only, with a certificate for 127.0.0.1 signed by this CA (a PEM file).
    pub ca: Option<PathBuf>,
}

impl Redis {
    pub async fn start() -> Redis {
        Self::start_with(None, false).await
    }

    /// With a password, and with TLS (a CA and a server certificate made with `openssl`).
    pub async fn start_with(password: Option<&str>, tls: bool) -> Redis {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = tls.then(|| make_certificates(dir.path()));
        let mut r = Redis {
            child: None,
            port: free_port(),
            dir,
            password: password.map(str::to_string),
            ca,
        };
        r.spawn().await;
        r
    }

    pub fn url(&self) -> String {
        let scheme = if self.ca.is_some() { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}/0", self.port)
    }

    async fn spawn(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("redis.log")).expect("log");
        let port = self.port.to_string();
        let mut cmd = Command::new("redis-server");
        match &self.ca {
            Some(ca) => {
                let d = self.dir.path();
                cmd.args([
                    "--port",
                    "0",
                    "--tls-port",
                    &port,
                    "--tls-auth-clients",
                    "no",
                ])
                .arg("--tls-cert-file")
                .arg(d.join("server.pem"))
                .arg("--tls-key-file")
                .arg(d.join("server.key"))
                .arg("--tls-ca-cert-file")
                .arg(ca);
            }
            None => {
                cmd.args(["--port", &port]);
            }
        }
        if let Some(p) = &self.password {
            cmd.args(["--requirepass", p]);
        }
        let child = cmd
            .args(["--bind", "127.0.0.1"])
            .args(["--dir", &self.dir.path().display().to_string()])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .args(["--protected-mode", "no", "--daemonize", "no"])
            .stdout(Stdio::from(log))
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts (scripts/install-test-deps installs it)");

        self.child = Some(child);
        let addr = format!("127.0.0.1:{}", self.port);
        let up = wait_until(Duration::from_secs(20), || async {
            tokio::net::TcpStream::connect(&addr).await.is_ok()
        })
        .await;
        assert!(up, "redis-server did not listen on {addr}");
    }

    /// Stops it (SIGTERM: as an operator or Kubernetes would) and waits for the exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and folder (its AOF read back).
    pub async fn start_again(&mut self) {
        self.stop();
        self.spawn().await;
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A CA and a certificate for 127.0.0.1 signed by it, in `dir`; the CA's PEM file.
fn make_certificates(dir: &Path) -> PathBuf {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl runs");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let subject = |cn: &str| format!("/CN={cn}");
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        &subject("flaghook test CA"),
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        &subject("127.0.0.1"),
    ]);
    std::fs::write(dir.join("ext"), "subjectAltName=IP:127.0.0.1\n").expect("ext");
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "ext",
    ]);
    dir.join("ca.pem")
}

/// PostgreSQL 15's programs: Debian keeps them outside `PATH`.
fn pg_bin(name: &str) -> PathBuf {
    let debian = Path::new("/usr/lib/postgresql/15/bin").join(name);
    if debian.exists() {
        debian
    } else {
        PathBuf::from(name)
    }
}

/// A PostgreSQL cluster made with `initdb` in a temporary folder, serving on a free loopback
/// port (as the `postgres` user when the tests run as root: PostgreSQL refuses root).
pub struct Postgres {
    pub port: u16,
    dir: tempfile::TempDir,
    as_user: Option<String>,
}

impl Postgres {
    pub fn start() -> Postgres {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false);
        let as_user = root.then(|| "postgres".to_string());
        if as_user.is_some() {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            assert!(
                ok,
                "chown to the postgres user (installed with postgresql-15)"
            );
        }
        let pg = Postgres {
            port: free_port(),
            dir,
            as_user,
        };
        let data = pg.dir.path().join("data");
        pg.run(
            Command::new(pg_bin("initdb")).arg("-D").arg(&data).args([
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
                "-E",
                "UTF8",
            ]),
            "initdb",
        );
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
            pg.port,
            pg.dir.path().display()
        );
        pg.run(
            Command::new(pg_bin("pg_ctl"))
                .arg("-D")
                .arg(&data)
                .args(["-o", &opts, "-l"])
                .arg(pg.dir.path().join("pg.log"))
                .args(["-w", "-t", "60", "start"]),
            "pg_ctl start",
        );
        pg
    }

    /// `cmd` as the `postgres` user when needed.
    fn as_owner(&self, cmd: &Command) -> Command {
        let mut real = match &self.as_user {
            Some(u) => {
                let mut c = Command::new("runuser");
                c.args(["-u", u, "--"]).arg(cmd.get_program());
                c
            }
            None => Command::new(cmd.get_program()),
        };
        real.args(cmd.get_args());
        real
    }

    /// Runs a PostgreSQL program, as the `postgres` user when needed.
    fn run(&self, cmd: &mut Command, what: &str) {
        let out = self
            .as_owner(cmd)
            .output()
            .unwrap_or_else(|e| panic!("{what}: {e}"));

        assert!(
            out.status.success(),
            "{what} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Flagr's settings for this database.
    pub fn flagr_env(&self) -> [(&'static str, String); 2] {
        [
            ("FLAGR_DB_DBDRIVER", "postgres".to_string()),
            (
                "FLAGR_DB_DBCONNECTIONSTR",
                format!(
                    "host=127.0.0.1 port={} user=postgres dbname=postgres sslmode=disable",
                    self.port
                ),
            ),
        ]
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let mut cmd = Command::new(pg_bin("pg_ctl"));
        cmd.arg("-D").arg(&data).args(["-m", "immediate", "stop"]);
        let _ = self.as_owner(&cmd).output();
    }
}
