//! The store suite: every test here runs against both backends, SQLite in a temporary
//! directory and PostgreSQL in a database of its own on a server the suite starts
//! ([`TempPostgres`]): `chat::store::tests::sqlite::*` and `chat::store::tests::postgres::*`.
//! Without PostgreSQL's binaries the PostgreSQL half fails and says to run `scripts/setup.sh`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::temp_postgres::TempPostgres;
use super::*;

/// A directory under the system temp dir, removed on drop.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new() -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!(
            "confab-chat-test-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }

    /// A database path whose parent `data/` does not exist yet: opening creates it.
    pub(crate) fn db(&self) -> PathBuf {
        self.0.join("data").join("confab.db")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Where one test's store lives, on one backend or the other.
pub(crate) enum Fixture {
    Sqlite(TempDir),
    Postgres(String),
}

impl Fixture {
    pub(crate) fn sqlite() -> Fixture {
        Fixture::Sqlite(TempDir::new())
    }

    /// A fresh database on the shared test server (started on first use).
    pub(crate) fn postgres() -> Fixture {
        Fixture::Postgres(TempPostgres::shared().fresh_database())
    }

    pub(crate) fn location(&self) -> Location {
        match self {
            Fixture::Sqlite(dir) => Location::Sqlite(dir.db()),
            Fixture::Postgres(url) => Location::Postgres(url.clone()),
        }
    }

    pub(crate) async fn open(&self) -> Store {
        Store::open(&self.location())
            .await
            .unwrap_or_else(|e| panic!("opening the store: {e}"))
    }
}

pub(crate) fn msg(room: &str, from: &str, to: Option<&str>, text: &str) -> NewMessage {
    NewMessage {
        room: room.to_owned(),
        from: from.to_owned(),
        name: from.to_uppercase(),
        ts: 1_700_000_000_000,
        to: to.map(str::to_owned),
        text: text.to_owned(),
        kind: Kind::Text,
        client_id: None,
        sender_key: from.to_owned(),
        recipient_key: to.map(str::to_owned),
    }
}

pub(crate) fn texts(v: &[StoredMessage]) -> Vec<&str> {
    v.iter().map(|m| m.text.as_str()).collect()
}

fn ids(v: &[StoredMessage]) -> Vec<i64> {
    v.iter().map(|m| m.id).collect()
}

fn hash(c: char) -> String {
    std::iter::repeat_n(c, 64).collect()
}

/// One message in a batch of its own.
async fn insert(s: &Store, m: NewMessage) -> Result<(StoredMessage, Inserted), StoreError> {
    match s.commit(vec![Write::Message(m)]).await?.pop() {
        Some(Written::Message(m, ins)) => Ok((m, ins)),
        other => panic!("a message write returned {other:?}"),
    }
}

async fn insert_file(s: &Store, f: FileRecord) -> Result<(FileRecord, Inserted), StoreError> {
    match s.commit(vec![Write::File(f)]).await?.pop() {
        Some(Written::File(f, ins)) => Ok((f, ins)),
        other => panic!("a file write returned {other:?}"),
    }
}

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Fixture::sqlite()).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Fixture::postgres()).await;
                }
            )*
        }
    };
}

on_both_backends!(
    migrates_from_empty_and_reopen_is_idempotent,
    history_is_oldest_first_and_ids_increase,
    paging_with_before_and_limit,
    private_messages_are_seen_only_by_sender_and_recipient,
    a_reused_participant_id_does_not_inherit_private_messages,
    dedup_by_sender_room_and_client_id,
    a_batch_is_one_transaction,
    ids_become_visible_in_increasing_order,
    persists_across_reopen,
    survives_kill_9,
    text_round_trips_byte_exact_and_nul_is_refused,
    kinds_round_trip_and_serialize,
    file_metadata_round_trip,
    previews_are_stored_once,
);

async fn migrates_from_empty_and_reopen_is_idempotent(fx: Fixture) {
    const { assert!(SCHEMA_VERSION >= 1) };
    {
        let s = fx.open().await;
        assert_eq!(s.schema_version().await.unwrap(), SCHEMA_VERSION);
        assert_eq!(
            s.tables().await.unwrap(),
            ["files", "messages", "previews", "recordings"]
        );
        insert(&s, msg("r", "a", None, "kept")).await.unwrap();
    }
    // Opening again runs no migration twice and keeps what is there.
    for _ in 0..2 {
        let s = fx.open().await;
        assert_eq!(s.schema_version().await.unwrap(), SCHEMA_VERSION);
        let h = s.history("r", None, None, 10).await.unwrap();
        assert_eq!(texts(&h), ["kept"]);
    }
}

