//! Real PostgreSQL servers for tests: a primary made with `initdb` and streaming standbys
//! made with `pg_basebackup -R`, each a child process on a free loopback port with its own
//! data directory in a temporary directory, stopped by PID on drop.
//!
//! The binaries come from the newest `/usr/lib/postgresql/<version>/bin` (Debian's layout).
//! PostgreSQL refuses to run as root, so when the tests run as root the servers and their
//! tools run as the `postgres` user (set on the child, no wrapper process in between, so the
//! PID we hold is the server's). The superuser `postgres` has a random password (SCRAM),
//! kept in a file that the witnesses read as the hooks' password reference.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Where Debian installs each major version's server binaries.
const VERSIONS_DIR: &str = "/usr/lib/postgresql";
/// The programs the tests need from that directory.
const PROGRAMS: [&str; 5] = ["initdb", "postgres", "pg_basebackup", "pg_ctl", "psql"];
/// How long a server may take to accept sessions after it is started (a standby replays
/// what it received first). Well under a few seconds here; the margin is for a loaded CI.
const READY_DEADLINE: Duration = Duration::from_secs(60);
/// How long a fast shutdown may take before the server is killed.
const STOP_DEADLINE: Duration = Duration::from_secs(30);
/// Attempts with a fresh port when a server cannot start (a port taken between our probe
/// and the server's bind).
const START_ATTEMPTS: usize = 3;
/// Upper bound on one client or tool invocation (`psql`, `initdb`, `pg_basebackup`).
const TOOL_DEADLINE: Duration = Duration::from_secs(120);
/// Statement timeout of the test's own queries, so a stuck query cannot hang a test.
const STATEMENT_TIMEOUT_MS: u64 = 20_000;

/// The newest installed version's bin directory that has every program in [`PROGRAMS`]
/// (the same search `arbiter demo --postgres` does).
pub fn bin_dir() -> Option<PathBuf> {
    arbiter::demo::postgres::bin_dir_with(&PROGRAMS)
}

/// Whether the tests can run here. Missing binaries skip a test with a clear message on a
/// developer machine; under CI (`CI` set) they fail it, so a broken `.ci/run` cannot pass
/// by skipping everything.
pub fn available() -> bool {
    if bin_dir().is_some() {
        return true;
    }
    let hint = "install them with `apt-get install -y postgresql`";
    if std::env::var_os("CI").is_some() {
        panic!("CI is set but no PostgreSQL server binaries ({PROGRAMS:?}) were found under {VERSIONS_DIR}; {hint}");
    }
    eprintln!("SKIPPED: no PostgreSQL server binaries under {VERSIONS_DIR}; {hint}");
    false
}

/// The uid and gid the servers run as: `postgres` when we are root, ourselves otherwise.
fn server_user() -> Option<(u32, u32)> {
    arbiter::demo::postgres::server_user().unwrap_or_else(|e| panic!("{e}"))
}

