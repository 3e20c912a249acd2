//! Cluster mode (`--redis`): several confab nodes behind one name, with Redis as their
//! registry. Each node keeps a signed record of itself in Redis (a key with a TTL, refreshed
//! every heartbeat); each room in use has a key naming the node it lives on, taken atomically
//! at its first join by the least-loaded live node; a join that reaches another node is told
//! where to go (a `redirect` message, `signaling.rs`). docs/cluster.md has the data model.
//!
//! This file is the shell: the Redis connection, the heartbeat task and the scripts. What is
//! decided (who is least loaded, when a room moves, what a record is) is `placement.rs`.

pub mod action;
pub mod cameras;
pub mod placement;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::ConnectionManager;
use redis::AsyncCommands;
use tokio::sync::{mpsc, oneshot, watch};

use crate::metrics::Metrics;
use crate::names::RoomName;
use crate::room::Rooms;
use action::{Body, Envelope, RemoteAction};
use placement::{NodeRecord, RecordKey};

/// How long a node waits for the room's node to answer a relayed operator action.
const RELAY_TIMEOUT: Duration = Duration::from_secs(3);

/// An operator action relayed to this node (the room is here): carry it out and answer with
/// the HTTP status and, for errors, the message.
pub struct RelayedAction {
    pub room: String,
    pub action: RemoteAction,
    pub reply: oneshot::Sender<(u16, String)>,
}

/// How long one Redis operation may take before the node counts Redis as unreachable.
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

/// What `--redis`, `--node-url` and `--cluster-secret` configure.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// `redis://[:password@]host:6379[/db]`.
    pub redis: String,
    /// This node's public base URL (scheme, host, port; no path).
    pub node_url: url::Url,
    pub secret: String,
}

impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Neither the secret nor Redis's password is ever printed.
        f.debug_struct("ClusterConfig")
            .field("redis", &redacted(&self.redis))
            .field("node_url", &self.node_url.as_str())
            .finish_non_exhaustive()
    }
}

/// A Redis URL without its password, for messages.
pub fn redacted(redis: &str) -> String {
    match url::Url::parse(redis) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            u.to_string()
        }
        Err(_) => "(an unparsable URL)".into(),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("--redis {url}: {source} (use redis://HOST:6379)")]
    BadUrl {
        url: String,
        source: redis::RedisError,
    },
    #[error(
        "cannot reach Redis at {url}: {reason}. Start it or fix --redis; cluster mode needs it"
    )]
    Connect { url: String, reason: String },
    #[error("this node cannot reach Redis at {url} ({reason}), so it cannot tell which node serves room {room}; try again in a moment, and if it lasts, ask the operator to check Redis")]
    Unavailable {
        url: String,
        room: RoomName,
        reason: String,
    },
    #[error("room {room} is placed on node {node}, whose record is missing or not signed with this cluster's secret; try again in a moment")]
    UnknownNode { room: RoomName, node: String },
    #[error("room {room} is on node {url}, which did not answer within 3 s; try again, or send the request to that node")]
    NoAnswer { room: RoomName, url: String },
}

/// Where a join for a room goes.
#[derive(Debug, Clone, PartialEq)]
pub enum Placement {
    Here,
    There(NodeRecord),
}

/// Run atomically inside Redis: the rule of [`placement::place`]. KEYS[1] the room's key;
/// ARGV: the candidate's id, the room key's TTL (ms), the node key prefix, the caller's id.
const PLACE: &str = r"
local cur = redis.call('GET', KEYS[1])
if cur and redis.call('EXISTS', ARGV[3] .. cur) == 1 then return cur end
local who = ARGV[1]
if redis.call('EXISTS', ARGV[3] .. who) == 0 then who = ARGV[4] end
redis.call('SET', KEYS[1], who, 'PX', ARGV[2])
return who
";

/// The owner's refresh of a room it serves: extend the key if it is ours (or gone, e.g. after
/// Redis restarted); 0 if another node holds it.
const REFRESH: &str = r"
local cur = redis.call('GET', KEYS[1])
if cur == false or cur == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
";

