//! Operator actions: mute someone's microphone or camera, take someone out of the room, lock
//! or unlock the room, end the meeting.
//!
//! They arrive two ways, as protocol messages from an operator's page (`signaling`) and as REST
//! calls with the server's credentials (`http`); both turn them into an [`Action`] and call
//! [`carry_out`], and neither knows the other's wire format. The room logic is [`decide`]:
//! presence changes and the notices they cause (`muted`, `room_state`, `participant_left`,
//! and the reason a removed participant's session gets, which then says `bye` and closes with
//! 4001). It returns the [`Effect`]s on the media plane and the camera bridge, which
//! [`carry_out`] performs.

use crate::media::api::{Command, ParticipantKey};
use crate::names::{ParticipantId, RoomName};
use crate::protocol::{MediaKind, ParticipantKind, Role};
use crate::room::{Rooms, Target};
use crate::state::App;

/// What an operator does to a room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Stop forwarding `id`'s microphone (`Audio`) or camera (`Video`) until it turns it on
    /// again itself.
    Mute { id: ParticipantId, kind: MediaKind },
    /// Take `id` out of the room.
    Remove { id: ParticipantId },
    /// Lock (nobody new may join, operators excepted) or unlock the room.
    Lock { locked: bool },
    /// End the meeting for everyone in the room.
    End,
}

impl Action {
    /// The action as it crosses to the room's node (cluster mode).
    pub fn to_remote(&self) -> crate::cluster::action::RemoteAction {
        use crate::cluster::action::RemoteAction as R;
        match self {
            Action::Mute { id, kind } => R::Mute {
                id: id.to_string(),
                kind: *kind,
            },
            Action::Remove { id } => R::Remove { id: id.to_string() },
            Action::Lock { locked } => R::Lock { locked: *locked },
            Action::End => R::End,
        }
    }

    /// An action relayed from another node, its target checked here as a local one's is.
    pub fn from_remote(
        room: &RoomName,
        remote: crate::cluster::action::RemoteAction,
    ) -> Result<Action, ModerationError> {
        use crate::cluster::action::RemoteAction as R;
        Ok(match remote {
            R::Mute { id, kind } => Action::Mute {
                id: target(room, &id)?,
                kind,
            },
            R::Remove { id } => Action::Remove {
                id: target(room, &id)?,
            },
            R::Lock { locked } => Action::Lock { locked },
            R::End => Action::End,
            // Not an operator action on people: `http::serve_relayed` stops the pull before
            // asking this; should one come here, it names nobody in the room.
            R::StopCamera { name } => {
                return Err(ModerationError::UnknownParticipant {
                    room: room.clone(),
                    id: name,
                })
            }
        })
    }
}

/// Who acts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Actor<'a> {
    /// Someone in the room, by display name; only operators may act.
    Participant { name: &'a str, role: Role },
    /// A REST client with the server's credentials (checked by `http`).
    Server,
}

