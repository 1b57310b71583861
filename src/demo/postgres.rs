//! `arbiter demo --postgres`: a real PostgreSQL primary (region-a) and streaming standby
//! (region-b) on loopback, made with the installed server binaries (`initdb`, `postgres`,
//! `pg_basebackup`) in the demo's directory, and the checks printed after the failover.
//!
//! The servers are child processes in their own process group (a terminal's Ctrl-C reaches
//! the demo only, which then stops them in order), stopped by PID with a fast shutdown and
//! killed if that does not end them in time. PostgreSQL refuses to run as root: as root,
//! the servers and tools run as the `postgres` user. This module never prints or logs the
//! superuser's password.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio::time::Instant;

use super::DemoError;

/// Where Debian installs each major version's server binaries (`<version>/bin`).
const DEBIAN_VERSIONS_DIR: &str = "/usr/lib/postgresql";
/// The programs the demo runs.
const PROGRAMS: [&str; 3] = ["initdb", "postgres", "pg_basebackup"];
/// How long a server may take to accept sessions after its start.
const READY_DEADLINE: Duration = Duration::from_secs(60);
/// How long `initdb` or `pg_basebackup` may run.
const TOOL_DEADLINE: Duration = Duration::from_secs(120);
/// How long a fast shutdown may take before the server is killed.
const STOP_DEADLINE: Duration = Duration::from_secs(20);
/// Rows the demo writes on the primary before region-a goes dark.
pub const ROWS: i64 = 100;
/// The table holding them.
const TABLE: &str = "demo_orders";

/// The directory holding [`PROGRAMS`]: the newest Debian-layout version, else the one on
/// `PATH`. `None` when PostgreSQL's server binaries are not installed.
pub fn bin_dir() -> Option<PathBuf> {
    bin_dir_with(&PROGRAMS)
}

/// The directory holding every one of `programs`, found as [`bin_dir`] finds the demo's.
pub fn bin_dir_with(programs: &[&str]) -> Option<PathBuf> {
    let has_all = |dir: &Path| programs.iter().all(|p| dir.join(p).is_file());
    let mut best: Option<(u32, PathBuf)> = None;
    if let Ok(entries) = std::fs::read_dir(DEBIAN_VERSIONS_DIR) {
        for entry in entries.flatten() {
            let Some(version) = entry.file_name().to_str().and_then(|v| v.parse().ok()) else {
                continue;
            };
            let bin = entry.path().join("bin");
            if has_all(&bin) && best.as_ref().is_none_or(|(v, _)| version > *v) {
                best = Some((version, bin));
            }
        }
    }
    best.map(|(_, bin)| bin)
        .or_else(|| std::env::split_paths(&std::env::var_os("PATH")?).find(|dir| has_all(dir)))
}

/// The uid and gid the servers run as: `postgres` when the demo runs as root.
pub fn server_user() -> Result<Option<(u32, u32)>, DemoError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let name = std::ffi::CString::new("postgres").expect("no NUL in a literal");
    // SAFETY: a valid NUL-terminated name; the entry is read at once, before any other
    // getpw* call could reuse its static buffer.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        return Err(DemoError::Postgres(
            "PostgreSQL refuses to run as root, and there is no `postgres` user to run it as \
             (the postgresql package creates it)"
                .into(),
        ));
    }
    // SAFETY: checked non-null above.
    Ok(Some(unsafe { ((*pw).pw_uid, (*pw).pw_gid) }))
}

/// One running server.
pub struct Server {
    pub name: String,
    pub port: u16,
    child: Option<Child>,
}

impl Server {
    /// Connection string without the password (the form the policy takes).
    pub fn dsn(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            self.port
        )
    }

    /// Fast shutdown (SIGINT to the postmaster by PID), then SIGKILL after
    /// [`STOP_DEADLINE`].
    async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Some(pid) = child.id() {
            // SAFETY: signalling our own child, which has not been reaped yet.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGINT);
            }
        }
        if tokio::time::timeout(STOP_DEADLINE, child.wait())
            .await
            .is_err()
        {
            let _ = child.kill().await;
        }
    }
}

/// The primary and standby, with what is needed to reach and stop them.
pub struct Pair {
    /// Primary (region-a) and standby (region-b).
    pub servers: [Server; 2],
    /// The superuser's password file, which the hooks reference.
    pub password_file: PathBuf,
    password: String,
    bin: PathBuf,
    dir: PathBuf,
    user: Option<(u32, u32)>,
}