/// Run atomically inside Redis: the rule of [`placement::move_from`], for a room whose node
/// was found dead (or is this one, draining). KEYS[1] the room's key; ARGV: the gone node's
/// id, the candidate's id, the room key's TTL (ms), the node key prefix, the caller's id.
const MOVE: &str = r"
local cur = redis.call('GET', KEYS[1])
if cur and cur ~= ARGV[1] and redis.call('EXISTS', ARGV[4] .. cur) == 1 then return cur end
local who = ARGV[2]
if who == ARGV[1] or redis.call('EXISTS', ARGV[4] .. who) == 0 then who = ARGV[5] end
redis.call('SET', KEYS[1], who, 'PX', ARGV[3])
return who
";

/// How long the probe of a node that a rejoining client could not reach may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// This node's membership of the cluster.
pub struct Cluster {
    me: String,
    url: String,
    /// `rtsp://{host of --node-url}:{bound RTSP port}`, in this node's record.
    rtsp: String,
    /// Redis's URL without its password, for messages.
    redis_shown: String,
    conn: ConnectionManager,
    key: RecordKey,
    place: redis::Script,
    /// The live nodes as of the last heartbeat (this one included).
    nodes: RwLock<Arc<Vec<NodeRecord>>>,
    /// Whether the last heartbeat reached Redis (logged when it changes).
    reachable: AtomicBool,
    cores: u32,
    client: redis::Client,
    /// Signs and checks relayed operator actions.
    relay: Mutex<action::Relay>,
    /// Relayed actions sent, waiting for their answer, by request id.
    pending: Mutex<HashMap<String, oneshot::Sender<(u16, String)>>>,
    move_script: redis::Script,
    /// Set when this node starts draining: no room is placed or kept here any more.
    draining: AtomicBool,
    /// Wakes the heartbeat at once (drain start).
    beat_now: tokio::sync::Notify,
    /// Woken after each heartbeat that reached Redis (the cameras' reconcile follows it).
    beats: tokio::sync::Notify,
}

impl Cluster {
    /// Connects to Redis (failing clearly if it cannot) and registers this node at once.
    /// `http_port` and `rtsp_port` are the ports bound (a `--node-url` port 0 stands for the
    /// first; the second goes into the record's RTSP base).
    pub async fn connect(
        config: &ClusterConfig,
        http_port: u16,
        rtsp_port: u16,
    ) -> Result<Arc<Cluster>, ClusterError> {
        let shown = redacted(&config.redis);
        let client =
            redis::Client::open(config.redis.as_str()).map_err(|source| ClusterError::BadUrl {
                url: shown.clone(),
                source,
            })?;
        let pubsub_client = client.clone();
        let manager = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(REDIS_TIMEOUT)
            .set_response_timeout(REDIS_TIMEOUT)
            .set_number_of_retries(1)
            .set_max_delay(1000);
        let conn = tokio::time::timeout(
            REDIS_TIMEOUT * 2,
            ConnectionManager::new_with_config(client, manager),
        )
        .await
        .map_err(|_| ClusterError::Connect {
            url: shown.clone(),
            reason: "no answer within 4 s".into(),
        })?
        .map_err(|e| ClusterError::Connect {
            url: shown.clone(),
            reason: e.to_string(),
        })?;
        let mut node_url = config.node_url.clone();
        // Port 0 in --node-url stands for the port --http bound (tests, and --http …:0).
        if node_url.port() == Some(0) {
            let _ = node_url.set_port(Some(http_port));
        }
        let url = node_url.as_str().trim_end_matches('/').to_owned();
        // `host_str` keeps an IPv6 address in brackets, as a URL needs it.
        let rtsp = format!(
            "rtsp://{}:{rtsp_port}",
            node_url.host_str().unwrap_or("localhost")
        );
        let me = crate::secret::token(12).to_ascii_lowercase();
        let cluster = Arc::new(Cluster {
            relay: Mutex::new(action::Relay::new(config.secret.as_bytes(), &me)),
            pending: Mutex::new(HashMap::new()),
            beats: tokio::sync::Notify::new(),
            client: pubsub_client,
            me,
            url,
            rtsp,
            redis_shown: shown.clone(),
            conn,
            key: RecordKey::new(config.secret.as_bytes()),
            place: redis::Script::new(PLACE),
            move_script: redis::Script::new(MOVE),
            draining: AtomicBool::new(false),
            beat_now: tokio::sync::Notify::new(),
            nodes: RwLock::new(Arc::new(Vec::new())),
            reachable: AtomicBool::new(true),
            cores: std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(1),
        });
        let record = cluster.record(Vec::new(), 0);
        cluster
            .beat(&record, &[])
            .await
            .map_err(|e| ClusterError::Connect {
                url: shown,
                reason: e.to_string(),
            })?;
        Ok(cluster)
    }

