//! A throwaway PostgreSQL server for tests (the store suite, the end-to-end kill -9 test and
//! the chat bench): `initdb` into a fresh temporary directory, `pg_ctl start` on a free
//! loopback port with its socket in that directory, each test in a database of its own.
//!
//! It is stopped and its directory removed when the [`TempPostgres`] is dropped, or when the
//! process that started it ends in any way (a shared instance lives in a `static`, which is
//! never dropped; a test may panic or be killed): a watchdog shell waits for the end of a pipe
//! only this process holds (std opens pipes close-on-exec, so no child inherits it), and stops
//! the server when it closes.
//!
//! Binaries: `$CONFAB_PG_BIN`, else the newest `/usr/lib/postgresql/*/bin` (Debian's layout),
//! else `initdb` on `PATH`. Missing binaries are an error that says to run `scripts/setup.sh`:
//! a PostgreSQL test never passes by skipping. PostgreSQL refuses to run as root, so as root
//! the server runs as the `postgres` system user (which Debian's package creates) via `runuser`.
//!
//! Not part of the server; it is public (and hidden from the docs) only so that the end-to-end
//! tests under `tests/` can use it too.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

/// The user that owns the test databases (trust authentication on loopback).
const USER: &str = "confab";

pub struct TempPostgres {
    dir: PathBuf,
    port: u16,
    bin: PathBuf,
    /// Closing it (drop, or this process ending) makes the watchdog stop the server.
    watchdog_pipe: Option<ChildStdin>,
    watchdog: Child,
    databases: AtomicU32,
}

impl TempPostgres {
    /// One server for the whole test process, started on first use. Panics, with what to do,
    /// if it cannot start.
    pub fn shared() -> &'static TempPostgres {
        static SHARED: OnceLock<TempPostgres> = OnceLock::new();
        SHARED.get_or_init(|| TempPostgres::start().unwrap_or_else(|e| panic!("{e}")))
    }

    /// Starts a server of its own (stopped on drop).
    pub fn start() -> Result<TempPostgres, String> {
        let bin = find_bin()?;
        let as_user = if is_root() {
            vec![
                "runuser".into(),
                "-u".into(),
                "postgres".into(),
                "--".into(),
            ]
        } else {
            Vec::new()
        };
        // Made by the user the server runs as, so it owns its files.
        let dir = run(
            &as_user,
            Command::new("mktemp")
                .arg("-d")
                .arg(std::env::temp_dir().join("confab-pg-XXXXXXXX")),
        )?;
        let dir = PathBuf::from(dir.trim());
        let watchdog_and_server = || -> Result<(Child, ChildStdin, u16), String> {
            let (watchdog, pipe) = watchdog(&dir, &bin, &as_user)?;
            let data = dir.join("data");
            run(
                &as_user,
                Command::new(bin.join("initdb"))
                    .arg("-D")
                    .arg(&data)
                    .args(["-U", USER, "-A", "trust", "-E", "UTF8", "--no-locale"])
                    .arg("--no-sync"),
            )?;
            // A port that was free a moment ago; another process may take it in between, so
            // try a few.
            let mut last = String::new();
            for _ in 0..5 {
                let port = free_port()?;
                let opts = format!(
                    "-p {port} -k {} -c listen_addresses=127.0.0.1 -c max_connections=300 \
                     -c shared_buffers=32MB",
                    dir.display()
                );
                let started = run(
                    &as_user,
                    Command::new(bin.join("pg_ctl"))
                        .arg("-D")
                        .arg(&data)
                        .arg("-l")
                        .arg(dir.join("log"))
                        .args(["-w", "-t", "60", "-o", &opts, "start"]),
                );
                match started {
                    Ok(_) => return Ok((watchdog, pipe, port)),
                    Err(e) => last = e,
                }
            }
            let log = std::fs::read_to_string(dir.join("log")).unwrap_or_default();
            Err(format!(
                "PostgreSQL did not start: {last}\n--- its log ---\n{log}"
            ))
        };
        let (watchdog, pipe, port) = watchdog_and_server()?;
        Ok(TempPostgres {
            dir,
            port,
            bin,
            watchdog_pipe: Some(pipe),
            watchdog,
            databases: AtomicU32::new(0),
        })
    }

    /// The URL of database `db` on this server.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{db}", self.port)
    }

    /// Creates a new, empty database and returns its URL.
    pub fn fresh_database(&self) -> String {
        let n = self.databases.fetch_add(1, Ordering::Relaxed);
        let name = format!("t{}_{n}", std::process::id());
        let port = self.port.to_string();
        run(
            &[],
            Command::new(self.bin.join("createdb")).args([
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                USER,
                &name,
            ]),
        )
        .unwrap_or_else(|e| panic!("creating a test database: {e}"));
        self.url(&name)
    }

    /// The server's directory (data, log, socket).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for TempPostgres {
    fn drop(&mut self) {
        // Closing the pipe lets the watchdog stop the server and remove the directory.
        drop(self.watchdog_pipe.take());
        let _ = self.watchdog.wait();
    }
}

