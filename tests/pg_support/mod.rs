//! A real PostgreSQL server for the tests, started by the tests themselves.
//!
//! - `SPIME_PG_URL` set (a connection string or URL of a role that may
//!   `CREATE DATABASE`): that server is used.
//! - Otherwise `initdb` and `pg_ctl` are looked for in `$PG_BIN`, in
//!   Debian's `/usr/lib/postgresql/<version>/bin` (newest first) and on
//!   `PATH`; a cluster is initialised in a fresh temporary directory (trust
//!   authentication, superuser `spime`) and started on a free port on
//!   127.0.0.1, one per test process. `initdb` refuses to run as root, so
//!   as root both run as the `postgres` user (`runuser -u postgres`), which
//!   the Debian package creates, with the directory chowned to it. A
//!   watcher process stops the server (`pg_ctl stop -m immediate`) and
//!   removes the directory when the test process exits.
//!
//! Each test gets its own database (`fresh_database`). Without a server the
//! tests print why and pass; with `CI=true` they fail instead.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use core::sync::atomic::{AtomicU32, Ordering};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

pub struct Server {
    /// Connection to the maintenance database.
    pub admin: postgres::Config,
    /// The cluster's data directory, when the tests started it.
    pub data_dir: Option<PathBuf>,
}

static SERVER: OnceLock<Result<Server, String>> = OnceLock::new();
static NEXT_DB: AtomicU32 = AtomicU32::new(0);

/// The server, or `None` (after printing why) when there is none and CI is not set.
pub fn server() -> Option<&'static Server> {
    match SERVER.get_or_init(start) {
        Ok(s) => Some(s),
        Err(why) => {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("PostgreSQL tests cannot run under CI: {why}");
            }
            // Straight to stderr: the test harness captures eprintln! of passing tests.
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "skipping PostgreSQL test: {why}");
            None
        }
    }
}

/// A new, empty database on the server: its configuration.
pub fn fresh_database(server: &Server) -> postgres::Config {
    let name = format!("spime_t{}_{}", std::process::id(), NEXT_DB.fetch_add(1, Ordering::Relaxed));
    let mut c = server.admin.connect(postgres::NoTls).unwrap();
    c.batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
    let mut cfg = server.admin.clone();
    cfg.dbname(&name);
    cfg
}

/// The database's data directory (`base/<oid>`), when the tests started the server.
pub fn database_dir(server: &Server, db: &postgres::Config) -> Option<PathBuf> {
    let data = server.data_dir.as_ref()?;
    let mut c = db.connect(postgres::NoTls).unwrap();
    let oid: u32 = c.query_one("SELECT oid FROM pg_database WHERE datname = current_database()", &[]).unwrap().get(0);
    Some(data.join("base").join(oid.to_string()))
}

fn start() -> Result<Server, String> {
    if let Ok(url) = std::env::var("SPIME_PG_URL") {
        let admin: postgres::Config = url.parse().map_err(|e| format!("SPIME_PG_URL does not parse: {e}"))?;
        admin.connect(postgres::NoTls).map_err(|e| format!("cannot reach SPIME_PG_URL: {e}"))?;
        return Ok(Server { admin, data_dir: None });
    }
    let bin =
        find_bin().ok_or("no initdb/pg_ctl found (set PG_BIN or SPIME_PG_URL; Debian: apt-get install postgresql)")?;
    let root = run_out(Command::new("id").arg("-u")).is_some_and(|u| u.trim() == "0");
    if root && run_out(Command::new("id").args(["-u", "postgres"])).is_none() {
        return Err("running as root and there is no `postgres` user to run initdb as".into());
    }
    let dir = std::env::temp_dir().join(format!("spime-pg-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let as_pg = |program: &Path| -> Command {
        if root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        }
    };
    if root {
        run(Command::new("chown").args(["postgres:postgres"]).arg(&dir))?;
    }
    run(Command::new("chmod").arg("700").arg(&dir))?;
    let data = dir.join("data");
    run(as_pg(&bin.join("initdb")).arg("-D").arg(&data).args([
        "-U",
        "spime",
        "-A",
        "trust",
        "--no-sync",
        "-E",
        "UTF8",
        "--no-locale",
    ]))?;
    let mut last = String::new();
    for _ in 0..5 {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let opts = format!("-p {port} -k {} -c listen_addresses=127.0.0.1", dir.display());
        let started = run(as_pg(&bin.join("pg_ctl"))
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(dir.join("server.log"))
            .args(["-w", "-t", "60", "-o", &opts, "start"]));
        match started {
            Ok(()) => {
                watch(&bin, &dir, &data, root);
                let mut admin = postgres::Config::new();
                admin.host("127.0.0.1").port(port).user("spime").dbname("postgres");
                admin.connect(postgres::NoTls).map_err(|e| format!("server started but refuses connections: {e}"))?;
                return Ok(Server { admin, data_dir: Some(data) });
            }
            Err(e) => last = e,
        }
    }
    Err(format!("pg_ctl start failed: {last}"))
}

/// Stops the server and removes its directory once this process has exited.
#[allow(clippy::zombie_processes)] // the watcher outlives this process by design
fn watch(bin: &Path, dir: &Path, data: &Path, root: bool) {
    let pg_ctl = bin.join("pg_ctl");
    let stop = if root {
        format!("runuser -u postgres -- {} -D {} -m immediate stop", pg_ctl.display(), data.display())
    } else {
        format!("{} -D {} -m immediate stop", pg_ctl.display(), data.display())
    };
    let script = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {stop}; rm -rf {dir}",
        pid = std::process::id(),
        dir = dir.display()
    );
    Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
}

fn find_bin() -> Option<PathBuf> {
    let has = |d: &Path| d.join("initdb").is_file() && d.join("pg_ctl").is_file();
    if let Ok(b) = std::env::var("PG_BIN") {
        return Some(PathBuf::from(b)).filter(|d| has(d));
    }
    let mut debian: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, d): &(u32, PathBuf)| has(d))
        .collect();
    debian.sort();
    if let Some((_, d)) = debian.pop() {
        return Some(d);
    }
    std::env::var_os("PATH").and_then(|p| std::env::split_paths(&p).find(|d| has(d)))
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.stdin(Stdio::null()).output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    }
}

fn run_out(cmd: &mut Command) -> Option<String> {
    let out = cmd.stdin(Stdio::null()).stderr(Stdio::null()).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether `needle` occurs anywhere in the files under `dir`.
pub fn dir_contains(dir: &Path, needle: &[u8]) -> bool {
    std::fs::read_dir(dir).into_iter().flatten().flatten().any(|e| {
        let p = e.path();
        if p.is_dir() {
            dir_contains(&p, needle)
        } else {
            std::fs::read(&p).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle))
        }
    })
}