    pub fn id(&self) -> &str {
        &self.me
    }

    /// This node's `--node-url`, with the real port.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The live nodes as of the last heartbeat.
    pub fn nodes(&self) -> Arc<Vec<NodeRecord>> {
        self.nodes.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The origins of the cluster's nodes (`http://host:port`), for the WebSocket's Origin
    /// check and the pages' Content-Security-Policy: a page of one node opens its session on
    /// another after a redirect.
    pub fn origins(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .nodes()
            .iter()
            .map(|n| n.url.as_str())
            .chain(std::iter::once(self.url.as_str()))
            .filter_map(|u| url::Url::parse(u).ok())
            .map(|u| u.origin().ascii_serialization().to_ascii_lowercase())
            .collect();
        v.sort();
        v.dedup();
        v
    }

    fn record(&self, room_list: Vec<(String, u32)>, packets_per_second: u64) -> NodeRecord {
        NodeRecord {
            id: self.me.clone(),
            url: self.url.clone(),
            rtsp: Some(self.rtsp.clone()),
            cores: self.cores,
            rooms: room_list.len() as u32,
            participants: room_list.iter().map(|(_, n)| n).sum(),
            packets_per_second,
            room_list,
            at: crate::chat::unix_millis(std::time::SystemTime::now()).max(0) as u64,
            draining: self.is_draining(),
        }
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// The signaling URLs of the live nodes that take rooms, this one first: a client rejoins
    /// through another when this one cannot be reached.
    pub fn signaling_urls(&self) -> Vec<String> {
        let mut urls = vec![ws_url(&self.url)];
        for n in self.nodes().iter() {
            if n.id != self.me && !n.draining {
                urls.push(ws_url(&n.url));
            }
        }
        urls
    }

    /// Starts draining: from the next heartbeat, which goes out at once, no node places a
    /// room here, and this node stops keeping its rooms' keys. Returns once that heartbeat
    /// has reached Redis (or after 3 s).
    pub async fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
        let beaten = self.beats.notified();
        self.beat_now.notify_one();
        let _ = tokio::time::timeout(Duration::from_secs(3), beaten).await;
    }

    /// One heartbeat: our record, the keys of the rooms we serve, then the table of live nodes.
    async fn beat(&self, record: &NodeRecord, rooms: &[String]) -> redis::RedisResult<()> {
        let mut conn = self.conn.clone();
        let mut pipe = redis::pipe();
        pipe.set_options(
            format!("{}{}", placement::NODE_PREFIX, self.me),
            self.key.seal(record),
            redis::SetOptions::default()
                .with_expiration(redis::SetExpiry::PX(placement::NODE_TTL_MS)),
        )
        .ignore()
        .sadd(placement::NODES_KEY, &self.me)
        .ignore();
        for room in rooms {
            // EVAL, not EVALSHA, in a pipeline: a script cache emptied by a Redis restart
            // cannot fail the whole heartbeat.
            pipe.cmd("EVAL")
                .arg(REFRESH)
                .arg(1)
                .arg(format!("{}{room}", placement::ROOM_PREFIX))
                .arg(&self.me)
                .arg(placement::ROOM_TTL_MS);
        }
        let refreshed: Vec<i64> = timeout(pipe.query_async(&mut conn)).await?;
        for (room, ok) in rooms.iter().zip(refreshed) {
            if ok == 0 {
                tracing::warn!(room = %room, "room is in use here but Redis names another node for it; newcomers go there");
            }
        }
        let ids: Vec<String> = timeout(conn.smembers(placement::NODES_KEY)).await?;
        let mut live = Vec::new();
        if !ids.is_empty() {
            let keys: Vec<String> = ids
                .iter()
                .map(|id| format!("{}{id}", placement::NODE_PREFIX))
                .collect();
            let values: Vec<Option<Vec<u8>>> = timeout(conn.mget(&keys)).await?;
            let mut gone = Vec::new();
            for (id, value) in ids.iter().zip(values) {
                match value.map(|v| self.key.open(&v)) {
                    Some(Ok(r)) if r.id == *id => live.push(r),
                    Some(Ok(_)) => {
                        tracing::warn!(node = %id, "a node record names another id; ignored")
                    }
                    Some(Err(e)) => {
                        tracing::warn!(node = %id, error = %e, "a node record in Redis is not ours; ignored")
                    }
                    None => gone.push(id.clone()),
                }
            }
            if !gone.is_empty() {
                let _: () = timeout(conn.srem(placement::NODES_KEY, &gone)).await?;
                tracing::info!(nodes = ?gone, "nodes left the cluster (their records expired)");
            }
        }
        live.sort_by(|a, b| a.id.cmp(&b.id));
        *self.nodes.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(live);
        Ok(())
    }

    /// Heartbeats until shutdown, then takes this node's record out (rooms placed here are
    /// re-placed at their next join).
    pub async fn run(
        self: Arc<Self>,
        rooms: Arc<Rooms>,
        metrics: Arc<Metrics>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(Duration::from_millis(placement::HEARTBEAT_MS));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let packets = || {
            metrics.received_packets.load(Ordering::Relaxed)
                + metrics.forwarded_packets.load(Ordering::Relaxed)
        };
        let mut last = (packets(), std::time::Instant::now());
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.beat_now.notified() => {}
                _ = shutdown.wait_for(|s| *s) => break,
            }
            let now = (packets(), std::time::Instant::now());
            let secs = now.1.duration_since(last.1).as_secs_f64().max(0.001);
            let pps = (now.0.saturating_sub(last.0) as f64 / secs) as u64;
            last = now;
            let room_list = rooms
                .list()
                .into_iter()
                .map(|(r, n)| (r.to_string(), n as u32))
                .collect();
            let record = self.record(room_list, pps);
            // A draining node no longer holds its rooms' keys: they move with their people.
            let ours: Vec<String> = if self.is_draining() {
                Vec::new()
            } else {
                record.room_list.iter().map(|(r, _)| r.clone()).collect()
            };
            match self.beat(&record, &ours).await {
                Ok(()) => {
                    if !self.reachable.swap(true, Ordering::Relaxed) {
                        tracing::info!(redis = %self.redis_shown, "Redis is reachable again");
                    }
                    self.beats.notify_waiters();
                }
                Err(e) => {
                    if self.reachable.swap(false, Ordering::Relaxed) {
                        tracing::error!(redis = %self.redis_shown, error = %e, "cannot reach Redis: only rooms already on this node take joins until it is back");
                    }
                }
            }
        }
        let mut conn = self.conn.clone();
        let gone: redis::RedisResult<()> = timeout(
            redis::pipe()
                .del(format!("{}{}", placement::NODE_PREFIX, self.me))
                .ignore()
                .srem(placement::NODES_KEY, &self.me)
                .ignore()
                .query_async(&mut conn),
        )
        .await;
        if let Err(e) = gone {
            tracing::warn!(error = %e, "could not take this node out of Redis; its record expires by itself");
        }
    }

    /// Where a join for `room` goes: the room's node if it has a live one, else the
    /// least-loaded live node, which takes it (atomically, inside Redis). `here_already`: the
    /// room has people on this node, which keeps taking its joins if Redis cannot be asked.
    ///
    /// `previous`: the node a rejoining client was last on. If the room is still placed there
    /// and that node does not answer a connection within 1 s, the room moves now (see
    /// [`Cluster::move_room`]), not when its record expires. A draining node moves every room
    /// it is asked about.
    pub async fn place(
        &self,
        room: &RoomName,
        here_already: bool,
        previous: Option<&str>,
    ) -> Result<Placement, ClusterError> {
        if self.is_draining() {
            return self.move_room(room, &self.me.clone()).await;
        }
        let placed = self.place_once(room, here_already).await?;
        match &placed {
            Placement::There(node) if Some(node.id.as_str()) == previous => {
                if probe(&node.url).await {
                    Ok(placed)
                } else {
                    tracing::warn!(room = %room, node = %node.id, url = %node.url, "the room's node does not answer (a rejoining client lost it): moving the room");
                    self.move_room(room, &node.id).await
                }
            }
            _ => Ok(placed),
        }
    }

    /// Moves `room` off node `gone` (dead, or this node draining) to the least-loaded other
    /// live node, atomically: if someone moved it already, it stays where they put it.
    pub async fn move_room(&self, room: &RoomName, gone: &str) -> Result<Placement, ClusterError> {
        let nodes = self.nodes();
        let candidate = placement::least_loaded_except(&nodes, &self.me, Some(gone))
            .map(|n| n.id.clone())
            .unwrap_or_else(|| self.me.clone());
        let placed = self
            .run_placement(&self.move_script, room, &[gone, &candidate])
            .await;
        match placed {
            Ok(owner) => {
                tracing::info!(room = %room, from = %gone, to = %owner, "room moved");
                self.resolve(room, owner, &nodes).await
            }
            Err(e) => Err(ClusterError::Unavailable {
                url: self.redis_shown.clone(),
                room: room.clone(),
                reason: e.to_string(),
            }),
        }
    }

    /// Runs a placement script (`PLACE`, `MOVE`) on `room`'s key: its own leading arguments,
    /// then the room key's TTL, the node key prefix and this node's id, as both scripts take.
    /// Returns the owner the script settled on.
    async fn run_placement(
        &self,
        script: &redis::Script,
        room: &RoomName,
        leading: &[&str],
    ) -> redis::RedisResult<String> {
        let mut conn = self.conn.clone();
        let mut call = script.key(format!("{}{room}", placement::ROOM_PREFIX));
        for a in leading {
            call.arg(*a);
        }
        call.arg(placement::ROOM_TTL_MS)
            .arg(placement::NODE_PREFIX)
            .arg(&self.me);
        timeout(call.invoke_async(&mut conn)).await
    }

    async fn place_once(
        &self,
        room: &RoomName,
        here_already: bool,
    ) -> Result<Placement, ClusterError> {
        let nodes = self.nodes();
        let candidate = placement::least_loaded(&nodes, &self.me)
            .map(|n| n.id.clone())
            .unwrap_or_else(|| self.me.clone());
        let placed = self.run_placement(&self.place, room, &[&candidate]).await;
        let owner = match placed {
            Ok(o) => o,
            Err(e) if here_already => {
                tracing::warn!(room = %room, error = %e, "Redis unreachable: the join stays on this node, where the room already is");
                return Ok(Placement::Here);
            }
            Err(e) => {
                return Err(ClusterError::Unavailable {
                    url: self.redis_shown.clone(),
                    room: room.clone(),
                    reason: e.to_string(),
                })
            }
        };
        self.resolve(room, owner, &nodes).await
    }

    /// The placement that node id `owner` stands for.
    async fn resolve(
        &self,
        room: &RoomName,
        owner: String,
        nodes: &[NodeRecord],
    ) -> Result<Placement, ClusterError> {
        if owner == self.me {
            return Ok(Placement::Here);
        }
        let mut conn = self.conn.clone();
        if let Some(n) = nodes.iter().find(|n| n.id == owner) {
            return Ok(Placement::There(n.clone()));
        }
        // A node that registered since our last heartbeat.
        let value: redis::RedisResult<Option<Vec<u8>>> =
            timeout(conn.get(format!("{}{owner}", placement::NODE_PREFIX))).await;
        match value {
            Ok(Some(v)) => match self.key.open(&v) {
                Ok(r) if r.id == owner => Ok(Placement::There(r)),
                _ => Err(ClusterError::UnknownNode {
                    room: room.clone(),
                    node: owner,
                }),
            },
            Ok(None) => Err(ClusterError::UnknownNode {
                room: room.clone(),
                node: owner,
            }),
            Err(e) => Err(ClusterError::Unavailable {
                url: self.redis_shown.clone(),
                room: room.clone(),
                reason: e.to_string(),
            }),
        }
    }
}

