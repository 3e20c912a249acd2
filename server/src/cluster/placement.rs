//! Room placement, the pure part: what a node tells the others about itself (its signed
//! record), which live node is the least loaded, and the rule the placement script applies to
//! a room's key in Redis. No I/O: `cluster.rs` carries these to and from Redis.

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// Every key confab writes starts with this (docs/cluster.md lists them all).
pub const PREFIX: &str = "confab:";
/// The set of node ids that have registered (members whose record expired are pruned).
pub const NODES_KEY: &str = "confab:nodes";
/// A node's record: `confab:node:{id}`.
pub const NODE_PREFIX: &str = "confab:node:";
/// A room's owner: `confab:room:{name}` holds the owning node's id.
pub const ROOM_PREFIX: &str = "confab:room:";

/// A node's record lives this long unless refreshed: a node that stops heartbeating is gone
/// from Redis within this time, and from every node's table one heartbeat later (under 10 s).
pub const NODE_TTL_MS: u64 = 7_000;
/// How often a node refreshes its record (and its rooms' keys): three chances per TTL.
pub const HEARTBEAT_MS: u64 = 2_000;
/// A room's key lives this long once its last member left (the owner stops refreshing it):
/// people who rejoin soon find the room where it was.
pub const ROOM_TTL_MS: u64 = 30_000;

/// What a node publishes about itself every heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Random per process start, so a restarted node is a new node.
    pub id: String,
    /// Its public base URL (`--node-url`), e.g. `https://node2.example.org`.
    pub url: String,
    /// Its RTSP server, `rtsp://{host of --node-url}:{bound RTSP port}`: where players of its
    /// rooms are redirected and its rooms' cameras relayed. Absent in records of nodes that
    /// predate it; such a node's rooms get a `503` on RTSP from other nodes.
    #[serde(default)]
    pub rtsp: Option<String>,
    pub cores: u32,
    pub rooms: u32,
    pub participants: u32,
    /// RTP packets received and forwarded per second over the last heartbeat interval.
    pub packets_per_second: u64,
    /// The rooms it serves with anyone in them, and how many: `GET /api/rooms` of the cluster.
    #[serde(default)]
    pub room_list: Vec<(String, u32)>,
    /// When it was written (Unix milliseconds).
    pub at: u64,
    /// The node is draining (shutting down): no new room is placed on it.
    #[serde(default)]
    pub draining: bool,
}

impl NodeRecord {
    /// How loaded the node is, per core: a participant counts 1, and 100 packets a second
    /// count 1 too (one participant publishing camera and microphone sends about 150, and
    /// every subscriber multiplies what is forwarded), so media traffic weighs in where it
    /// is, while new rooms, which send nothing yet, still spread by participants.
    pub fn load(&self) -> f64 {
        let work = self.participants as f64 + self.packets_per_second as f64 / 100.0;
        work / self.cores.max(1) as f64
    }
}

/// The live node a new room goes to: the least loaded, then the one with fewer rooms, then
/// `me` (a join placed where it arrived needs no redirect), then the smallest id, so that
/// nodes with the same view choose the same one.
pub fn least_loaded<'a>(nodes: &'a [NodeRecord], me: &str) -> Option<&'a NodeRecord> {
    least_loaded_except(nodes, me, None)
}

/// [`least_loaded`] among the nodes other than `except` (a node found dead). Draining nodes
/// never take a room.
pub fn least_loaded_except<'a>(
    nodes: &'a [NodeRecord],
    me: &str,
    except: Option<&str>,
) -> Option<&'a NodeRecord> {
    let eligible = |n: &&NodeRecord| !n.draining && Some(n.id.as_str()) != except;
    nodes.iter().filter(eligible).min_by(|a, b| {
        a.load()
            .total_cmp(&b.load())
            .then(a.rooms.cmp(&b.rooms))
            .then((a.id != me).cmp(&(b.id != me)))
            .then(a.id.cmp(&b.id))
    })
}

