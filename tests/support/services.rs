//! Real PostgreSQL and Redis servers for the cluster tests: each test starts its own on a
//! free port in a temp dir, so it can kill and restart them. When the binaries are
//! missing, `start` returns `None` after saying why (the test then skips); under CI
//! (`EPICENTER_CI` set) it panics instead, since `.ci/run` installs them.
//!
//! PostgreSQL refuses to run as root: as root, `initdb` and `postgres` run as the
//! `postgres` user (`runuser`), in a directory handed to that user.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 (bound and released; another process may take it first,
/// which the caller sees as a start failure).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn missing(what: &str) -> Option<()> {
    if std::env::var_os("EPICENTER_CI").is_some() {
        panic!("{what} is not installed; .ci/run installs it");
    }
    eprintln!("skipped: {what} is not installed (apt-get install -y postgresql redis-server)");
    None
}

fn find_pg_bin(name: &str) -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join(name)).collect())
        .unwrap_or_default();
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut versions: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        versions.sort();
        candidates.extend(versions.into_iter().rev().map(|v| v.join("bin").join(name)));
    }
    candidates.into_iter().find(|p| p.is_file())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A command run as the `postgres` user when this process is root.
fn pg_command(bin: &Path, as_postgres: bool) -> Command {
    if as_postgres {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin);
        c
    } else {
        Command::new(bin)
    }
}

fn wait_for_port(port: u16, child: &mut Child, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited at start: {status}");
        }
        assert!(Instant::now() < deadline, "{what} did not listen in time");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A PostgreSQL server of its own.
pub struct Postgres {
    dir: tempfile::TempDir,
    data: PathBuf,
    postgres: PathBuf,
    pg_ctl: PathBuf,
    pg_isready: PathBuf,
    as_postgres: bool,
    pub port: u16,
    child: Option<Child>,
}

impl Postgres {
    /// Initializes a cluster in a temp dir and starts it, or `None` when PostgreSQL is
    /// not installed (see the module docs).
    pub fn start() -> Option<Postgres> {
        let bins = (
            find_pg_bin("initdb"),
            find_pg_bin("postgres"),
            find_pg_bin("pg_ctl"),
            find_pg_bin("pg_isready"),
        );
        let (Some(initdb), Some(postgres), Some(pg_ctl), Some(pg_isready)) = bins else {
            missing("PostgreSQL")?;
            return None;
        };
        let as_postgres = is_root();
        let dir = tempfile::tempdir().expect("a temp dir");
        if as_postgres {
            let status = Command::new("chown")
                .args(["postgres:"])
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(status.success(), "cannot hand the temp dir to postgres");
        }
        let data = dir.path().join("data");
        let out = pg_command(&initdb, as_postgres)
            .arg("-D")
            .arg(&data)
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"])
            .output()
            .expect("initdb runs");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut pg = Postgres {
            dir,
            data,
            postgres,
            pg_ctl,
            pg_isready,
            as_postgres,
            port: free_port(),
            child: None,
        };
        pg.run();
        Some(pg)
    }

    fn run(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("log")).expect("log file");
        let mut child = pg_command(&self.postgres, self.as_postgres)
            .arg("-D")
            .arg(&self.data)
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-k")
            .arg(self.dir.path())
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "max_connections=200",
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("postgres starts");
        // Listening is not enough: it refuses connections while it starts up.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default();
                panic!("postgres exited at start: {status}\n{log}");
            }
            let ready = Command::new(&self.pg_isready)
                .args(["-q", "-h", "127.0.0.1", "-p"])
                .arg(self.port.to_string())
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                break;
            }
            assert!(Instant::now() < deadline, "postgres did not start in time");
            std::thread::sleep(Duration::from_millis(50));
        }
        self.child = Some(child);
    }

    /// A connection string for `tokio-postgres`.
    pub fn url(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            self.port
        )
    }

    /// Stops the server at once, as a crash would (`pg_ctl stop -m immediate`: no
    /// checkpoint; the next start recovers from the WAL).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = pg_command(&self.pg_ctl, self.as_postgres)
                .arg("-D")
                .arg(&self.data)
                .args(["stop", "-m", "immediate", "-w"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `kill` then start again on the same port and data (crash recovery).
    pub fn restart(&mut self) {
        self.kill();
        self.run();
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A Redis server of its own, persisting nothing.
pub struct Redis {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
    child: Option<Child>,
}

impl Redis {
    /// Starts `redis-server`, or `None` when it is not installed.
    pub fn start() -> Option<Redis> {
        let Some(bin) = std::env::var_os("PATH").and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("redis-server"))
                .find(|p| p.is_file())
        }) else {
            missing("redis-server")?;
            return None;
        };
        let mut redis = Redis {
            dir: tempfile::tempdir().expect("a temp dir"),
            bin,
            port: free_port(),
            child: None,
        };
        redis.run();
        Some(redis)
    }

    fn run(&mut self) {
        let mut child = Command::new(&self.bin)
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--port")
            .arg(self.port.to_string())
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        wait_for_port(self.port, &mut child, "redis-server");
        self.child = Some(child);
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Stops the server losing everything it held (as `SHUTDOWN NOSAVE` does).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `kill`, then start again, empty, on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.run();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}