/// The registry of cameras added by REST (`cameras.rs` decides what to do with it).
impl Cluster {
    /// Resolves after the next heartbeat that reached Redis.
    pub async fn beaten(&self) {
        self.beats.notified().await;
    }

    /// Every entry of the registry, as stored (not yet checked).
    pub async fn cameras(&self) -> redis::RedisResult<Vec<(String, Vec<u8>)>> {
        let mut conn = self.conn.clone();
        timeout(conn.hgetall(cameras::REGISTRY_KEY)).await
    }

    /// Adds an entry unless its field is taken: false if it was.
    pub async fn camera_put(
        &self,
        room: &RoomName,
        field: &str,
        sealed: &str,
    ) -> Result<bool, ClusterError> {
        let mut conn = self.conn.clone();
        timeout(conn.hset_nx(cameras::REGISTRY_KEY, field, sealed))
            .await
            .map_err(|e| self.unavailable(room, e))
    }

    /// Deletes an entry: false if there was none.
    pub async fn camera_take(&self, room: &RoomName, field: &str) -> Result<bool, ClusterError> {
        let mut conn = self.conn.clone();
        let n: i64 = timeout(conn.hdel(cameras::REGISTRY_KEY, field))
            .await
            .map_err(|e| self.unavailable(room, e))?;
        Ok(n > 0)
    }