async fn history_is_oldest_first_and_ids_increase(fx: Fixture) {
    let s = fx.open().await;
    let mut prev = 0;
    for t in ["one", "two", "three"] {
        let (m, ins) = insert(&s, msg("r", "a", None, t)).await.unwrap();
        assert_eq!(ins, Inserted::New);
        assert!(m.id > prev);
        prev = m.id;
    }
    insert(&s, msg("other", "a", None, "elsewhere"))
        .await
        .unwrap();
    let h = s
        .history("r", Some("a"), None, DEFAULT_LIMIT)
        .await
        .unwrap();
    assert_eq!(texts(&h), ["one", "two", "three"]);
    assert!(h.windows(2).all(|w| w[0].id < w[1].id));
    assert!(s
        .history("nowhere", None, None, 10)
        .await
        .unwrap()
        .is_empty());
}

async fn paging_with_before_and_limit(fx: Fixture) {
    let s = fx.open().await;
    // One batch of 700: results come back in the batch's order, with increasing ids.
    let batch = (0..700)
        .map(|i| Write::Message(msg("r", "a", None, &format!("m{i}"))))
        .collect();
    let mut all = Vec::new();
    for (i, w) in s.commit(batch).await.unwrap().into_iter().enumerate() {
        let Written::Message(m, Inserted::New) = w else {
            panic!("write {i}: {w:?}");
        };
        assert_eq!(m.text, format!("m{i}"));
        all.push(m.id);
    }
    assert!(all.windows(2).all(|w| w[0] < w[1]));
    let id = |i: usize| all[i];
    // (before, limit, expected index range into `all`)
    let cases: &[(Option<i64>, usize, std::ops::Range<usize>)] = &[
        (None, DEFAULT_LIMIT, 600..700),
        (Some(id(600)), 100, 500..600),
        (Some(id(50)), 100, 0..50),
        (Some(id(0)), 100, 0..0),
        (Some(0), 100, 0..0),
        (Some(i64::MIN), 100, 0..0),
        (None, 0, 700..700),
        (None, 1, 699..700),
        (None, MAX_LIMIT, 200..700),
        (None, MAX_LIMIT + 1, 200..700),
        (None, usize::MAX, 200..700),
        (Some(id(300)), usize::MAX, 0..300),
        (Some(i64::MAX), 3, 697..700),
    ];
    for (before, limit, want) in cases {
        let got = s.history("r", None, *before, *limit).await.unwrap();
        assert_eq!(ids(&got), all[want.clone()].to_vec(), "{before:?} {limit}");
    }
    // Walking back page by page visits every message exactly once, oldest first.
    let mut seen = Vec::new();
    let mut before = None;
    loop {
        let page = s.history("r", Some("a"), before, 150).await.unwrap();
        let Some(first) = page.first() else { break };
        before = Some(first.id);
        seen.splice(0..0, ids(&page));
    }
    assert_eq!(seen, all);
}

async fn private_messages_are_seen_only_by_sender_and_recipient(fx: Fixture) {
    let s = fx.open().await;
    insert(&s, msg("r", "alice", None, "hello all"))
        .await
        .unwrap();
    let (p, _) = insert(&s, msg("r", "alice", Some("bob"), "psst bob"))
        .await
        .unwrap();
    assert!(p.private);
    assert_eq!(p.to.as_deref(), Some("bob"));
    for m in [
        msg("r", "bob", Some("alice"), "psst alice"),
        msg("r", "carol", Some("dave"), "c to d"),
        msg("r", "bob", None, "bye all"),
        // The same pair in another room does not leak here.
        msg("r2", "alice", Some("carol"), "other room"),
    ] {
        insert(&s, m).await.unwrap();
    }

    let cases: &[(Option<&str>, &[&str])] = &[
        (
            Some("alice"),
            &["hello all", "psst bob", "psst alice", "bye all"],
        ),
        (
            Some("bob"),
            &["hello all", "psst bob", "psst alice", "bye all"],
        ),
        (Some("carol"), &["hello all", "c to d", "bye all"]),
        (Some("dave"), &["hello all", "c to d", "bye all"]),
        (Some("eve"), &["hello all", "bye all"]),
        (None, &["hello all", "bye all"]),
        // An empty or SQL-ish viewer id is just another stranger.
        (Some(""), &["hello all", "bye all"]),
        (Some("' OR 1=1 --"), &["hello all", "bye all"]),
    ];
    for (viewer, want) in cases {
        let h = s.history("r", *viewer, None, DEFAULT_LIMIT).await.unwrap();
        assert_eq!(texts(&h), *want, "viewer {viewer:?}");
    }
    // Private messages do not count against a stranger's page either.
    let h = s.history("r", Some("eve"), None, 1).await.unwrap();
    assert_eq!(texts(&h), ["bye all"]);
    let h = s.history("r", None, Some(h[0].id), 1).await.unwrap();
    assert_eq!(texts(&h), ["hello all"]);
}