/// Starts the watchdog: it reads its stdin until this process closes the other end, then
/// stops the server (fast, no checkpoint: nothing here is worth keeping) and removes `dir`.
fn watchdog(dir: &Path, bin: &Path, as_user: &[String]) -> Result<(Child, ChildStdin), String> {
    let mut stop: Vec<String> = as_user.to_vec();
    stop.push(bin.join("pg_ctl").display().to_string());
    stop.extend(["-D".into(), dir.join("data").display().to_string()]);
    stop.extend(["-m".into(), "immediate".into(), "stop".into()]);
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(
            r#"cat >/dev/null
               if [ -f "$PGDIR/data/postmaster.pid" ]; then "$@" >/dev/null 2>&1; fi
               rm -rf "$PGDIR""#,
        )
        .arg("sh")
        .args(&stop)
        .env("PGDIR", dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting the watchdog shell (sh): {e}"))?;
    let pipe = child
        .stdin
        .take()
        .ok_or_else(|| "the watchdog has no stdin".to_owned())?;
    Ok((child, pipe))
}

/// Runs `cmd` (as `as_user` if given) to completion; its stdout, or an error with its output.
fn run(as_user: &[String], cmd: &mut Command) -> Result<String, String> {
    let mut full = match as_user.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(cmd.get_program()).args(cmd.get_args());
            c
        }
        None => {
            let mut c = Command::new(cmd.get_program());
            c.args(cmd.get_args());
            c
        }
    };
    // Nothing of ours may stay open in the server it starts (pg_ctl's child outlives it).
    full.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let shown = format!("{full:?}");
    let mut child = full.spawn().map_err(|e| format!("running {shown}: {e}"))?;
    // pg_ctl's server inherits nothing from here but these pipes' write ends, which pg_ctl
    // points at its log file; read both to the end without deadlocking on a full pipe.
    let mut err = child.stderr.take();
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(e) = err.as_mut() {
            let _ = e.read_to_string(&mut s);
        }
        s
    });
    let mut out = String::new();
    if let Some(o) = child.stdout.as_mut() {
        let _ = o.read_to_string(&mut out);
    }
    let status = child
        .wait()
        .map_err(|e| format!("waiting for {shown}: {e}"))?;
    let err = err_reader.join().unwrap_or_default();
    if status.success() {
        Ok(out)
    } else {
        Err(format!("{shown} failed ({status}):\n{out}{err}"))
    }
}

/// Where `initdb` and `pg_ctl` are.
fn find_bin() -> Result<PathBuf, String> {
    find_bin_in(
        std::env::var_os("CONFAB_PG_BIN").map(PathBuf::from),
        Path::new("/usr/lib/postgresql"),
        std::env::var_os("PATH"),
    )
}

const INSTALL: &str = "run scripts/setup.sh (it installs the Debian package postgresql)";

fn find_bin_in(
    env: Option<PathBuf>,
    lib: &Path,
    path: Option<std::ffi::OsString>,
) -> Result<PathBuf, String> {
    let has_tools = |d: &Path| d.join("initdb").is_file() && d.join("pg_ctl").is_file();
    if let Some(d) = env {
        return if has_tools(&d) {
            Ok(d)
        } else {
            Err(format!(
                "CONFAB_PG_BIN={} has no initdb and pg_ctl: point it at PostgreSQL's bin \
                 directory, or unset it and {INSTALL}",
                d.display()
            ))
        };
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(lib)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            Some((v, e.path().join("bin")))
        })
        .filter(|(_, d)| has_tools(d))
        .collect();
    versions.sort();
    if let Some((_, d)) = versions.pop() {
        return Ok(d);
    }
    let on_path = path
        .map(|p| std::env::split_paths(&p).find(|d| has_tools(d)))
        .unwrap_or_default();
    on_path.ok_or_else(|| {
        format!(
            "PostgreSQL server binaries (initdb, pg_ctl) were not found in $CONFAB_PG_BIN, \
             {}/*/bin or PATH, and the PostgreSQL tests need them: {INSTALL}",
            lib.display()
        )
    })
}

fn is_root() -> bool {
    // The effective uid, without unsafe code: `id -u` is in every base system.
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("finding a free port: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_binaries_say_to_run_setup() {
        let empty = std::env::temp_dir().join(format!("confab-no-pg-{}", std::process::id()));
        std::fs::create_dir_all(&empty).unwrap();
        let cases = [
            (None, Some(empty.clone().into_os_string())),
            (None, None),
            (Some(empty.clone()), None),
        ];
        for (env, path) in cases {
            let err = find_bin_in(env, &empty, path).unwrap_err();
            assert!(err.contains("run scripts/setup.sh"), "{err}");
        }
        // Debian's layout: the newest version wins.
        for v in ["13", "15", "9"] {
            let bin = empty.join(v).join("bin");
            std::fs::create_dir_all(&bin).unwrap();
            for tool in ["initdb", "pg_ctl"] {
                std::fs::write(bin.join(tool), b"").unwrap();
            }
        }
        assert_eq!(
            find_bin_in(None, &empty, None).unwrap(),
            empty.join("15").join("bin")
        );
        let _ = std::fs::remove_dir_all(&empty);
    }
}
