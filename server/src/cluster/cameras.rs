//! Pulled cameras in cluster mode: only the room's node pulls a room's cameras.
//!
//! The cameras to pull are the `[[camera]]` entries of the config (the same on every node) and
//! those added by REST on any node, which live in the Redis hash [`REGISTRY_KEY`] (field
//! `{room}/{name}`, value the camera's REST body sealed with a key derived from the cluster
//! secret, so that someone who can write to Redis but lacks the secret cannot make nodes pull
//! URLs of their choosing). Every node reconciles after each heartbeat and right after a REST
//! add: for each room with cameras it asks placement where the room lives; a room placed here
//! gets its cameras pulled, a room placed elsewhere gets ours stopped (it moved), and a pull
//! whose entry is gone stops. A killed owner's record expires, the next reconcile on a live
//! node re-places the room there, and that node pulls its cameras.
//!
//! The decision ([`reconcile`]) and the entries ([`CameraKey`], [`CameraEntry`]) are pure; the
//! [`Cameras`] shell reads Redis and starts and stops pulls.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::placement::{derive, seal, unseal, Unsealed};
use super::{Cluster, Placement};
use crate::bridge::pull::{PullOptions, PullSpec, SpecError};
use crate::bridge::{Bridge, BridgeError};
use crate::names::{ParticipantId, RoomName};
use crate::room::Rooms;

/// The hash of cameras added by REST: field `{room}/{name}`, value a sealed [`CameraEntry`].
pub const REGISTRY_KEY: &str = "confab:cameras";

/// The registry's field of a camera.
pub fn field(room: &RoomName, name: &ParticipantId) -> String {
    format!("{room}/{name}")
}

/// A camera added by REST, as the registry holds it: the request's body and its room. The URL
/// keeps its credentials (the room's node needs them to pull), so they are readable by anyone
/// who can read Redis (docs/cluster.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CameraEntry {
    pub room: String,
    pub name: String,
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fps: Option<f64>,
}

impl CameraEntry {
    /// What to pull, validated as a REST body is.
    pub fn spec(&self) -> Result<PullSpec, SpecError> {
        let options = PullOptions {
            transport: self.transport.as_deref(),
            mode: self.mode.as_deref(),
            fps: self.fps,
        };
        PullSpec::parse(&self.room, &self.name, &self.url, &options)
    }
}

/// Why a registry entry is not pulled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    #[error("not a signed camera entry (no `mac.json`)")]
    Malformed,
    #[error("the entry's signature does not match this cluster's secret (written by someone without it)")]
    Signature,
    #[error("the entry is not JSON of a camera: {0}")]
    Json(String),
    #[error(
        "the entry is for {inside:?}, stored under {field:?} (moved by someone without the secret)"
    )]
    Moved { field: String, inside: String },
    #[error("{0}")]
    Spec(SpecError),
}

/// The key camera entries are sealed with, derived from the cluster secret.
#[derive(Clone)]
pub struct CameraKey(Vec<u8>);

impl std::fmt::Debug for CameraKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CameraKey(..)")
    }
}

impl CameraKey {
    pub fn new(cluster_secret: &[u8]) -> Self {
        CameraKey(derive(cluster_secret, "confab camera v1"))
    }

    /// `hex(mac).json`: the registry's value.
    pub fn seal(&self, entry: &CameraEntry) -> String {
        // Strings and a number always serialize.
        seal(
            &self.0,
            &serde_json::to_string(entry).expect("a camera entry serializes"),
        )
    }