async fn a_reused_participant_id_does_not_inherit_private_messages(fx: Fixture) {
    let s = fx.open().await;
    let m = NewMessage {
        sender_key: "key-bob".into(),
        recipient_key: Some("key-alice-1".into()),
        ..msg("r", "bob", Some("alice"), "psst")
    };
    insert(&s, m).await.unwrap();
    for (key, want) in [
        ("key-alice-1", 1),
        ("key-bob", 1),
        // A later alice with another identity.
        ("key-alice-2", 0),
        // The id alone is not an identity.
        ("alice", 0),
    ] {
        let seen = s.history("r", Some(key), None, 10).await.unwrap().len();
        assert_eq!(seen, want, "{key}");
    }
}

async fn dedup_by_sender_room_and_client_id(fx: Fixture) {
    let s = fx.open().await;
    let with = |room: &str, from: &str, cid: Option<&str>, text: &str| NewMessage {
        client_id: cid.map(str::to_owned),
        ..msg(room, from, None, text)
    };
    let (first, ins) = insert(&s, with("r", "a", Some("c1"), "first"))
        .await
        .unwrap();
    assert_eq!(ins, Inserted::New);
    assert_eq!(first.client_id.as_deref(), Some("c1"));

    // (message, expected outcome, expected text of the returned message)
    let cases = [
        (
            with("r", "a", Some("c1"), "first"),
            Inserted::Duplicate,
            "first",
        ),
        (
            with("r", "a", Some("c1"), "changed"),
            Inserted::Duplicate,
            "first",
        ),
        (
            with("r", "b", Some("c1"), "other sender"),
            Inserted::New,
            "other sender",
        ),
        (
            with("r2", "a", Some("c1"), "other room"),
            Inserted::New,
            "other room",
        ),
        (
            with("r", "a", Some("c2"), "other id"),
            Inserted::New,
            "other id",
        ),
        (with("r", "a", None, "no id"), Inserted::New, "no id"),
        (with("r", "a", None, "no id"), Inserted::New, "no id"),
    ];
    for (m, want, text) in cases {
        let label = format!("{m:?}");
        let (got, ins) = insert(&s, m).await.unwrap();
        assert_eq!((ins, got.text.as_str()), (want, text), "{label}");
        if ins == Inserted::Duplicate {
            assert_eq!(got, first);
        }
    }
    let h = s.history("r", None, None, DEFAULT_LIMIT).await.unwrap();
    assert_eq!(
        texts(&h),
        ["first", "other sender", "other id", "no id", "no id"]
    );
}

async fn a_batch_is_one_transaction(fx: Fixture) {
    let s = fx.open().await;
    let with = |cid: &str, text: &str| NewMessage {
        client_id: Some(cid.to_owned()),
        ..msg("r", "a", None, text)
    };
    let file = FileRecord {
        hash: hash('e'),
        size: 3,
        mime: "text/plain".into(),
        name: "a.txt".into(),
        room: "r".into(),
        uploader: "a".into(),
        created: 1,
    };
    // A resend within the same batch is a duplicate of the first, as it would be across two.
    let got = s
        .commit(vec![
            Write::Message(with("x", "first")),
            Write::File(file.clone()),
            Write::Message(with("x", "resent")),
            Write::File(FileRecord {
                name: "b.txt".into(),
                ..file.clone()
            }),
            Write::Message(with("y", "second")),
        ])
        .await
        .unwrap();
    let [Written::Message(a, Inserted::New), Written::File(f1, Inserted::New), Written::Message(b, Inserted::Duplicate), Written::File(f2, Inserted::Duplicate), Written::Message(c, Inserted::New)] =
        &got[..]
    else {
        panic!("{got:#?}");
    };
    assert_eq!((a, f1), (b, f2));
    assert_eq!(f2.name, "a.txt");
    assert!(c.id > a.id);

    // One refused write refuses the batch: nothing of it is stored.
    let bad = s
        .commit(vec![
            Write::Message(with("z", "would be stored")),
            Write::Message(msg("r", "a", None, "nul \0 inside")),
        ])
        .await;
    assert!(matches!(bad, Err(StoreError::Invalid { .. })), "{bad:?}");
    let h = s.history("r", None, None, 10).await.unwrap();
    assert_eq!(texts(&h), ["first", "second"]);
    // An empty batch commits nothing and says so.
    assert_eq!(s.commit(Vec::new()).await.unwrap(), Vec::new());
}