/// What the placement script (`cluster::PLACE`, run atomically inside Redis) does with a
/// room's key. Written out here so it can be tested without Redis; the script is the same
/// rule in Lua.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placed {
    /// The room already lives on this (live) node; nothing changes.
    Stays(String),
    /// The key now names this node (the room was unplaced, or its node is gone).
    Taken(String),
}

impl Placed {
    pub fn node(&self) -> &str {
        match self {
            Placed::Stays(n) | Placed::Taken(n) => n,
        }
    }
}

/// The rule: a room whose owner is alive stays there; otherwise the candidate takes it if it
/// is alive, else the node asking (which is alive, since it is running the script).
pub fn place(
    current: Option<&str>,
    candidate: &str,
    me: &str,
    alive: impl Fn(&str) -> bool,
) -> Placed {
    match current {
        Some(owner) if alive(owner) => Placed::Stays(owner.to_owned()),
        _ if alive(candidate) => Placed::Taken(candidate.to_owned()),
        _ => Placed::Taken(me.to_owned()),
    }
}

/// What the move script (`cluster::MOVE`) does when node `gone` was found dead (or is this
/// node, draining): a room still on `gone` goes to the candidate (or, if the candidate is
/// `gone` or not alive, the node asking); a room already elsewhere and alive stays there.
pub fn move_from(
    current: Option<&str>,
    gone: &str,
    candidate: &str,
    me: &str,
    alive: impl Fn(&str) -> bool,
) -> Placed {
    match current {
        Some(owner) if owner != gone && alive(owner) => Placed::Stays(owner.to_owned()),
        _ if candidate != gone && alive(candidate) => Placed::Taken(candidate.to_owned()),
        _ => Placed::Taken(me.to_owned()),
    }
}

/// The key records are signed with, derived from the cluster secret.
#[derive(Clone)]
pub struct RecordKey(Vec<u8>);

impl std::fmt::Debug for RecordKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RecordKey(..)")
    }
}

/// Why a value read from Redis is not a record of this cluster.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("not a signed node record (no `mac.json`)")]
    Malformed,
    #[error("the record's signature does not match this cluster's secret (another cluster, or written by someone without the secret)")]
    Signature,
    #[error("the record is not valid JSON: {0}")]
    Json(String),
}