    fn unavailable(&self, room: &RoomName, e: redis::RedisError) -> ClusterError {
        ClusterError::Unavailable {
            url: self.redis_shown.clone(),
            room: room.clone(),
            reason: e.to_string(),
        }
    }
}

impl Cluster {
    /// The live node other than this one that `room` is placed on, if any (a room placed here,
    /// on a dead node, or nowhere: `None`, and the caller acts locally).
    pub async fn owner_elsewhere(
        &self,
        room: &RoomName,
    ) -> Result<Option<NodeRecord>, ClusterError> {
        let mut conn = self.conn.clone();
        let owner: Option<String> = timeout(conn.get(format!("{}{room}", placement::ROOM_PREFIX)))
            .await
            .map_err(|e| ClusterError::Unavailable {
                url: self.redis_shown.clone(),
                room: room.clone(),
                reason: e.to_string(),
            })?;
        Ok(owner
            .filter(|o| *o != self.me)
            .and_then(|o| self.nodes().iter().find(|n| n.id == o).cloned()))
    }

    /// Hands an operator action for `room` to `node` and waits for its answer: the HTTP status
    /// and message the REST call should give.
    pub async fn relay(
        &self,
        node: &NodeRecord,
        room: &RoomName,
        action: RemoteAction,
    ) -> Result<(u16, String), ClusterError> {
        let id = crate::secret::token(16);
        let envelope = Envelope {
            id: id.clone(),
            from: self.me.clone(),
            to: node.id.clone(),
            at: unix_ms(),
            body: Body::Request {
                room: room.to_string(),
                action,
            },
        };
        let sealed = self
            .relay
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .seal(&envelope);
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone(), tx);
        let unavailable = |reason: String| ClusterError::Unavailable {
            url: self.redis_shown.clone(),
            room: room.clone(),
            reason,
        };
        let mut conn = self.conn.clone();
        let sent: redis::RedisResult<i64> =
            timeout(conn.publish(format!("{}{}", action::ACTIONS_PREFIX, node.id), sealed)).await;
        let answer = match sent {
            Err(e) => Err(unavailable(e.to_string())),
            // Nobody subscribed: the node is gone or not listening.
            Ok(0) => Err(ClusterError::NoAnswer {
                room: room.clone(),
                url: node.url.clone(),
            }),
            Ok(_) => match tokio::time::timeout(RELAY_TIMEOUT, rx).await {
                Ok(Ok(answer)) => Ok(answer),
                _ => Err(ClusterError::NoAnswer {
                    room: room.clone(),
                    url: node.url.clone(),
                }),
            },
        };
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        answer
    }

    /// Listens on this node's channels until shutdown (reconnecting when Redis goes away):
    /// actions for rooms here come out of the returned queue, answers to our own relays go to
    /// whoever waits for them. Anything not signed, not for us, stale or replayed is dropped
    /// with a warning.
    pub fn listen(
        self: Arc<Self>,
        mut shutdown: watch::Receiver<bool>,
    ) -> mpsc::Receiver<RelayedAction> {
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            let channels = [
                format!("{}{}", action::ACTIONS_PREFIX, self.me),
                format!("{}{}", action::REPLIES_PREFIX, self.me),
            ];
            loop {
                let session = async {
                    let mut pubsub = self.client.get_async_pubsub().await?;
                    pubsub.subscribe(&channels).await?;
                    let mut messages = pubsub.on_message();
                    while let Some(m) = messages.next().await {
                        let payload: Vec<u8> = m.get_payload_bytes().to_vec();
                        self.received(&payload, &tx).await;
                    }
                    redis::RedisResult::Ok(())
                };
                tokio::select! {
                    r = session => {
                        if let Err(e) = r {
                            tracing::debug!(error = %e, "relay channel: Redis connection lost; reconnecting");
                        }
                    }
                    _ = shutdown.wait_for(|s| *s) => return,
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = shutdown.wait_for(|s| *s) => return,
                }
            }
        });
        rx
    }

    async fn received(&self, payload: &[u8], tx: &mpsc::Sender<RelayedAction>) {
        let opened = self
            .relay
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .open(payload, unix_ms());
        let e = match opened {
            Ok(e) => e,
            Err(err) => {
                tracing::warn!(error = %err, "relayed message refused");
                return;
            }
        };
        match e.body {
            Body::Reply { status, message } => {
                let waiting = self
                    .pending
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&e.id);
                if let Some(w) = waiting {
                    let _ = w.send((status, message));
                }
            }
            Body::Request { room, action } => {
                tracing::info!(room = %room, from = %e.from, action = ?action, "operator action relayed from another node");
                let (reply, answer) = oneshot::channel();
                if tx
                    .send(RelayedAction {
                        room,
                        action,
                        reply,
                    })
                    .await
                    .is_err()
                {
                    return;
                }
                let (status, message) = answer
                    .await
                    .unwrap_or((500, "the action was not carried out".into()));
                let envelope = Envelope {
                    id: e.id,
                    from: self.me.clone(),
                    to: e.from.clone(),
                    at: unix_ms(),
                    body: Body::Reply { status, message },
                };
                let sealed = self
                    .relay
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .seal(&envelope);
                let mut conn = self.conn.clone();
                let sent: redis::RedisResult<i64> =
                    timeout(conn.publish(format!("{}{}", action::REPLIES_PREFIX, e.from), sealed))
                        .await;
                if let Err(err) = sent {
                    tracing::warn!(error = %err, "could not answer a relayed action");
                }
            }
        }
    }
}