/// Two writers (two nodes, or two processes on one SQLite file) commit batches while a
/// reader polls: no read may show an id below the highest seen before that was not there then.
async fn ids_become_visible_in_increasing_order(fx: Fixture) {
    let writers = [fx.open().await, fx.open().await];
    let reader = fx.open().await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let check = {
        let stop = stop.clone();
        async move {
            let mut seen = std::collections::BTreeSet::new();
            let mut reads = 0;
            while !stop.load(Ordering::Relaxed) || reads == 0 {
                let now = reader.history("r", None, None, MAX_LIMIT).await.unwrap();
                let max = seen.last().copied().unwrap_or(0);
                for m in &now {
                    assert!(
                        m.id > max || seen.contains(&m.id),
                        "id {} appeared after {max} was visible",
                        m.id
                    );
                }
                seen.extend(now.iter().map(|m| m.id));
                reads += 1;
            }
            seen.len()
        }
    };
    let write = |w: usize, s: Store| async move {
        for b in 0..20 {
            let batch = (0..5)
                .map(|k| Write::Message(msg("r", "a", None, &format!("w{w} b{b} m{k}"))))
                .collect();
            s.commit(batch).await.unwrap();
        }
    };
    let [w0, w1] = writers;
    let checker = tokio::spawn(check);
    tokio::join!(write(0, w0), write(1, w1));
    stop.store(true, Ordering::Relaxed);
    checker.await.unwrap();
    let all = fx
        .open()
        .await
        .history("r", None, None, MAX_LIMIT)
        .await
        .unwrap();
    assert_eq!(all.len(), 200);
}

async fn persists_across_reopen(fx: Fixture) {
    let mut written = Vec::new();
    {
        let s = fx.open().await;
        for (i, to) in [None, Some("b"), None].into_iter().enumerate() {
            let m = msg("r", "a", to, &format!("m{i}"));
            written.push(insert(&s, m).await.unwrap().0);
        }
    }
    let s = fx.open().await;
    assert_eq!(s.history("r", Some("a"), None, 10).await.unwrap(), written);
    // Ids keep increasing after a restart.
    let (m, _) = insert(&s, msg("r", "a", None, "after")).await.unwrap();
    assert!(m.id > written[2].id);
}

/// Child half of `survives_kill_9`: commits messages, reports, then waits to be killed.
/// A no-op unless started by that test.
#[tokio::test]
async fn crash_child() {
    let Ok(at) = std::env::var("CONFAB_CHAT_CRASH_DB") else {
        return;
    };
    let at = match at.strip_prefix("sqlite:") {
        Some(path) => Location::Sqlite(PathBuf::from(path)),
        None => Location::Postgres(at),
    };
    let s = Store::open(&at).await.unwrap();
    for i in 0..20 {
        insert(&s, msg("r", "a", None, &format!("m{i}")))
            .await
            .unwrap();
    }
    use std::io::Write as _;
    let mut out = std::io::stdout();
    writeln!(out, "COMMITTED").unwrap();
    out.flush().unwrap();
    tokio::time::sleep(Duration::from_secs(60)).await;
}

async fn survives_kill_9(fx: Fixture) {
    let at = match fx.location() {
        Location::Sqlite(path) => format!("sqlite:{}", path.display()),
        Location::Postgres(url) => url,
    };
    // The child's name as libtest knows it, whatever crate the module is compiled into.
    let module = module_path!();
    let module = module
        .split_once("::")
        .map_or(module, |(_crate, rest)| rest);
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([&format!("{module}::crash_child"), "--exact", "--nocapture"])
        .env("CONFAB_CHAT_CRASH_DB", &at)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let committed = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .any(|l| l.contains("COMMITTED"))
    })
    .await
    .unwrap();
    child.kill().unwrap(); // SIGKILL on Unix: no destructors, no checkpoint, no goodbye
    child.wait().unwrap();
    assert!(committed, "child never reported its commits");

    let s = fx.open().await;
    let h = s.history("r", None, None, DEFAULT_LIMIT).await.unwrap();
    let want: Vec<String> = (0..20).map(|i| format!("m{i}")).collect();
    assert_eq!(texts(&h), want);
}