/// HMAC-SHA256 of `label` under `secret`: one secret, separate keys per use.
pub fn derive(secret: &[u8], label: &str) -> Vec<u8> {
    // HMAC takes keys of any length; this cannot fail.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts any key length");
    mac.update(label.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

impl RecordKey {
    pub fn new(cluster_secret: &[u8]) -> Self {
        RecordKey(derive(cluster_secret, "confab node record v1"))
    }

    /// `hex(mac).json`: what goes into the node's key.
    pub fn seal(&self, record: &NodeRecord) -> String {
        // A struct of strings and numbers always serializes.
        let json = serde_json::to_string(record).expect("a node record serializes");
        seal(&self.0, &json)
    }

    /// The record in a value read from Redis, if this cluster's secret signed it. Anyone who
    /// can write to Redis but lacks the secret cannot make a node send people elsewhere.
    pub fn open(&self, value: &[u8]) -> Result<NodeRecord, RecordError> {
        let json = unseal(&self.0, value).map_err(|e| match e {
            Unsealed::Malformed => RecordError::Malformed,
            Unsealed::Signature => RecordError::Signature,
        })?;
        serde_json::from_slice(json).map_err(|e| RecordError::Json(e.to_string()))
    }
}

/// Why a sealed value does not open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unsealed {
    /// Not `64 hex digits . rest`.
    Malformed,
    /// The tag does not match the rest under the key.
    Signature,
}

/// `hex(HMAC-SHA256(key, json)).json`: how node records and relayed actions travel.
pub fn seal(key: &[u8], json: &str) -> String {
    // HMAC takes keys of any length; this cannot fail.
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(json.as_bytes());
    let mut out = crate::chat::service::hex(&mac.finalize().into_bytes());
    out.push('.');
    out.push_str(json);
    out
}

/// The JSON of a [`seal`]ed value whose tag verifies under `key` (compared in constant time).
/// Any bytes may come in (they are read from Redis); none panics.
pub fn unseal<'a>(key: &[u8], value: &'a [u8]) -> Result<&'a [u8], Unsealed> {
    let dot = value
        .iter()
        .position(|&b| b == b'.')
        .ok_or(Unsealed::Malformed)?;
    let (hex, json) = (&value[..dot], &value[dot + 1..]);
    if hex.len() != 64 {
        return Err(Unsealed::Malformed);
    }
    let mut tag = [0u8; 32];
    for (i, pair) in hex.chunks(2).enumerate() {
        let s = std::str::from_utf8(pair).map_err(|_| Unsealed::Malformed)?;
        tag[i] = u8::from_str_radix(s, 16).map_err(|_| Unsealed::Malformed)?;
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(json);
    mac.verify_slice(&tag).map_err(|_| Unsealed::Signature)?;
    Ok(json)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, cores: u32, participants: u32, pps: u64, rooms: u32) -> NodeRecord {
        NodeRecord {
            id: id.into(),
            url: format!("http://{id}.example"),
            rtsp: Some(format!("rtsp://{id}.example:8554")),
            cores,
            rooms,
            participants,
            packets_per_second: pps,
            room_list: Vec::new(),
            at: 1,
            draining: false,
        }
    }

    #[test]
    fn draining_and_dead_nodes_take_no_room() {
        let mut d = node("a", 2, 0, 0, 0);
        d.draining = true;
        let nodes = vec![d, node("b", 2, 5, 0, 2), node("c", 2, 9, 0, 3)];
        assert_eq!(
            least_loaded(&nodes, "a").map(|n| n.id.as_str()),
            Some("b"),
            "a is idle but draining"
        );
        assert_eq!(
            least_loaded_except(&nodes, "a", Some("b")).map(|n| n.id.as_str()),
            Some("c"),
            "b found dead"
        );
        assert_eq!(least_loaded_except(&nodes[..2], "a", Some("b")), None);
    }

    #[test]
    fn a_room_moves_off_a_dead_or_draining_node() {
        let alive = |n: &str| n != "gone-for-good";
        for (current, candidate, want, why) in [
            (
                Some("x"),
                "c",
                Placed::Taken("c".into()),
                "still on the gone node",
            ),
            (
                Some("b"),
                "c",
                Placed::Stays("b".into()),
                "someone moved it already",
            ),
            (None, "c", Placed::Taken("c".into()), "unplaced"),
            (
                Some("x"),
                "x",
                Placed::Taken("me".into()),
                "no other candidate",
            ),
            (
                Some("gone-for-good"),
                "gone-for-good",
                Placed::Taken("me".into()),
                "the candidate died too",
            ),
        ] {
            assert_eq!(
                move_from(current, "x", candidate, "me", alive),
                want,
                "{why}"
            );
        }
    }

    #[test]
    fn the_least_loaded_node_wins() {
        let me = "b";
        for (nodes, want, why) in [
            (vec![], None, "no live node"),
            (vec![node("a", 2, 0, 0, 0)], Some("a"), "the only one"),
            (
                vec![node("a", 2, 4, 0, 1), node("b", 2, 2, 0, 1)],
                Some("b"),
                "fewer participants",
            ),
            (
                vec![node("a", 8, 8, 0, 1), node("b", 2, 4, 0, 1)],
                Some("a"),
                "per core: 1 on 8 cores beats 2 on 2",
            ),
            (
                vec![node("a", 2, 2, 0, 1), node("b", 2, 2, 1000, 1)],
                Some("a"),
                "same people, b forwards 1000 packets/s",
            ),
            (
                vec![node("a", 2, 0, 0, 0), node("c", 2, 0, 0, 3)],
                Some("a"),
                "idle: fewer rooms",
            ),
            (
                vec![node("a", 2, 0, 0, 0), node("b", 2, 0, 0, 0)],
                Some("b"),
                "a tie: the node asking, no redirect",
            ),
            (
                vec![node("c", 2, 0, 0, 0), node("a", 2, 0, 0, 0)],
                Some("a"),
                "a tie elsewhere: the smallest id, whatever the order",
            ),
        ] {
            assert_eq!(
                least_loaded(&nodes, me).map(|n| n.id.as_str()),
                want,
                "{why}"
            );
        }
    }

    #[test]
    fn a_placed_room_stays_while_its_node_lives() {
        let alive = |n: &str| n != "dead";
        for (current, candidate, want, why) in [
            (
                None,
                "a",
                Placed::Taken("a".into()),
                "unplaced: the candidate",
            ),
            (
                Some("b"),
                "a",
                Placed::Stays("b".into()),
                "placed on a live node",
            ),
            (
                Some("dead"),
                "a",
                Placed::Taken("a".into()),
                "its node is gone: re-placed",
            ),
            (
                None,
                "dead",
                Placed::Taken("me".into()),
                "the candidate died: the node asking",
            ),
            (
                Some("dead"),
                "dead",
                Placed::Taken("me".into()),
                "both gone",
            ),
        ] {
            assert_eq!(place(current, candidate, "me", alive), want, "{why}");
        }
    }

    #[test]
    fn two_first_joins_agree() {
        // Two nodes place the same new room at once, each choosing itself. The script runs one
        // after the other inside Redis: the second finds the first's key and follows it.
        let alive = |_: &str| true;
        let mut key: Option<String> = None;
        let mut outcome = Vec::new();
        for me in ["a", "b"] {
            let p = place(key.as_deref(), me, me, alive);
            key = Some(p.node().to_owned());
            outcome.push(p);
        }
        assert_eq!(
            outcome,
            [Placed::Taken("a".into()), Placed::Stays("a".into())]
        );
    }

    #[test]
    fn records_are_signed() {
        let key = RecordKey::new(b"a cluster secret of some length");
        let mut r = node("n1", 4, 3, 120, 1);
        r.room_list = vec![("demo".into(), 3)];
        let sealed = key.seal(&r);
        assert_eq!(key.open(sealed.as_bytes()), Ok(r.clone()));
        // Another cluster's secret, a changed URL, garbage: refused, never a panic.
        let other = RecordKey::new(b"another cluster's secret");
        assert_eq!(other.open(sealed.as_bytes()), Err(RecordError::Signature));
        let forged = sealed.replace("http://n1.example", "http://evil.example");
        assert_eq!(key.open(forged.as_bytes()), Err(RecordError::Signature));
        for junk in [
            &b""[..],
            b"no dot",
            b".{}",
            b"zz.{}",
            "é".repeat(40).as_bytes(),
            format!("{}.{{}}", "g".repeat(64)).as_bytes(),
        ] {
            assert!(key.open(junk).is_err(), "{junk:?}");
        }
        let bad_json = {
            let s = key.seal(&r);
            let (mac, _) = s.split_once('.').unwrap();
            format!("{mac}.not json")
        };
        assert_eq!(key.open(bad_json.as_bytes()), Err(RecordError::Signature));
    }

    #[test]
    fn records_without_an_rtsp_base_are_read() {
        // As written by a node from before RTSP took part in placement.
        let json = r#"{"id":"n1","url":"http://n1.example","cores":2,"rooms":0,"participants":0,"packets_per_second":0,"at":1}"#;
        let key = RecordKey::new(b"a cluster secret of some length");
        let sealed = seal(&key.0, json);
        let r = key.open(sealed.as_bytes()).expect("an older record");
        assert_eq!((r.id.as_str(), r.rtsp), ("n1", None));
    }
}