impl Actor<'_> {
    /// How the room is told who did it ("Olga muted your microphone").
    pub fn name(&self) -> &str {
        match self {
            Actor::Participant { name, .. } => name,
            Actor::Server => "the server's operator",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModerationError {
    #[error("only an operator may mute or remove others, lock the room or end the meeting")]
    Forbidden,
    #[error("nobody is in room {room}")]
    EmptyRoom { room: RoomName },
    #[error("nobody with id {id:?} is in room {room}")]
    UnknownParticipant { room: RoomName, id: String },
}

/// What an action needs beyond presence; [`carry_out`] does it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Stop forwarding a participant's audio or video.
    MuteMedia {
        key: ParticipantKey,
        kind: MediaKind,
    },
    /// A camera leaves the media plane. (A browser's session ends itself and leaves then.)
    LeaveMedia { key: ParticipantKey },
    /// A pulled camera is no longer pulled. (A pushing camera's RTSP connection is closed by its
    /// own task once it has left.)
    StopPull { id: ParticipantId },
}

/// Whether `actor` may act at all. [`decide`] checks it too; an edge calls it first so that
/// someone who may not act learns that, not what else is wrong with the request.
pub fn permit(actor: Actor<'_>) -> Result<(), ModerationError> {
    match actor {
        Actor::Participant { role, .. } if role != Role::Operator => {
            Err(ModerationError::Forbidden)
        }
        _ => Ok(()),
    }
}

/// The participant an action names, as given on the wire: an id that is not even valid is
/// nobody in the room.
pub fn target(room: &RoomName, id: &str) -> Result<ParticipantId, ModerationError> {
    ParticipantId::parse(id).map_err(|_| ModerationError::UnknownParticipant {
        room: room.clone(),
        id: id.to_owned(),
    })
}

/// Carries out `action` in `room`: [`decide`], then its effects on the media plane and the
/// bridge.
pub fn carry_out(
    app: &App,
    room: &RoomName,
    actor: Actor<'_>,
    action: Action,
) -> Result<(), ModerationError> {
    for effect in decide(&app.rooms, room, actor, action)? {
        perform(app, room, effect);
    }
    Ok(())
}

fn perform(app: &App, room: &RoomName, effect: Effect) {
    match effect {
        Effect::MuteMedia { key, kind } => {
            let _ = app.media.send(Command::Mute {
                key,
                kind,
                muted: true,
            });
        }
        Effect::LeaveMedia { key } => {
            let _ = app.media.send(Command::Leave { key });
        }
        Effect::StopPull { id } => {
            app.bridge.stop_pull(room, id.as_str());
        }
    }
}

/// The room logic of an action: checks who acts, changes presence, tells the room, and
/// returns what the media plane and the bridge must do.
pub fn decide(
    rooms: &Rooms,
    room: &RoomName,
    actor: Actor<'_>,
    action: Action,
) -> Result<Vec<Effect>, ModerationError> {
    permit(actor)?;
    if !rooms.occupied(room) {
        return Err(ModerationError::EmptyRoom { room: room.clone() });
    }
    let by = actor.name();
    let unknown = |id: &ParticipantId| ModerationError::UnknownParticipant {
        room: room.clone(),
        id: id.to_string(),
    };
    let effects = match action {
        Action::Mute { id, kind } => {
            let t = rooms
                .mute(room, &id, kind, by)
                .ok_or_else(|| unknown(&id))?;
            tracing::info!(room = %room, participant = %id, kind = kind.as_str(), by, "muted by an operator");
            vec![Effect::MuteMedia { key: t.key, kind }]
        }
        Action::Remove { id } => {
            let reason = format!("you were removed from the room by {by}");
            let t = rooms
                .remove(room, &id, &reason)
                .ok_or_else(|| unknown(&id))?;
            tracing::info!(room = %room, participant = %id, by, "removed by an operator");
            removed(&[t])
        }
        Action::Lock { locked } => {
            rooms.set_locked(room, locked, by);
            tracing::info!(room = %room, locked, by, "room lock changed");
            Vec::new()
        }
        Action::End => {
            let gone = rooms.end(room, &format!("the meeting was ended by {by}"));
            tracing::info!(room = %room, participants = gone.len(), by, "meeting ended");
            removed(&gone)
        }
    };
    Ok(effects)
}

/// What is left to do for participants taken out of a room: browsers' sessions end
/// themselves; cameras leave the media plane and are no longer pulled.
fn removed(targets: &[Target]) -> Vec<Effect> {
    targets
        .iter()
        .filter(|t| t.kind == ParticipantKind::Camera)
        .flat_map(|t| {
            [
                Effect::LeaveMedia { key: t.key },
                Effect::StopPull { id: t.id.clone() },
            ]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};
    use tokio::sync::oneshot;

    use super::*;
    use crate::names::DisplayName;
    use crate::protocol::ServerMessage;

    struct Member {
        key: ParticipantKey,
        id: ParticipantId,
        rx: UnboundedReceiver<ServerMessage>,
        removed: oneshot::Receiver<String>,
    }

    impl Member {
        fn messages(&mut self) -> Vec<ServerMessage> {
            std::iter::from_fn(|| self.rx.try_recv().ok()).collect()
        }
    }

    fn room() -> RoomName {
        RoomName::parse("board").unwrap()
    }

    fn id(s: &str) -> ParticipantId {
        ParticipantId::parse(s).unwrap()
    }

    /// Olga (operator), Pia (presenter) and the camera `door`, everyone's earlier news read.
    fn meeting() -> (Rooms, Member, Member, Member) {
        let rooms = Rooms::new(10, 10);
        let browser = |name: &str, role| {
            let (tx, rx) = unbounded_channel();
            let j = rooms
                .join(
                    &room(),
                    &DisplayName::parse(name).unwrap(),
                    ParticipantKind::Browser,
                    role,
                    format!("key-{name}"),
                    tx,
                )
                .unwrap();
            Member {
                key: j.key,
                id: j.id,
                rx,
                removed: j.removed,
            }
        };
        let mut olga = browser("Olga", Role::Operator);
        let mut pia = browser("Pia", Role::Presenter);
        let (tx, rx) = unbounded_channel();
        let j = rooms
            .join_exact(
                &room(),
                &id("door"),
                &DisplayName::parse("door").unwrap(),
                ParticipantKind::Camera,
                tx,
            )
            .unwrap();
        let door = Member {
            key: j.key,
            id: j.id,
            rx,
            removed: j.removed,
        };
        olga.messages();
        pia.messages();
        (rooms, olga, pia, door)
    }

    const OLGA: Actor<'static> = Actor::Participant {
        name: "Olga",
        role: Role::Operator,
    };

    #[test]
    fn only_operators_act() {
        let (rooms, _olga, mut pia, _door) = meeting();
        for role in [Role::Presenter, Role::Viewer] {
            let actor = Actor::Participant { name: "Pia", role };
            for action in [
                Action::Mute {
                    id: id("olga"),
                    kind: MediaKind::Audio,
                },
                Action::Remove { id: id("olga") },
                Action::Lock { locked: true },
                Action::End,
            ] {
                assert_eq!(
                    decide(&rooms, &room(), actor, action.clone()),
                    Err(ModerationError::Forbidden),
                    "{role:?} {action:?}"
                );
            }
        }
        assert!(pia.messages().is_empty(), "a refused action tells nobody");
        assert_eq!(rooms.counts(), (1, 3));
    }

    #[test]
    fn unknown_targets_and_empty_rooms() {
        let (rooms, _olga, _pia, _door) = meeting();
        let nobody = ModerationError::UnknownParticipant {
            room: room(),
            id: "nobody".into(),
        };
        assert_eq!(
            decide(&rooms, &room(), OLGA, Action::Remove { id: id("nobody") }),
            Err(nobody.clone())
        );
        let mute = Action::Mute {
            id: id("nobody"),
            kind: MediaKind::Video,
        };
        assert_eq!(decide(&rooms, &room(), OLGA, mute), Err(nobody));
        // An id that is not even valid is nobody either, with the same message.
        let e = target(&room(), "no/such id").unwrap_err();
        assert_eq!(
            e.to_string(),
            "nobody with id \"no/such id\" is in room board"
        );
        let empty = RoomName::parse("empty").unwrap();
        for action in [Action::Lock { locked: true }, Action::End] {
            assert_eq!(
                decide(&rooms, &empty, Actor::Server, action),
                Err(ModerationError::EmptyRoom {
                    room: empty.clone()
                })
            );
        }
    }

    #[test]
    fn mute_tells_the_target_and_the_room_and_stops_the_media() {
        let (rooms, mut olga, mut pia, _door) = meeting();
        rooms.update(&room(), &pia.id, |i| i.audio = true);
        olga.messages();
        pia.messages();
        let action = Action::Mute {
            id: pia.id.clone(),
            kind: MediaKind::Audio,
        };
        assert_eq!(
            decide(&rooms, &room(), OLGA, action),
            Ok(vec![Effect::MuteMedia {
                key: pia.key,
                kind: MediaKind::Audio
            }])
        );
        let to_pia = pia.messages();
        assert_eq!(
            to_pia[0],
            ServerMessage::Muted {
                kind: MediaKind::Audio,
                by: "Olga".into()
            }
        );
        assert!(
            matches!(&to_pia[1], ServerMessage::ParticipantUpdated { participant } if !participant.audio)
        );
        assert!(matches!(
            olga.messages()[..],
            [ServerMessage::ParticipantUpdated { .. }]
        ));
    }

    #[test]
    fn removing_a_browser_ends_its_session_and_a_camera_its_pull() {
        let (rooms, mut olga, mut pia, mut door) = meeting();
        assert_eq!(
            decide(&rooms, &room(), OLGA, Action::Remove { id: pia.id.clone() }),
            Ok(Vec::new()),
            "a browser's session leaves the media plane itself"
        );
        assert_eq!(
            pia.removed.try_recv().as_deref(),
            Ok("you were removed from the room by Olga")
        );
        assert_eq!(
            olga.messages(),
            vec![ServerMessage::ParticipantLeft { id: "pia".into() }]
        );
        assert_eq!(
            decide(
                &rooms,
                &room(),
                Actor::Server,
                Action::Remove {
                    id: door.id.clone()
                }
            ),
            Ok(vec![
                Effect::LeaveMedia { key: door.key },
                Effect::StopPull { id: id("door") }
            ])
        );
        assert_eq!(
            door.removed.try_recv().as_deref(),
            Ok("you were removed from the room by the server's operator")
        );
        assert_eq!(rooms.counts(), (1, 1));
    }

    #[test]
    fn lock_tells_everyone() {
        let (rooms, mut olga, mut pia, _door) = meeting();
        assert_eq!(
            decide(&rooms, &room(), OLGA, Action::Lock { locked: true }),
            Ok(Vec::new())
        );
        let state = ServerMessage::RoomState {
            locked: true,
            by: "Olga".into(),
        };
        assert_eq!(olga.messages(), vec![state.clone()]);
        assert_eq!(pia.messages(), vec![state]);
    }

    #[test]
    fn end_takes_everyone_out() {
        let (rooms, mut olga, mut pia, mut door) = meeting();
        assert_eq!(
            decide(&rooms, &room(), OLGA, Action::End),
            Ok(vec![
                Effect::LeaveMedia { key: door.key },
                Effect::StopPull { id: id("door") }
            ])
        );
        for m in [&mut olga, &mut pia, &mut door] {
            assert_eq!(
                m.removed.try_recv().as_deref(),
                Ok("the meeting was ended by Olga"),
                "{}",
                m.id
            );
        }
        assert_eq!(rooms.counts(), (0, 0));
    }
}