async fn text_round_trips_byte_exact_and_nul_is_refused(fx: Fixture) {
    let s = fx.open().await;
    let big: String = "abcdefghij€😀".repeat(100_000); // ~1.6 MB
    let cases: Vec<(&str, String)> = vec![
        ("empty", String::new()),
        ("big", big),
        (
            "unicode",
            "héllo wörld 日本語 🎉 \u{1F469}\u{200D}\u{1F4BB} ﷽".to_owned(),
        ),
        (
            "controls",
            "\x01\x07\x08\x1b[31mred\x7f\r\n\t\u{202e}rtl\u{feff}".to_owned(),
        ),
        ("sql", "'); DROP TABLE messages; --".to_owned()),
        ("whitespace", "  \n\n  ".to_owned()),
    ];
    for (label, text) in &cases {
        let m = NewMessage {
            name: format!("näme\u{1}{label}"),
            client_id: Some(format!("cid-{label}\u{1F600}")),
            ..msg("r", "a", Some("b"), text)
        };
        let (stored, _) = insert(&s, m.clone()).await.unwrap();
        assert_eq!(stored.text.as_bytes(), text.as_bytes(), "{label}");
        let back = s.history("r", Some("b"), None, 1).await.unwrap();
        assert_eq!(back.len(), 1, "{label}");
        assert_eq!(back[0], stored, "{label}");
        assert_eq!(back[0].text.as_bytes(), text.as_bytes(), "{label}");
        assert_eq!(back[0].name, m.name, "{label}");
    }
    // NUL, which PostgreSQL's text cannot hold, is refused by both, in any field.
    let refused = [
        msg("r", "a", None, "\0nul"),
        msg("r", "a", None, "end\0"),
        NewMessage {
            name: "n\0".into(),
            ..msg("r", "a", None, "t")
        },
        NewMessage {
            client_id: Some("c\0".into()),
            ..msg("r", "a", None, "t")
        },
        msg("r", "a", Some("b\0"), "t"),
    ];
    for m in refused {
        let label = format!("{m:?}");
        let got = insert(&s, m).await;
        assert!(
            matches!(got, Err(StoreError::Invalid { .. })),
            "{label}: {got:?}"
        );
    }
    assert_eq!(
        s.history("r", Some("b"), None, 100).await.unwrap().len(),
        cases.len()
    );
}

async fn kinds_round_trip_and_serialize(fx: Fixture) {
    let s = fx.open().await;
    let file = FileRef {
        name: "report.pdf".to_owned(),
        size: 123_456,
        mime: "application/pdf".to_owned(),
        url: format!("/files/{}", hash('a')),
    };
    let cases = [
        (Kind::Text, MessageKind::Text, "text"),
        (Kind::File(file.clone()), MessageKind::File, "file"),
        (Kind::System, MessageKind::System, "system"),
    ];
    for (kind, tag, json_tag) in cases {
        let m = NewMessage {
            kind: kind.clone(),
            ..msg("r", "a", None, "t")
        };
        let (stored, _) = insert(&s, m).await.unwrap();
        let back = s.history("r", None, None, 1).await.unwrap().remove(0);
        assert_eq!(back, stored);
        assert_eq!(back.kind, tag);
        assert_eq!(
            back.file.as_ref(),
            matches!(kind, Kind::File(_)).then_some(&file)
        );
        let v = serde_json::to_value(&back).unwrap();
        assert_eq!(v["kind"], json_tag);
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(|k| k.as_str()).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "client_id",
                "file",
                "from",
                "id",
                "kind",
                "name",
                "private",
                "room",
                "text",
                "to",
                "ts"
            ]
        );
    }
    let v = serde_json::to_value(s.history("r", None, None, 3).await.unwrap()).unwrap();
    assert_eq!(v[1]["file"]["size"], 123_456);
    assert_eq!(v[1]["file"]["mime"], "application/pdf");
    assert_eq!(v[0]["file"], serde_json::Value::Null);
    assert_eq!(v[0]["private"], false);

    // A size the databases cannot hold is an error, not a panic or a wrapped negative number.
    let huge = NewMessage {
        kind: Kind::File(FileRef {
            size: u64::MAX,
            ..file
        }),
        ..msg("r", "a", None, "t")
    };
    assert!(matches!(
        insert(&s, huge).await,
        Err(StoreError::SizeTooLarge { .. })
    ));
}