impl Pair {
    /// Makes and starts a primary named after `names[0]` and a streaming standby of it named
    /// after `names[1]`, under `dir/postgres`, and writes [`ROWS`] rows on the primary.
    pub async fn start(dir: &Path, names: [&str; 2]) -> Result<Pair, DemoError> {
        let bin = bin_dir().ok_or_else(|| {
            DemoError::Postgres(format!(
                "--postgres needs the PostgreSQL server binaries ({}) under {DEBIAN_VERSIONS_DIR}/<version>/bin \
                 or on PATH; install them (Debian: apt-get install postgresql)",
                PROGRAMS.join(", ")
            ))
        })?;
        let user = server_user()?;
        let base = dir.join("postgres");
        std::fs::create_dir(&base).map_err(io("cannot create", &base))?;
        if let Some((uid, gid)) = user {
            use std::os::unix::fs::PermissionsExt;
            // The server user reaches its directory through the demo's private one.
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))
                .map_err(io("cannot open up", dir))?;
            std::os::unix::fs::chown(&base, Some(uid), Some(gid))
                .map_err(io("cannot hand over", &base))?;
        }
        let password = format!("{:032x}", rand::random::<u128>());
        let password_file = base.join("postgres.password");
        super::write_private(&password_file, format!("{password}\n").as_bytes())?;
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(&password_file, Some(uid), Some(gid))
                .map_err(io("cannot hand over", &password_file))?;
        }
        let mut pair = Pair {
            servers: [names[0], names[1]].map(|n| Server {
                name: n.to_string(),
                port: 0,
                child: None,
            }),
            password_file,
            password,
            bin,
            dir: base,
            user,
        };
        let result = pair.make().await;
        if result.is_err() {
            pair.stop().await;
        }
        result.map(|()| pair)
    }

    async fn make(&mut self) -> Result<(), DemoError> {
        let primary = self.dir.join(&self.servers[0].name);
        let mut initdb = self.tool("initdb");
        initdb
            .arg("-D")
            .arg(&primary)
            .args(["-U", "postgres", "-A", "scram-sha-256", "-E", "UTF8"])
            .args(["--locale=C", "--no-sync"])
            .arg(format!("--pwfile={}", self.password_file.display()));
        self.run_tool(initdb, "initdb").await?;
        self.spawn(0, &primary).await?;
        let client = self.connect(0).await?;
        client
            .batch_execute(&format!(
                "CREATE TABLE {TABLE} (id bigint PRIMARY KEY, note text NOT NULL);\
                 INSERT INTO {TABLE} SELECT i, 'order ' || i FROM generate_series(1, {ROWS}) AS i;"
            ))
            .await
            .map_err(|e| DemoError::Postgres(format!("cannot write the demo rows: {e}")))?;

        let standby = self.dir.join(&self.servers[1].name);
        let mut backup = self.tool("pg_basebackup");
        backup
            .arg("-D")
            .arg(&standby)
            .args(["-R", "-X", "stream", "-c", "fast", "--no-sync", "-d"])
            .arg(self.servers[0].dsn())
            .env("PGPASSWORD", &self.password);
        self.run_tool(backup, "pg_basebackup").await?;
        self.spawn(1, &standby).await?;
        Ok(())
    }

    /// A command for one of the binaries, run as the server user, in its own process group.
    fn tool(&self, program: &str) -> Command {
        let mut command = Command::new(self.bin.join(program));
        command
            .current_dir(&self.dir)
            .env("HOME", &self.dir)
            .env("LC_ALL", "C")
            .env_remove("PGPASSWORD")
            .stdin(Stdio::null())
            .process_group(0);
        if let Some((uid, gid)) = self.user {
            command.uid(uid).gid(gid);
        }
        command
    }

    async fn run_tool(&self, mut command: Command, what: &str) -> Result<(), DemoError> {
        command.kill_on_drop(true);
        let out = tokio::time::timeout(TOOL_DEADLINE, command.output())
            .await
            .map_err(|_| {
                DemoError::Postgres(format!("{what} did not finish within {TOOL_DEADLINE:?}"))
            })?
            .map_err(|e| DemoError::Postgres(format!("cannot run {what}: {e}")))?;
        if out.status.success() {
            return Ok(());
        }
        Err(DemoError::Postgres(format!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }

    /// Starts server `i` from `data` on a free port and waits until it accepts sessions.
    async fn spawn(&mut self, i: usize, data: &Path) -> Result<(), DemoError> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(io("cannot find a free port", Path::new("127.0.0.1")))?
            .port();
        let name = self.servers[i].name.clone();
        let log_path = self.dir.join(format!("{name}.log"));
        let log = std::fs::File::create(&log_path).map_err(io("cannot create", &log_path))?;
        let mut server = self.tool("postgres");
        server
            .arg("-D")
            .arg(data)
            .args(["-p", &port.to_string()])
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "unix_socket_directories=",
            ])
            // A throwaway demo database: no fsync, small buffers.
            .args(["-c", "fsync=off", "-c", "shared_buffers=16MB"])
            .args(["-c", "max_connections=40", "-c", "max_wal_senders=5"])
            .args(["-c", "wal_keep_size=64MB", "-c", "logging_collector=off"])
            .stdout(log.try_clone().map_err(io("cannot use", &log_path))?)
            .stderr(log)
            // Normally stopped in order by [`Pair::stop`]; killed if the demo is interrupted
            // while still starting the servers.
            .kill_on_drop(true);
        let child = server
            .spawn()
            .map_err(|e| DemoError::Postgres(format!("cannot start postgres for {name}: {e}")))?;
        self.servers[i].port = port;
        self.servers[i].child = Some(child);
        let started = Instant::now();
        loop {
            if let Some(child) = self.servers[i].child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.servers[i].child = None;
                    return Err(DemoError::Postgres(format!(
                        "postgres for {name} exited with {status}; see {}",
                        log_path.display()
                    )));
                }
            }
            if self.connect(i).await.is_ok() {
                return Ok(());
            }
            if started.elapsed() > READY_DEADLINE {
                return Err(DemoError::Postgres(format!(
                    "postgres for {name} accepted no session within {READY_DEADLINE:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A session on server `i` as the superuser.
    async fn connect(&self, i: usize) -> Result<tokio_postgres::Client, DemoError> {
        let config = format!(
            "{} password={} connect_timeout=5 application_name=arbiter-demo",
            self.servers[i].dsn(),
            self.password
        );
        let (client, connection) = tokio_postgres::connect(&config, tokio_postgres::NoTls)
            .await
            .map_err(|e| DemoError::Postgres(format!("{}: {e}", self.servers[i].name)))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }

    /// Waits until the standby has replayed the demo rows (so nothing is pending when the
    /// scenario starts).
    pub async fn wait_replicated(&self) -> Result<(), DemoError> {
        let started = Instant::now();
        loop {
            if let Ok(rows) = self.count(1).await {
                if rows == ROWS {
                    return Ok(());
                }
            }
            if started.elapsed() > READY_DEADLINE {
                return Err(DemoError::Postgres(format!(
                    "the standby did not replay the demo rows within {READY_DEADLINE:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn count(&self, i: usize) -> Result<i64, DemoError> {
        let client = self.connect(i).await?;
        let row = client
            .query_one(&format!("SELECT count(*) FROM {TABLE}"), &[])
            .await
            .map_err(|e| DemoError::Postgres(format!("{}: {e}", self.servers[i].name)))?;
        Ok(row.get(0))
    }

    /// After the failover: what each server says, by real sessions. The new primary must be
    /// out of recovery with every row written before the failure; the old one must refuse a
    /// write.
    pub async fn check_after(&self) -> Result<Vec<String>, DemoError> {
        let (old, new) = (&self.servers[0], &self.servers[1]);
        let client = self.connect(1).await?;
        let recovery: bool = client
            .query_one("SELECT pg_is_in_recovery()", &[])
            .await
            .map_err(|e| DemoError::Postgres(format!("{}: {e}", new.name)))?
            .get(0);
        if recovery {
            return Err(DemoError::Postgres(format!(
                "{}'s PostgreSQL is still a standby after the failover",
                new.name
            )));
        }
        let rows = self.count(1).await?;
        let mut lines = vec![format!(
            "{}'s PostgreSQL (port {}) is primary and has {rows} of the {ROWS} rows written before {} went dark",
            new.name, new.port, old.name
        )];
        let client = self.connect(0).await?;
        let write = client
            .execute(
                &format!("INSERT INTO {TABLE} VALUES ({}, 'late write')", ROWS + 1),
                &[],
            )
            .await;
        lines.push(match write {
            Ok(_) => format!(
                "{}'s PostgreSQL (port {}) still ACCEPTS writes: only its agent's lease keeps it from acting as primary",
                old.name, old.port
            ),
            Err(e) => format!(
                "{}'s PostgreSQL (port {}) still runs and refuses writes: {}",
                old.name,
                old.port,
                e.as_db_error().map_or(e.to_string(), |d| d.message().to_string())
            ),
        });
        Ok(lines)
    }

    /// A `psql` line for server `i` (the password from the file, never on the command line).
    pub fn psql(&self, i: usize) -> String {
        format!(
            "PGPASSWORD=$(cat {}) {} -h 127.0.0.1 -p {} -U postgres -c 'SELECT pg_is_in_recovery(), count(*) FROM {TABLE}'",
            self.password_file.display(),
            self.bin.join("psql").display(),
            self.servers[i].port
        )
    }

    /// Stops both servers (standby first, so it does not log a lost primary).
    pub async fn stop(&mut self) {
        for server in self.servers.iter_mut().rev() {
            server.stop().await;
        }
    }
}

fn io<'a>(what: &'a str, path: &'a Path) -> impl FnOnce(std::io::Error) -> DemoError + 'a {
    move |source| DemoError::Io {
        what: format!("{what} {}", path.display()),
        source,
    }
}