    /// The camera of registry field `field` with value `value`, if this cluster's secret
    /// sealed it for that field and it is a valid camera. Any bytes may come in; none panics.
    pub fn open(&self, field: &str, value: &[u8]) -> Result<PullSpec, EntryError> {
        let json = unseal(&self.0, value).map_err(|e| match e {
            Unsealed::Malformed => EntryError::Malformed,
            Unsealed::Signature => EntryError::Signature,
        })?;
        let entry: CameraEntry =
            serde_json::from_slice(json).map_err(|e| EntryError::Json(e.to_string()))?;
        let spec = entry.spec().map_err(EntryError::Spec)?;
        let inside = self::field(&spec.room, &spec.name);
        if inside != field {
            return Err(EntryError::Moved {
                field: field.to_owned(),
                inside,
            });
        }
        Ok(spec)
    }
}

/// Where placement says a camera room lives, as this node asked it this round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    Here,
    Elsewhere,
    /// Redis could not be asked: nothing changes for this room until it can.
    Unknown,
}

/// What a node does with one camera.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Pull(PullSpec),
    Stop { room: RoomName, name: ParticipantId },
}

/// The reconcile rule. `wanted`: the cameras of the config and the registry; `owners`: where
/// each of their rooms lives; `pulling`: this node's pulls, listed *before* the registry was
/// read (so that a pull started after the read is not taken for a deleted one).
///
/// - a wanted camera of a room placed here that is not pulled here is pulled;
/// - a pull whose room is placed elsewhere stops (the room moved);
/// - a pull nobody wants any more stops (its entry was deleted on another node);
/// - a room whose owner is unknown keeps what it has.
pub fn reconcile(
    wanted: &[PullSpec],
    owners: &BTreeMap<RoomName, Owner>,
    pulling: &BTreeSet<(RoomName, ParticipantId)>,
) -> Vec<Step> {
    let owner = |room: &RoomName| owners.get(room).copied().unwrap_or(Owner::Unknown);
    let mut steps = Vec::new();
    let mut seen = BTreeSet::new();
    for spec in wanted {
        let key = (spec.room.clone(), spec.name.clone());
        if owner(&spec.room) == Owner::Here && !pulling.contains(&key) && !seen.contains(&key) {
            steps.push(Step::Pull(spec.clone()));
        }
        seen.insert(key);
    }
    for (room, name) in pulling {
        let wanted_here = seen.contains(&(room.clone(), name.clone()));
        if !wanted_here || owner(room) == Owner::Elsewhere {
            steps.push(Step::Stop {
                room: room.clone(),
                name: name.clone(),
            });
        }
    }
    steps
}

/// Why a camera cannot be added to the registry.
#[derive(Debug, thiserror::Error)]
pub enum AddError {
    #[error("a camera called {name} is already pulled into room {room} (on this or another node of the cluster, or in the config); DELETE it first or pick another name")]
    Taken { room: RoomName, name: ParticipantId },
    #[error("{0}")]
    Cluster(#[from] super::ClusterError),
}

/// Why a camera cannot be deleted.
#[derive(Debug, thiserror::Error)]
pub enum RemoveError {
    #[error("no camera called {name:?} is pulled into room {room}")]
    NotFound { room: RoomName, name: String },
    #[error("camera {name} of room {room} comes from the config ([[camera]], the same on every node); take it out there and restart the nodes")]
    FromConfig { room: RoomName, name: ParticipantId },
    #[error("{0}")]
    Cluster(#[from] super::ClusterError),
}

/// The shell: this node's part in pulling the cluster's cameras.
pub struct Cameras {
    cluster: Arc<Cluster>,
    bridge: Bridge,
    rooms: Arc<Rooms>,
    key: CameraKey,
    /// `[[camera]]` entries, the same on every node.
    config: Vec<PullSpec>,
    /// One reconcile at a time (heartbeat and REST); holds the registry fields already logged
    /// as refused, so a bad entry is logged once, not every 2 s.
    round: tokio::sync::Mutex<BTreeSet<String>>,
}

impl Cameras {
    pub fn new(
        cluster: Arc<Cluster>,
        bridge: Bridge,
        rooms: Arc<Rooms>,
        cluster_secret: &str,
        config: Vec<PullSpec>,
    ) -> Arc<Cameras> {
        Arc::new(Cameras {
            cluster,
            bridge,
            rooms,
            key: CameraKey::new(cluster_secret.as_bytes()),
            config,
            round: tokio::sync::Mutex::new(BTreeSet::new()),
        })
    }