async fn file_metadata_round_trip(fx: Fixture) {
    let s = fx.open().await;
    let rec = |h: &str, room: &str, who: &str, name: &str, created: i64| FileRecord {
        hash: h.to_owned(),
        size: 5_000_000_000, // above 4 GiB: no 32-bit truncation
        mime: "image/png".to_owned(),
        name: name.to_owned(),
        room: room.to_owned(),
        uploader: who.to_owned(),
        created,
    };
    let h = hash('f');
    let first = rec(&h, "r", "alice", "cat.png", 10);
    assert_eq!(
        insert_file(&s, first.clone()).await.unwrap(),
        (first.clone(), Inserted::New)
    );
    assert_eq!(
        s.file_by_hash(&h, Some("r")).await.unwrap(),
        Some(first.clone())
    );
    assert_eq!(s.file_by_hash(&h, None).await.unwrap(), Some(first.clone()));

    // Same content, same room: the first record stands.
    let again = rec(&h, "r", "bob", "other-name.png", 20);
    assert_eq!(
        insert_file(&s, again).await.unwrap(),
        (first.clone(), Inserted::Duplicate)
    );
    // Same content, another room: its own record; the earliest is the room-less answer.
    let elsewhere = rec(&h, "r2", "bob", "dog.png", 30);
    assert_eq!(
        insert_file(&s, elsewhere.clone()).await.unwrap().1,
        Inserted::New
    );
    assert_eq!(
        s.file_by_hash(&h, Some("r2")).await.unwrap(),
        Some(elsewhere)
    );
    assert_eq!(s.file_by_hash(&h, None).await.unwrap(), Some(first));

    // Lookups that find nothing.
    let cases = [
        (hash('0'), None),
        (h.clone(), Some("r3")),
        (h.to_uppercase(), None),
        ("../../etc/passwd".to_owned(), None),
        (String::new(), None),
        (format!("{h}0"), None),
    ];
    for (q, room) in cases {
        assert_eq!(
            s.file_by_hash(&q, room).await.unwrap(),
            None,
            "{q:?} {room:?}"
        );
    }

    // Inserts that are refused.
    for bad in [
        hash('g'),
        h.to_uppercase(),
        "abc".to_owned(),
        format!("{h} "),
    ] {
        let got = insert_file(&s, rec(&bad, "r", "a", "x", 1)).await;
        assert!(matches!(got, Err(StoreError::InvalidHash(_))), "{bad:?}");
    }
    let too_big = FileRecord {
        size: u64::MAX,
        ..rec(&hash('1'), "r", "a", "x", 1)
    };
    assert!(matches!(
        insert_file(&s, too_big).await,
        Err(StoreError::SizeTooLarge { .. })
    ));
}

async fn previews_are_stored_once(fx: Fixture) {
    let ok = PreviewRecord {
        hash: hash('a'),
        outcome: Ok(PreviewFigures {
            width: 1280,
            height: 960,
            bytes: 123_456,
            original_width: u32::MAX, // no 32-bit signed truncation either
            original_height: 3000,
            psnr: 41.25,
            ssim: 0.985,
        }),
    };
    let bad = PreviewRecord {
        hash: hash('b'),
        outcome: Err("not an image".into()),
    };
    let store = |p: &PreviewRecord| Write::Preview(p.clone());
    {
        let s = fx.open().await;
        assert_eq!(s.preview(&hash('a')).await.unwrap(), None);
        let got = s.commit(vec![store(&ok), store(&bad)]).await.unwrap();
        assert_eq!(
            got,
            [
                Written::Preview(ok.clone(), Inserted::New),
                Written::Preview(bad.clone(), Inserted::New)
            ]
        );
        // A second record for the same content changes nothing.
        let again = PreviewRecord {
            outcome: Err("other".into()),
            ..ok.clone()
        };
        let got = s.commit(vec![store(&again)]).await.unwrap();
        assert_eq!(got, [Written::Preview(ok.clone(), Inserted::Duplicate)]);
        let refused = s
            .commit(vec![store(&PreviewRecord {
                hash: "../x".into(),
                ..ok.clone()
            })])
            .await;
        assert!(matches!(refused, Err(StoreError::InvalidHash(_))));
        assert_eq!(s.preview("../x").await.unwrap(), None);
    }
    let s = fx.open().await;
    assert_eq!(s.preview(&hash('a')).await.unwrap(), Some(ok));
    assert_eq!(s.preview(&hash('b')).await.unwrap(), Some(bad));
}