/// A loopback port free right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs `command` to completion, bounded by [`TOOL_DEADLINE`].
fn output(mut command: Command, what: &str) -> Output {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    // Pipes are read after exit: the tools print little, far less than a pipe buffer.
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if start.elapsed() > TOOL_DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} still running after {TOOL_DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A directory of PostgreSQL servers that share the binaries, the superuser password and a
/// base directory the server user owns.
pub struct PgEnv {
    /// Kept for its lifetime: removed (with every data directory) when the env is dropped,
    /// after the servers, which must be dropped first.
    pub dir: tempfile::TempDir,
    pub bin: PathBuf,
    /// The superuser's password and the file holding it (readable by the witnesses).
    pub password: String,
    pub password_file: PathBuf,
    user: Option<(u32, u32)>,
}

impl PgEnv {
    pub fn new() -> PgEnv {
        let bin = bin_dir().expect("checked by available()");
        let dir = tempfile::tempdir().unwrap();
        let user = server_user();
        // The server user must be able to reach its data directories below the tempdir.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let password = format!("pw-{:016x}", rand::random::<u64>());
        let password_file = dir.path().join("postgres.password");
        std::fs::write(&password_file, format!("{password}\n")).unwrap();
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
            std::os::unix::fs::chown(&password_file, Some(uid), Some(gid)).unwrap();
        }
        std::fs::set_permissions(&password_file, std::fs::Permissions::from_mode(0o600)).unwrap();
        PgEnv {
            dir,
            bin,
            password,
            password_file,
            user,
        }
    }

    /// A command for one of the binaries, run as the server user.
    fn tool(&self, program: &str) -> Command {
        let mut command = Command::new(self.bin.join(program));
        command
            .current_dir(self.dir.path())
            .env("HOME", self.dir.path())
            .env_remove("PGPASSWORD")
            .env("LC_ALL", "C");
        if let Some((uid, gid)) = self.user {
            command.uid(uid).gid(gid);
        }
        command
    }

    fn run_tool(&self, command: Command, what: &str) {
        let out = output(command, what);
        assert!(
            out.status.success(),
            "{what} failed with {}:\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Makes `pg` accept TCP sessions over TLS only, with `cert` and `key` as its server
    /// certificate (copied into its data directory, owned by the server user, key 0600).
    pub fn require_tls(&self, pg: &Postgres, cert: &Path, key: &Path) {
        for (from, name, mode) in [(cert, "server.crt", 0o644), (key, "server.key", 0o600)] {
            let to = pg.data.join(name);
            std::fs::copy(from, &to).unwrap();
            if let Some((uid, gid)) = self.user {
                std::os::unix::fs::chown(&to, Some(uid), Some(gid)).unwrap();
            }
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        let hba = pg.data.join("pg_hba.conf");
        std::fs::write(
            &hba,
            "hostssl all all 127.0.0.1/32 scram-sha-256\n\
             hostssl replication all 127.0.0.1/32 scram-sha-256\n\
             host all all 127.0.0.1/32 reject\n",
        )
        .unwrap();
        pg.sql("ALTER SYSTEM SET ssl = on");
        pg.sql("SELECT pg_reload_conf()");
        let deadline = Instant::now() + READY_DEADLINE;
        while pg.sql("SHOW ssl") != "on" {
            assert!(Instant::now() < deadline, "{} did not turn TLS on", pg.name);
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs `pg_ctl stop -D <data> ARGS` for `pg` as the server user; whether it exited 0,
    /// how long it took, and what it printed.
    pub fn pg_ctl_stop(&self, pg: &Postgres, args: &[&str]) -> (bool, Duration, String) {
        let mut command = self.tool("pg_ctl");
        command.arg("stop").arg("-D").arg(&pg.data).args(args);
        let start = Instant::now();
        let out = output(command, "pg_ctl stop");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), start.elapsed(), text)
    }

    fn data_dir(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A new primary named `name` (its data directory and log use the name).
    pub fn primary(&self, name: &str) -> Postgres {
        let data = self.data_dir(name);
        let mut initdb = self.tool("initdb");
        initdb
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "-A", "scram-sha-256", "-E", "UTF8"])
            .args(["--locale=C", "--no-sync"])
            .arg(format!("--pwfile={}", self.password_file.display()));
        self.run_tool(initdb, &format!("initdb for {name}"));
        self.start(name, data)
    }

    /// A new streaming standby of `primary`, named `name`.
    pub fn standby_of(&self, primary: &Postgres, name: &str) -> Postgres {
        let data = self.data_dir(name);
        self.base_backup(primary, &data, name);
        self.start(name, data)
    }

    /// Rebuilds `old` (stopped first) as a streaming standby of `primary` from a fresh base
    /// backup, on the same port.
    pub fn rebuild_as_standby(&self, old: &mut Postgres, primary: &Postgres) {
        old.stop();
        std::fs::remove_dir_all(&old.data).unwrap();
        self.base_backup(primary, &old.data, &old.name);
        old.spawn_and_wait(self);
    }

    fn base_backup(&self, primary: &Postgres, data: &Path, name: &str) {
        let mut backup = self.tool("pg_basebackup");
        backup
            .arg("-D")
            .arg(data)
            .args(["-R", "-X", "stream", "-c", "fast", "--no-sync", "-d"])
            .arg(format!("{} password={}", primary.dsn(), self.password));
        self.run_tool(backup, &format!("pg_basebackup for {name}"));
    }

    fn start(&self, name: &str, data: PathBuf) -> Postgres {
        let mut pg = Postgres {
            name: name.to_string(),
            port: 0,
            data,
            log: self.dir.path().join(format!("{name}.log")),
            bin: self.bin.clone(),
            password: self.password.clone(),
            child: None,
        };
        pg.spawn_and_wait(self);
        pg
    }
}

/// One running server. Stopped (fast shutdown by PID, then SIGKILL) on drop.
pub struct Postgres {
    pub name: String,
    pub port: u16,
    pub data: PathBuf,
    pub log: PathBuf,
    bin: PathBuf,
    password: String,
    child: Option<Child>,
}

impl Postgres {
    /// Connection string without the password (the form the policy takes).
    pub fn dsn(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            self.port
        )
    }

    /// Starts the server on a free port (a new one per attempt) and waits until it accepts
    /// sessions.
    fn spawn_and_wait(&mut self, env: &PgEnv) {
        let mut last = String::new();
        for attempt in 1..=START_ATTEMPTS {
            if self.port == 0 || attempt > 1 {
                self.port = free_port();
            }
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.log)
                .unwrap();
            let mut server = env.tool("postgres");
            server
                .arg("-D")
                .arg(&self.data)
                .args(["-p", &self.port.to_string()])
                .args(["-c", "listen_addresses=127.0.0.1"])
                .args(["-c", "unix_socket_directories="])
                .args(["-c", "fsync=off", "-c", "shared_buffers=16MB"])
                .args(["-c", "max_connections=40", "-c", "max_wal_senders=5"])
                .args(["-c", "wal_keep_size=64MB", "-c", "logging_collector=off"])
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log);
            self.child = Some(server.spawn().expect("spawn postgres"));
            match self.wait_ready() {
                Ok(()) => {
                    tracing::info!(name = %self.name, port = self.port, "postgres ready");
                    return;
                }
                Err(why) => {
                    tracing::warn!(name = %self.name, attempt, %why, "postgres did not start");
                    last = why;
                    self.stop();
                }
            }
        }
        panic!(
            "postgres {} did not start after {START_ATTEMPTS} attempts: {last}\n{}",
            self.name,
            self.log_text()
        );
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                self.child = None;
                return Err(format!("exited with {status}"));
            }
            if self.psql("SELECT 1").is_ok() {
                return Ok(());
            }
            if start.elapsed() > READY_DEADLINE {
                return Err(format!("no session accepted within {READY_DEADLINE:?}"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Fast shutdown (SIGINT to the postmaster by PID); SIGKILL if it takes too long.
    pub fn stop(&mut self) {
        self.stop_with(libc::SIGINT);
    }

    /// Immediate shutdown (SIGQUIT to the postmaster by PID): no shutdown checkpoint and no
    /// last WAL sent to the standbys, as when the region dies; SIGKILL if it takes too long.
    pub fn stop_immediately(&mut self) {
        self.stop_with(libc::SIGQUIT);
    }

    fn stop_with(&mut self, signal: libc::c_int) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: signalling our own child, which has not been reaped yet.
        unsafe {
            libc::kill(child.id() as libc::pid_t, signal);
        }
        let start = Instant::now();
        while child.try_wait().unwrap().is_none() {
            if start.elapsed() > STOP_DEADLINE {
                let _ = child.kill();
                let _ = child.wait();
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs `sql` with `psql` as the superuser; `Ok(rows)` (unaligned, tuples only) or
    /// `Err(stderr)`.
    pub fn psql(&self, sql: &str) -> Result<String, String> {
        let mut command = Command::new(self.bin.join("psql"));
        command
            .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-d"])
            .arg(self.dsn())
            .args(["-c", sql])
            .env("PGPASSWORD", &self.password)
            .env("PGCONNECT_TIMEOUT", "5")
            .env(
                "PGOPTIONS",
                format!("-c statement_timeout={STATEMENT_TIMEOUT_MS}"),
            );
        let out = output(command, "psql");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }

    /// Like [`Self::psql`], panicking with the error.
    pub fn sql(&self, sql: &str) -> String {
        self.psql(sql)
            .unwrap_or_else(|e| panic!("{} on {}: {e}", sql, self.name))
    }

    pub fn in_recovery(&self) -> bool {
        self.sql("SELECT pg_is_in_recovery()") == "t"
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            let log = self.log_text();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "--- postgres {} log (tail):\n{}",
                self.name,
                lines[lines.len().saturating_sub(30)..].join("\n")
            );
        }
    }
}