    fn in_config(&self, room: &RoomName, name: &ParticipantId) -> bool {
        self.config
            .iter()
            .any(|c| c.room == *room && c.name == *name)
    }

    /// Reconciles now, then after every heartbeat, until shutdown.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        loop {
            self.reconcile().await;
            tokio::select! {
                _ = self.cluster.beaten() => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
    }

    /// One round: read the registry, ask where each camera room lives, pull and stop.
    pub async fn reconcile(&self) {
        let mut refused = self.round.lock().await;
        let pulling: BTreeSet<_> = self.bridge.pulled().into_iter().collect();
        let entries = match self.cluster.cameras().await {
            Ok(e) => e,
            Err(e) => {
                tracing::debug!(error = %e, "cameras: registry not read; nothing changes this round");
                return;
            }
        };
        let mut wanted = self.config.clone();
        for (field, value) in entries {
            match self.key.open(&field, &value) {
                Ok(spec) if self.in_config(&spec.room, &spec.name) => {}
                Ok(spec) => {
                    refused.remove(&field);
                    wanted.push(spec);
                }
                Err(e) => {
                    if refused.insert(field.clone()) {
                        tracing::warn!(entry = %field, error = %e, "a camera in Redis is not ours; not pulled");
                    }
                }
            }
        }
        let rooms: BTreeSet<RoomName> = wanted.iter().map(|s| s.room.clone()).collect();
        let mut owners = BTreeMap::new();
        for room in rooms {
            let here_already = self.rooms.occupied(&room);
            let owner = match self.cluster.place(&room, here_already, None).await {
                Ok(Placement::Here) => Owner::Here,
                Ok(Placement::There(_)) => Owner::Elsewhere,
                Err(e) => {
                    tracing::debug!(room = %room, error = %e, "cameras: room not placed this round");
                    Owner::Unknown
                }
            };
            owners.insert(room, owner);
        }
        for step in reconcile(&wanted, &owners, &pulling) {
            match step {
                Step::Pull(spec) => {
                    let (room, name) = (spec.room.clone(), spec.name.clone());
                    match self.bridge.pull(spec) {
                        Ok(_) => {
                            tracing::info!(room = %room, camera = %name, "camera's room is on this node: pulling it")
                        }
                        Err(e @ BridgeError::Taken(_)) => {
                            tracing::debug!(room = %room, camera = %name, error = %e, "camera not pulled")
                        }
                        Err(e) => {
                            tracing::warn!(room = %room, camera = %name, error = %e, "camera not pulled")
                        }
                    }
                }
                Step::Stop { room, name } => {
                    if self.bridge.stop_pull(&room, name.as_str()) {
                        tracing::info!(room = %room, camera = %name, "camera's room is on another node, or the camera was deleted: stopped pulling it here");
                    }
                }
            }
        }
    }

    /// `POST …/cameras` in cluster mode: the camera goes into the registry (unless its name is
    /// taken anywhere), then a reconcile places its room and, if that is here, pulls it.
    pub async fn add(&self, entry: &CameraEntry, spec: &PullSpec) -> Result<(), AddError> {
        let taken = || AddError::Taken {
            room: spec.room.clone(),
            name: spec.name.clone(),
        };
        if self.in_config(&spec.room, &spec.name) {
            return Err(taken());
        }
        let field = field(&spec.room, &spec.name);
        if !self
            .cluster
            .camera_put(&spec.room, &field, &self.key.seal(entry))
            .await?
        {
            return Err(taken());
        }
        self.reconcile().await;
        // Placed here but someone of that id (a pushed camera, a person) is in the room: the
        // pull could not start, and never will while they are there; the name is taken.
        let pulled = self
            .bridge
            .pulled()
            .contains(&(spec.room.clone(), spec.name.clone()));
        let present = self
            .rooms
            .participants(&spec.room)
            .is_some_and(|ps| ps.iter().any(|p| p.id == spec.name.as_str()));
        if !pulled && present {
            let _round = self.round.lock().await;
            self.cluster.camera_take(&spec.room, &field).await?;
            return Err(taken());
        }
        Ok(())
    }

