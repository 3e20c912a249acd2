//! Presence: who is in which room, and telling the others when that changes.
//!
//! This is the signaling layer's view of rooms (ids, names, published tracks, microphone and
//! camera state). It is touched on joins, leaves and updates only, never per packet, so a plain
//! mutex is the right tool. Media forwarding has its own view inside the media engine.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::oneshot;

use crate::media::api::ParticipantKey;
use crate::names::{DisplayName, ParticipantId, RoomName};
use crate::protocol::{MediaKind, ParticipantInfo, ParticipantKind, Role, ServerMessage};

struct Member {
    key: ParticipantKey,
    info: ParticipantInfo,
    tx: UnboundedSender<ServerMessage>,
    /// Who this is across reconnects (see `chat::identity_key`); decides private history.
    identity_key: String,
    /// Authorizes file uploads into this room while the participant is in it.
    upload_token: String,
    /// Tells the participant's session why it was taken out of the room (operator).
    removed: Option<oneshot::Sender<String>>,
}

impl Member {
    fn target(&self, id: ParticipantId) -> Target {
        Target {
            key: self.key,
            id,
            kind: self.info.kind,
        }
    }
}

/// Who holds an upload token.
#[derive(Debug, Clone)]
pub struct Uploader {
    pub id: ParticipantId,
    pub name: String,
    pub identity_key: String,
}

#[derive(Default)]
struct Room {
    members: BTreeMap<ParticipantId, Member>,
    /// Locked by an operator: only operators may join.
    locked: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JoinError {
    #[error("room {room} is full ({limit} participants); try again later or use another room")]
    Full { room: RoomName, limit: usize },
    #[error("{id} is already live in room {room}; pick another name")]
    Taken { room: RoomName, id: ParticipantId },
    #[error("room {room} is locked by its operator; ask them to unlock it")]
    Locked { room: RoomName },
    #[error("the server already has {limit} rooms in use; try again later")]
    TooManyRooms { limit: usize },
}

/// A successful join.
#[derive(Debug)]
pub struct Joined {
    pub key: ParticipantKey,
    pub id: ParticipantId,
    /// Everyone else already in the room.
    pub others: Vec<ParticipantInfo>,
    pub upload_token: String,
    pub locked: bool,
    /// Resolves with the reason if an operator takes the participant out of the room.
    pub removed: oneshot::Receiver<String>,
}

/// Someone an operator acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub key: ParticipantKey,
    pub id: ParticipantId,
    pub kind: ParticipantKind,
}

pub struct Rooms {
    rooms: Mutex<HashMap<RoomName, Room>>,
    next_key: AtomicU64,
    max_rooms: usize,
    max_participants: usize,
}

