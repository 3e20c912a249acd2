//! Who is in the rooms an engine serves: browsers, with their two connections and the state of
//! their subscribe negotiation, and external participants (cameras), which only publish.

use std::collections::HashMap;

use super::api::{ParticipantKey, TrackKey};
use super::connection::PeerKey;
use crate::names::{ParticipantId, RoomName};
use crate::protocol::MediaKind;

pub(super) struct Member {
    pub room: RoomName,
    pub id: ParticipantId,
    /// Its tracks; for external members, in the order the shell numbers them (`index`).
    pub published: Vec<TrackKey>,
    /// Kinds an operator muted: its tracks of that kind are not forwarded.
    pub muted: Vec<MediaKind>,
    pub kind: MemberKind,
}

pub(super) enum MemberKind {
    Browser(Browser),
    /// Media comes from the shell (`ExternalRtp`); no connection of its own.
    External,
}

/// A browser's connections and subscribe negotiation.
pub(super) struct Browser {
    pub publish: Option<PeerKey>,
    pub subscribe: PeerKey,
    /// What it is subscribed to, by the public track id its PLI/FIR names.
    pub subscribed: HashMap<String, TrackKey>,
    /// The latest subscribe offer's revision.
    pub revision: u64,
    pub awaiting_answer: Option<u64>,
    /// Something changed while an offer was outstanding: offer again once it is answered.
    pub renegotiate: bool,
}

impl Member {
    pub fn browser(&self) -> Option<&Browser> {
        match &self.kind {
            MemberKind::Browser(b) => Some(b),
            MemberKind::External => None,
        }
    }

    pub fn browser_mut(&mut self) -> Option<&mut Browser> {
        match &mut self.kind {
            MemberKind::Browser(b) => Some(b),
            MemberKind::External => None,
        }
    }
}

/// The members of each room, in joining order.
#[derive(Default)]
pub(super) struct Rooms(HashMap<RoomName, Vec<ParticipantKey>>);

impl Rooms {
    pub fn add(&mut self, room: &RoomName, key: ParticipantKey) {
        self.0.entry(room.clone()).or_default().push(key);
    }

    pub fn remove(&mut self, room: &RoomName, key: ParticipantKey) {
        if let Some(members) = self.0.get_mut(room) {
            members.retain(|m| *m != key);
            if members.is_empty() {
                self.0.remove(room);
            }
        }
    }

    pub fn members(&self, room: &RoomName) -> &[ParticipantKey] {
        self.0.get(room).map(Vec::as_slice).unwrap_or(&[])
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}