/// Whether the node at `node_url` accepts a TCP connection on its HTTP port within 1 s. A
/// node killed on a live host refuses at once; a host that is gone times out.
async fn probe(node_url: &str) -> bool {
    let Ok(u) = url::Url::parse(node_url) else {
        return false;
    };
    let (Some(host), Some(port)) = (u.host_str(), u.port_or_known_default()) else {
        return false;
    };
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    matches!(
        tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect((host, port))).await,
        Ok(Ok(_))
    )
}

fn unix_ms() -> u64 {
    crate::chat::unix_millis(std::time::SystemTime::now()).max(0) as u64
}

/// The signaling URL of a node: `http(s)://host:port` → `ws(s)://host:port/ws`.
pub fn ws_url(node_url: &str) -> String {
    let rest = node_url.trim_end_matches('/');
    if let Some(r) = rest.strip_prefix("https://") {
        format!("wss://{r}/ws")
    } else if let Some(r) = rest.strip_prefix("http://") {
        format!("ws://{r}/ws")
    } else {
        format!("{rest}/ws")
    }
}

async fn timeout<T>(
    f: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> redis::RedisResult<T> {
    match tokio::time::timeout(REDIS_TIMEOUT, f).await {
        Ok(r) => r,
        Err(_) => Err(redis::RedisError::from((
            redis::ErrorKind::IoError,
            "no answer within 2 s",
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(ws_url("https://n1.example.org"), "wss://n1.example.org/ws");
        assert_eq!(ws_url("http://10.0.0.2:8080/"), "ws://10.0.0.2:8080/ws");
        assert_eq!(
            redacted("redis://:hunter2@redis.internal:6379/0"),
            "redis://:***@redis.internal:6379/0"
        );
        assert_eq!(redacted("redis://r:6379"), "redis://r:6379");
    }
}