    /// `DELETE …/cameras/{name}` in cluster mode: the registry entry goes, and the pull stops
    /// here, or the room's node is still to be told ([`Gone::There`]).
    pub async fn remove(&self, room: &RoomName, name: &str) -> Result<Gone, RemoveError> {
        let not_found = || RemoveError::NotFound {
            room: room.clone(),
            name: name.to_owned(),
        };
        let id = ParticipantId::parse(name).map_err(|_| not_found())?;
        if self.in_config(room, &id) {
            return Err(RemoveError::FromConfig {
                room: room.clone(),
                name: id,
            });
        }
        // Under the round's lock: a reconcile that read the registry before the entry went
        // cannot start the pull again after it is stopped.
        let _round = self.round.lock().await;
        let removed = self.cluster.camera_take(room, &field(room, &id)).await?;
        if self.bridge.stop_pull(room, id.as_str()) {
            return Ok(Gone::Here);
        }
        match self.cluster.owner_elsewhere(room).await? {
            Some(node) => Ok(Gone::There {
                node,
                entry_removed: removed,
            }),
            None if removed => Ok(Gone::Here),
            None => Err(not_found()),
        }
    }

    /// A stop relayed by the node that took a DELETE: the pull ends here, between reconciles.
    /// False if this node did not pull it.
    pub async fn stop_here(&self, room: &RoomName, name: &str) -> bool {
        let _round = self.round.lock().await;
        self.bridge.stop_pull(room, name)
    }
}

/// Where a deleted camera's pull stopped.
#[derive(Debug)]
pub enum Gone {
    /// Here (or nowhere: it had not started).
    Here,
    /// `node` pulls it and must be told; `entry_removed`: the registry had it (so a node that
    /// has not pulled it yet never will).
    There {
        node: super::placement::NodeRecord,
        entry_removed: bool,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(room: &str, name: &str) -> PullSpec {
        PullSpec::parse(room, name, "rtsp://10.0.0.5/live", &PullOptions::default()).unwrap()
    }

    fn key(room: &str, name: &str) -> (RoomName, ParticipantId) {
        (
            RoomName::parse(room).unwrap(),
            ParticipantId::parse(name).unwrap(),
        )
    }

    fn owners(list: &[(&str, Owner)]) -> BTreeMap<RoomName, Owner> {
        list.iter()
            .map(|(r, o)| (RoomName::parse(r).unwrap(), *o))
            .collect()
    }

    fn stop(room: &str, name: &str) -> Step {
        let (room, name) = key(room, name);
        Step::Stop { room, name }
    }

    /// (what happens, owners, pulling before, steps)
    type Case = (
        &'static str,
        BTreeMap<RoomName, Owner>,
        Vec<(&'static str, &'static str)>,
        Vec<Step>,
    );

    #[test]
    fn reconcile_pulls_here_stops_elsewhere_and_keeps_unknown() {
        use Owner::*;
        let wanted = [
            spec("a", "door"),
            spec("a", "yard"),
            spec("b", "gate"),
            spec("c", "hall"),
        ];
        let cases: Vec<Case> = vec![
            (
                "fresh node, room a here: its two cameras are pulled",
                owners(&[("a", Here), ("b", Elsewhere), ("c", Unknown)]),
                vec![],
                vec![Step::Pull(spec("a", "door")), Step::Pull(spec("a", "yard"))],
            ),
            (
                "already pulling what is here: nothing to do",
                owners(&[("a", Here), ("b", Elsewhere), ("c", Unknown)]),
                vec![("a", "door"), ("a", "yard")],
                vec![],
            ),
            (
                "room a moved away: both stop; b came here: pulled",
                owners(&[("a", Elsewhere), ("b", Here), ("c", Unknown)]),
                vec![("a", "door"), ("a", "yard")],
                vec![
                    Step::Pull(spec("b", "gate")),
                    stop("a", "door"),
                    stop("a", "yard"),
                ],
            ),
            (
                "Redis cannot say where c is: its pull goes on, nothing new starts",
                owners(&[("a", Unknown), ("b", Unknown), ("c", Unknown)]),
                vec![("c", "hall")],
                vec![],
            ),
            (
                "a pull nobody wants (deleted on another node) stops, wherever its room is",
                owners(&[("a", Here), ("b", Elsewhere), ("c", Unknown)]),
                vec![("a", "door"), ("a", "yard"), ("d", "old")],
                vec![stop("d", "old")],
            ),
        ];
        for (case, owners, pulling, want) in cases {
            let pulling: BTreeSet<_> = pulling.iter().map(|(r, n)| key(r, n)).collect();
            assert_eq!(reconcile(&wanted, &owners, &pulling), want, "{case}");
        }
    }

    #[test]
    fn a_camera_twice_is_pulled_once() {
        let wanted = [spec("a", "door"), spec("a", "door")];
        let steps = reconcile(&wanted, &owners(&[("a", Owner::Here)]), &BTreeSet::new());
        assert_eq!(steps, vec![Step::Pull(spec("a", "door"))]);
    }

    #[test]
    fn entries_open_only_under_the_clusters_key_and_their_own_field() {
        let k = CameraKey::new(b"a cluster secret of some length");
        let entry = CameraEntry {
            room: "lobby".into(),
            name: "door".into(),
            url: "rtsp://admin:pw@10.0.0.5/live".into(),
            transport: Some("udp".into()),
            mode: None,
            fps: None,
        };
        let sealed = k.seal(&entry);
        let spec = k.open("lobby/door", sealed.as_bytes()).unwrap();
        assert_eq!(spec, entry.spec().unwrap());
        assert!(spec.udp());

        let other = CameraKey::new(b"another cluster's secret, as long");
        assert_eq!(
            other.open("lobby/door", sealed.as_bytes()),
            Err(EntryError::Signature)
        );
        // Copied under another field by someone with Redis access: refused.
        assert!(matches!(
            k.open("hall/door", sealed.as_bytes()),
            Err(EntryError::Moved { .. })
        ));
        // Unsigned JSON as an attacker would write it.
        let forged = format!(
            "{}.{{\"room\":\"lobby\",\"name\":\"door\",\"url\":\"http://evil/\"}}",
            "0".repeat(64)
        );
        assert_eq!(
            k.open("lobby/door", forged.as_bytes()),
            Err(EntryError::Signature)
        );
        assert_eq!(k.open("lobby/door", b"{}"), Err(EntryError::Malformed));
        // Sealed but no camera (a bad scheme): refused with why.
        let bad = CameraEntry {
            url: "file:///etc/passwd".into(),
            ..entry
        };
        assert!(matches!(
            k.open("lobby/door", k.seal(&bad).as_bytes()),
            Err(EntryError::Spec(_))
        ));
    }

    #[test]
    fn node_record_key_does_not_open_camera_entries() {
        // Separate derivations: a sealed camera is no node record and the other way round.
        let secret = b"one secret, two keys, as documented";
        let cams = CameraKey::new(secret);
        let nodes = super::super::placement::RecordKey::new(secret);
        let entry = CameraEntry {
            room: "r".into(),
            name: "c".into(),
            url: "rtsp://h/x".into(),
            transport: None,
            mode: None,
            fps: None,
        };
        assert!(nodes.open(cams.seal(&entry).as_bytes()).is_err());
    }
}