impl Rooms {
    pub fn new(max_rooms: usize, max_participants: usize) -> Self {
        Rooms {
            rooms: Mutex::new(HashMap::new()),
            next_key: AtomicU64::new(1),
            max_rooms,
            max_participants,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<RoomName, Room>> {
        // A panic while holding the lock leaves plain data behind; keep serving.
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a participant, picking an id from its name, and tells the others.
    pub fn join(
        &self,
        room: &RoomName,
        name: &DisplayName,
        kind: ParticipantKind,
        role: Role,
        identity_key: String,
        tx: UnboundedSender<ServerMessage>,
    ) -> Result<Joined, JoinError> {
        self.join_as(room, None, name, kind, role, identity_key, tx)
    }

    /// Adds a participant with exactly this id (a camera's name from its RTSP path or API
    /// call), or refuses if someone has it.
    pub fn join_exact(
        &self,
        room: &RoomName,
        id: &ParticipantId,
        name: &DisplayName,
        kind: ParticipantKind,
        tx: UnboundedSender<ServerMessage>,
    ) -> Result<Joined, JoinError> {
        let identity = format!("camera:{id}");
        self.join_as(room, Some(id), name, kind, Role::Presenter, identity, tx)
    }

    #[allow(clippy::too_many_arguments)]
    fn join_as(
        &self,
        room: &RoomName,
        exact: Option<&ParticipantId>,
        name: &DisplayName,
        kind: ParticipantKind,
        role: Role,
        identity_key: String,
        tx: UnboundedSender<ServerMessage>,
    ) -> Result<Joined, JoinError> {
        let mut rooms = self.lock();
        if !rooms.contains_key(room) && rooms.len() >= self.max_rooms {
            return Err(JoinError::TooManyRooms {
                limit: self.max_rooms,
            });
        }
        let r = rooms.entry(room.clone()).or_default();
        if r.locked && role != Role::Operator {
            return Err(JoinError::Locked { room: room.clone() });
        }
        if r.members.len() >= self.max_participants {
            if r.members.is_empty() {
                rooms.remove(room);
            }
            return Err(JoinError::Full {
                room: room.clone(),
                limit: self.max_participants,
            });
        }
        let id = match exact {
            Some(id) if r.members.contains_key(id) => {
                return Err(JoinError::Taken {
                    room: room.clone(),
                    id: id.clone(),
                })
            }
            Some(id) => id.clone(),
            None => {
                let base = ParticipantId::base_from_name(name.as_str());
                ParticipantId::unique(&base, |c| {
                    ParticipantId::parse(c).is_ok_and(|c| r.members.contains_key(&c))
                })
            }
        };
        let key = ParticipantKey(self.next_key.fetch_add(1, Ordering::Relaxed));
        let info = ParticipantInfo {
            id: id.to_string(),
            name: name.as_str().to_owned(),
            kind,
            role,
            tracks: Vec::new(),
            audio: false,
            video: false,
            state: None,
        };
        let others: Vec<ParticipantInfo> = r.members.values().map(|m| m.info.clone()).collect();
        for m in r.members.values() {
            let _ = m.tx.send(ServerMessage::ParticipantJoined {
                participant: info.clone(),
            });
        }
        let upload_token = crate::secret::token(32);
        let (removed_tx, removed) = oneshot::channel();
        r.members.insert(
            id.clone(),
            Member {
                key,
                info,
                tx,
                identity_key,
                upload_token: upload_token.clone(),
                removed: Some(removed_tx),
            },
        );
        Ok(Joined {
            key,
            id,
            others,
            upload_token,
            locked: r.locked,
            removed,
        })
    }

    /// Operator: takes `id` out of the room, tells the others, and tells its session `reason`.
    pub fn remove(&self, room: &RoomName, id: &ParticipantId, reason: &str) -> Option<Target> {
        let mut m = Self::take_out(&mut self.lock(), room, id, |_| true)?;
        if let Some(tx) = m.removed.take() {
            let _ = tx.send(reason.to_owned());
        }
        Some(m.target(id.clone()))
    }

    /// Operator: ends the meeting. Everyone is taken out with `reason`; returns who was in.
    pub fn end(&self, room: &RoomName, reason: &str) -> Vec<Target> {
        let mut rooms = self.lock();
        let Some(r) = rooms.remove(room) else {
            return Vec::new();
        };
        r.members
            .into_iter()
            .map(|(id, mut m)| {
                if let Some(tx) = m.removed.take() {
                    let _ = tx.send(reason.to_owned());
                }
                m.target(id)
            })
            .collect()
    }

    /// Operator: locks or unlocks the room and tells everyone. False if nobody is in it.
    pub fn set_locked(&self, room: &RoomName, locked: bool, by: &str) -> bool {
        let mut rooms = self.lock();
        let Some(r) = rooms.get_mut(room) else {
            return false;
        };
        r.locked = locked;
        for m in r.members.values() {
            let _ = m.tx.send(ServerMessage::RoomState {
                locked,
                by: by.to_owned(),
            });
        }
        true
    }

    /// Operator: marks `id`'s microphone or camera off, tells it and everyone. The caller stops
    /// the media itself.
    pub fn mute(
        &self,
        room: &RoomName,
        id: &ParticipantId,
        kind: MediaKind,
        by: &str,
    ) -> Option<Target> {
        let target = {
            let rooms = self.lock();
            let m = rooms.get(room)?.members.get(id)?;
            let _ = m.tx.send(ServerMessage::Muted {
                kind,
                by: by.to_owned(),
            });
            m.target(id.clone())
        };
        self.update(room, id, |i| match kind {
            MediaKind::Audio => i.audio = false,
            MediaKind::Video => i.video = false,
        });
        Some(target)
    }

    /// Removes a participant (if still there) and tells the others.
    pub fn leave(&self, room: &RoomName, id: &ParticipantId, key: ParticipantKey) {
        Self::take_out(&mut self.lock(), room, id, |m| m.key == key);
    }

    /// Takes `id` out of `room` if `this_one` says it is the member meant, tells the others,
    /// and forgets the room once it is empty.
    fn take_out(
        rooms: &mut HashMap<RoomName, Room>,
        room: &RoomName,
        id: &ParticipantId,
        this_one: impl FnOnce(&Member) -> bool,
    ) -> Option<Member> {
        let r = rooms.get_mut(room)?;
        if !r.members.get(id).is_some_and(this_one) {
            return None;
        }
        let m = r.members.remove(id)?;
        for other in r.members.values() {
            let _ = other
                .tx
                .send(ServerMessage::ParticipantLeft { id: id.to_string() });
        }
        if r.members.is_empty() {
            rooms.remove(room);
        }
        Some(m)
    }

    /// Changes a participant's public state and tells everyone (the participant too).
    pub fn update(
        &self,
        room: &RoomName,
        id: &ParticipantId,
        change: impl FnOnce(&mut ParticipantInfo),
    ) {
        let mut rooms = self.lock();
        let Some(r) = rooms.get_mut(room) else {
            return;
        };
        let Some(m) = r.members.get_mut(id) else {
            return;
        };
        let before = m.info.clone();
        change(&mut m.info);
        if m.info == before {
            return;
        }
        let info = m.info.clone();
        for m in r.members.values() {
            let _ = m.tx.send(ServerMessage::ParticipantUpdated {
                participant: info.clone(),
            });
        }
    }

    fn member<'a>(
        rooms: &'a HashMap<RoomName, Room>,
        room: &RoomName,
        id: &str,
    ) -> Option<&'a Member> {
        let id = ParticipantId::parse(id).ok()?;
        rooms.get(room)?.members.get(&id)
    }

    /// Sends `msg` to one participant; false if it is not in the room.
    pub fn send_to(&self, room: &RoomName, id: &str, msg: ServerMessage) -> bool {
        let rooms = self.lock();
        Self::member(&rooms, room, id).is_some_and(|m| m.tx.send(msg).is_ok())
    }

    /// Sends `msg` to everyone in the room but `except`.
    pub fn broadcast(&self, room: &RoomName, except: Option<&ParticipantId>, msg: &ServerMessage) {
        let rooms = self.lock();
        let Some(r) = rooms.get(room) else {
            return;
        };
        for (id, m) in &r.members {
            if Some(id) != except {
                let _ = m.tx.send(msg.clone());
            }
        }
    }

    /// The identity key of participant `id`, if it is in the room.
    pub fn identity_key(&self, room: &RoomName, id: &str) -> Option<String> {
        let rooms = self.lock();
        Self::member(&rooms, room, id).map(|m| m.identity_key.clone())
    }

    /// Who holds this upload token in this room, if anyone (compared in constant time).
    pub fn uploader(&self, room: &RoomName, token: &str) -> Option<Uploader> {
        let rooms = self.lock();
        rooms.get(room)?.members.iter().find_map(|(id, m)| {
            crate::secret::equal(token, &m.upload_token).then(|| Uploader {
                id: id.clone(),
                name: m.info.name.clone(),
                identity_key: m.identity_key.clone(),
            })
        })
    }

    /// Rooms with anyone in them, and how many.
    pub fn list(&self) -> Vec<(RoomName, usize)> {
        let rooms = self.lock();
        let mut v: Vec<(RoomName, usize)> = rooms
            .iter()
            .map(|(n, r)| (n.clone(), r.members.len()))
            .collect();
        v.sort();
        v
    }

    /// Whether anyone is in the room.
    pub fn occupied(&self, room: &RoomName) -> bool {
        self.lock().contains_key(room)
    }

    pub fn participants(&self, room: &RoomName) -> Option<Vec<ParticipantInfo>> {
        let rooms = self.lock();
        rooms
            .get(room)
            .map(|r| r.members.values().map(|m| m.info.clone()).collect())
    }

    /// (rooms, participants)
    pub fn counts(&self) -> (usize, usize) {
        let rooms = self.lock();
        (rooms.len(), rooms.values().map(|r| r.members.len()).sum())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc::unbounded_channel;

    fn room() -> RoomName {
        RoomName::parse("demo").unwrap()
    }

    fn name(s: &str) -> DisplayName {
        DisplayName::parse(s).unwrap()
    }

    #[test]
    fn ids_are_unique_and_others_are_told() {
        let rooms = Rooms::new(100, 10);
        let (tx1, mut rx1) = unbounded_channel();
        let a = rooms
            .join(
                &room(),
                &name("Alice"),
                ParticipantKind::Browser,
                Role::Presenter,
                "k1".into(),
                tx1,
            )
            .unwrap();
        assert_eq!(a.id.as_str(), "alice");
        assert!(a.others.is_empty());
        let (tx2, _rx2) = unbounded_channel();
        let b = rooms
            .join(
                &room(),
                &name("alice"),
                ParticipantKind::Browser,
                Role::Presenter,
                "k2".into(),
                tx2,
            )
            .unwrap();
        assert_eq!(b.id.as_str(), "alice-2");
        assert_eq!(b.others.len(), 1);
        assert_ne!(a.upload_token, b.upload_token);
        assert_eq!(
            rooms
                .uploader(&room(), &b.upload_token)
                .unwrap()
                .id
                .as_str(),
            "alice-2"
        );
        assert!(rooms.uploader(&room(), "wrong").is_none());
        assert!(rooms.uploader(&room(), "").is_none());
        assert_eq!(rooms.identity_key(&room(), "alice").as_deref(), Some("k1"));
        match rx1.try_recv().unwrap() {
            ServerMessage::ParticipantJoined { participant } => {
                assert_eq!(participant.id, "alice-2")
            }
            m => panic!("{m:?}"),
        }
        rooms.update(&room(), &b.id, |i| i.audio = true);
        assert!(matches!(
            rx1.try_recv().unwrap(),
            ServerMessage::ParticipantUpdated { .. }
        ));
        // An update that changes nothing is not broadcast.
        rooms.update(&room(), &b.id, |i| i.audio = true);
        assert!(rx1.try_recv().is_err());
        rooms.leave(&room(), &b.id, b.key);
        assert_eq!(
            rx1.try_recv().unwrap(),
            ServerMessage::ParticipantLeft {
                id: "alice-2".into()
            }
        );
        assert_eq!(rooms.counts(), (1, 1));
        rooms.leave(&room(), &a.id, a.key);
        assert_eq!(rooms.counts(), (0, 0));
        assert!(rooms.participants(&room()).is_none());
    }

    #[test]
    fn stale_leave_does_not_remove_a_newer_namesake() {
        let rooms = Rooms::new(100, 10);
        let (tx, _rx) = unbounded_channel();
        let a = rooms
            .join(
                &room(),
                &name("Al"),
                ParticipantKind::Browser,
                Role::Presenter,
                "k".into(),
                tx.clone(),
            )
            .unwrap();
        rooms.leave(&room(), &a.id, a.key);
        let a2 = rooms
            .join(
                &room(),
                &name("Al"),
                ParticipantKind::Browser,
                Role::Presenter,
                "k".into(),
                tx,
            )
            .unwrap();
        assert_eq!(a2.id, a.id);
        rooms.leave(&room(), &a.id, a.key);
        assert_eq!(rooms.counts(), (1, 1));
    }

    #[test]
    fn full_rooms_refuse() {
        let rooms = Rooms::new(100, 1);
        let (tx, _rx) = unbounded_channel();
        rooms
            .join(
                &room(),
                &name("a"),
                ParticipantKind::Browser,
                Role::Presenter,
                "k".into(),
                tx.clone(),
            )
            .unwrap();
        let e = rooms
            .join(
                &room(),
                &name("b"),
                ParticipantKind::Browser,
                Role::Presenter,
                "k".into(),
                tx,
            )
            .unwrap_err();
        assert!(e.to_string().contains("full"));
    }
}
