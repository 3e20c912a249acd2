//! The chat store in PostgreSQL (`--database`) and uploads in a shared directory (`--files`),
//! end to end: two servers on one database and one files directory serve the same history and
//! the same files, and a `--database` that cannot work stops the start with what to do.
//!
//! The PostgreSQL server is a throwaway one this test process starts
//! (`confab::chat::store::temp_postgres`); without PostgreSQL installed these tests fail and
//! say to run scripts/setup.sh.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context, Result};

use crate::common::chat::{new_identity, ChatClient};
use crate::common::server::{fresh_temp_dir, postgres_database};
use crate::common::signaling::ChatMessage;
use crate::common::TestServer;

const LIMIT: Duration = Duration::from_secs(60);

/// Runs the binary with `args` (and a throwaway data dir) until it exits; its status and
/// standard error.
fn run_confab(args: &[&str], within: Duration) -> Result<(std::process::ExitStatus, String)> {
    let data = fresh_temp_dir("confab-e2e-store")?;
    let mut child = Command::new(env!("CARGO_BIN_EXE_confab"))
        .args(["--http", "127.0.0.1:0", "--rtsp", "127.0.0.1:0"])
        .args(["--media", "127.0.0.1:0", "--data"])
        .arg(&data)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let deadline = Instant::now() + within;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = std::fs::remove_dir_all(&data);
            return Err(anyhow!("confab {args:?} still runs after {within:?}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    use std::io::Read;
    child
        .stderr
        .take()
        .map(|mut e| e.read_to_string(&mut stderr));
    let _ = std::fs::remove_dir_all(&data);
    Ok((status, stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_cannot_work_stops_the_start() -> Result<()> {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let unreachable = format!("postgres://confab:hunter2@127.0.0.1:{port}/confab");
    let missing_db = postgres_database()
        .await?
        .rsplit_once('/')
        .map(|(server, _)| format!("{server}/no_such_database"))
        .context("database URL")?;
    // (arguments, exit status, what the message must say)
    let cases: Vec<(Vec<&str>, i32, &str)> = vec![
        (
            vec!["--database", "mysql://u:hunter2@h/db"],
            2,
            "only postgres://",
        ),
        (
            vec!["--database", "postgres://u:hunter2@h:port/db"],
            2,
            "postgres://USER:PASSWORD@HOST:5432/DBNAME",
        ),
        (
            vec!["--database", &unreachable],
            1,
            "cannot connect to PostgreSQL at postgres://confab@127.0.0.1",
        ),
        (vec!["--database", &missing_db], 1, "createdb"),
    ];
    for (args, code, says) in cases {
        let (status, stderr) = tokio::task::spawn_blocking({
            let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
            move || {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                run_confab(&args, Duration::from_secs(20))
            }
        })
        .await??;
        ensure!(
            status.code() == Some(code),
            "{args:?}: exit status {status}, want {code}; stderr:\n{stderr}"
        );
        ensure!(
            stderr.contains(says),
            "{args:?}: stderr does not say {says:?}:\n{stderr}"
        );
        ensure!(
            !stderr.contains("hunter2"),
            "{args:?}: the password is shown:\n{stderr}"
        );
    }
    Ok(())
}

/// Two nodes, one database, one files directory: what one stores the other serves, and both
/// keep assigning increasing ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_share_history_and_files() -> Result<()> {
    let url = postgres_database().await?;
    let files = fresh_temp_dir("confab-e2e-shared-files")?;
    let files_arg = files.display().to_string();
    let args = ["--database", url.as_str(), "--files", files_arg.as_str()];
    let a_node = TestServer::start_with_args(&args).await?;
    let b_node = TestServer::start_with_args(&args).await?;
    let result = tokio::time::timeout(LIMIT, async {
        let room = "shared";
        let identity = new_identity();
        let mut alice = ChatClient::join(&a_node.ws_url(), room, "Alice", Some(&identity)).await?;
        let first = alice.chat("hello from node A", None, "a-1").await?;
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let r = alice
            .upload(a_node.http, "notes.bin", "application/octet-stream", &data)
            .await?;
        ensure!(r.status == 201, "upload: {} {}", r.status, r.text());
        let v = r.json()?;
        let shared: ChatMessage = serde_json::from_value(v.get("message").cloned().unwrap_or(v))?;

        // Bob, on the other node, finds both in his join history and downloads the file there.
        let mut bob = ChatClient::join(&b_node.ws_url(), room, "Bob", None).await?;
        for m in [&first, &shared] {
            ensure!(
                bob.join_history.contains(m),
                "node B's join history lacks {m:?}: {:#?}",
                bob.join_history
            );
        }
        let file_url = &shared.file.as_ref().context("a file message")?.url;
        let got = b_node.http_request("GET", file_url, &[], &[]).await?;
        ensure!(
            got.status == 200 && got.body == data,
            "GET {file_url} on node B: {} ({} bytes)",
            got.status,
            got.body.len()
        );
        // Ids keep increasing across nodes, and a resend to the other node (after a
        // reconnect there) is acknowledged as the message already stored.
        let reply = bob.chat("hello from node B", None, "b-1").await?;
        ensure!(reply.id > shared.id, "{} after {}", reply.id, shared.id);
        let mut alice_on_b =
            ChatClient::join(&b_node.ws_url(), room, "Alice", Some(&identity)).await?;
        let again = alice_on_b.chat("hello from node A", None, "a-1").await?;
        ensure!(
            again == first,
            "the resend on node B was stored anew: {again:?}"
        );
        let rest = b_node
            .http_request("GET", &format!("/api/rooms/{room}/messages"), &[], &[])
            .await?;
        let history: Vec<ChatMessage> = serde_json::from_value(rest.json()?)?;
        ensure!(
            history.iter().any(|m| m == &first) && history.iter().any(|m| m == &reply),
            "node B's REST history: {history:#?}"
        );
        Ok(())
    })
    .await
    .unwrap_or_else(|_| Err(anyhow!("scenario exceeded {LIMIT:?}")));
    let _ = std::fs::remove_dir_all(&files);
    result.map_err(|e| {
        anyhow!(
            "{e:?}\n--- node A ---\n{}\n--- node B ---\n{}",
            a_node.log_tail(40),
            b_node.log_tail(40)
        )
    })
}
