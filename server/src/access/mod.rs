//! Who may enter a room, and as what.
//!
//! Rooms are open by default: anyone with the link joins as a presenter. The configuration can
//! protect a room with a password (argon2 hash) or require a signed join token
//! (`confab token`). A token works in every room it names and carries its role; a password
//! gives the presenter role. Wrong passwords and tokens count against the client's address
//! ([`throttle`]); a request without any credentials does not (clients such as ffmpeg ask
//! without, learn from the 401 what is needed, then ask again).
//!
//! Roles: a **presenter** publishes, subscribes and chats; a **viewer** subscribes and chats
//! (the server refuses its media); an **operator** is a presenter who may also mute or remove
//! others, lock the room and end the meeting.

pub mod password;
pub mod throttle;
pub mod token;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::names::RoomName;
pub use crate::protocol::Role;
use throttle::Throttle;
use token::TokenKey;

/// How a room admits people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Policy {
    Open,
    /// The room password's PHC hash; a valid token works too.
    Password(String),
    /// Only a valid token.
    Token,
}

/// What a client presented.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    pub password: Option<String>,
    pub token: Option<String>,
}

impl Credentials {
    pub fn is_empty(&self) -> bool {
        self.password.is_none() && self.token.is_none()
    }
}

/// An admission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub role: Role,
    /// The display name a token fixes, if the client came with one.
    pub name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// Nothing was presented, and the room needs its password (or a token).
    #[error("{0}")]
    Required(String),
    /// The room admits join tokens only, and none was presented.
    #[error("{0}")]
    TokenRequired(String),
    /// A wrong password or an invalid token (counted against the address).
    #[error("{0}")]
    Wrong(String),
    #[error("too many failed attempts from your address; try again in {} s", .retry_after.as_secs().max(1))]
    Throttled { retry_after: Duration },
}

pub struct Access {
    policies: HashMap<RoomName, Policy>,
    key: TokenKey,
    throttle: Mutex<Throttle>,
    /// Password checks at once: argon2 is made to be slow, and many clients guessing at the
    /// same moment must not take every core (the throttle counts only finished checks).
    hashing: tokio::sync::Semaphore,
}

/// Concurrent argon2 verifications.
const HASHING_AT_ONCE: usize = 2;

impl Access {
    pub fn new(policies: HashMap<RoomName, Policy>, key: TokenKey) -> Self {
        Access {
            policies,
            key,
            throttle: Mutex::new(Throttle::default()),
            hashing: tokio::sync::Semaphore::new(HASHING_AT_ONCE),
        }
    }

    fn policy(&self, room: &RoomName) -> &Policy {
        self.policies.get(room).unwrap_or(&Policy::Open)
    }

    /// Whether the room needs credentials (and so is kept out of public listings).
    pub fn is_protected(&self, room: &RoomName) -> bool {
        !matches!(self.policy(room), Policy::Open)
    }

    /// A viewer's join token for `room`, valid for `ttl_secs` from now: what a member's RTSP
    /// link carries (`rtsp_link`), so that a player may watch a protected room and do
    /// nothing else.
    pub fn viewer_token(&self, room: &RoomName, name: &str, ttl_secs: u64) -> (String, u64) {
        let now = unix_now();
        let exp = now.saturating_add(ttl_secs);
        let claims = token::Claims {
            room: room.to_string(),
            name: name.to_owned(),
            role: Role::Viewer,
            exp,
            iat: now,
        };
        (self.key.sign(&claims), exp)
    }

    #[cfg(test)]
    fn key(&self) -> &TokenKey {
        &self.key
    }

    /// The claims of `token` if it is valid now and names `room`.
    pub fn token_for(&self, room: &RoomName, token: &str) -> Result<token::Claims, Denied> {
        let claims = self
            .key
            .verify(token, unix_now())
            .map_err(|e| Denied::Wrong(e.to_string()))?;
        if claims.room != room.as_str() {
            return Err(Denied::Wrong(format!(
                "the token is for room {:?}, not {room}",
                claims.room
            )));
        }
        Ok(claims)
    }

    fn throttle(&self) -> std::sync::MutexGuard<'_, Throttle> {
        self.throttle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Decides whether `creds` from `ip` admit to `room`. Password checks run on a blocking
    /// thread (argon2 is slow on purpose).
    pub async fn admit(
        &self,
        room: &RoomName,
        creds: &Credentials,
        ip: IpAddr,
        now: Instant,
    ) -> Result<Grant, Denied> {
        let policy = self.policy(room).clone();
        if creds.is_empty() {
            return match policy {
                Policy::Open => Ok(Grant {
                    role: Role::Presenter,
                    name: None,
                }),
                Policy::Password(_) => Err(Denied::Required(format!(
                    "room {room} needs its password (or a join token)"
                ))),
                Policy::Token => Err(Denied::TokenRequired(format!(
                    "room {room} needs a join token; ask its organiser for a link with ?token="
                ))),
            };
        }
        if let Err(retry_after) = self.throttle().check(ip, now) {
            return Err(Denied::Throttled { retry_after });
        }
        let verdict = self.judge(room, &policy, creds, ip, now).await;
        if let Err(Denied::Wrong(why)) = &verdict {
            tracing::info!(room = %room, client = %ip, why, "refused credentials");
            self.throttle().fail(ip, now);
        }
        verdict
    }

    async fn judge(
        &self,
        room: &RoomName,
        policy: &Policy,
        creds: &Credentials,
        ip: IpAddr,
        now: Instant,
    ) -> Result<Grant, Denied> {
        if let Some(token) = &creds.token {
            let claims = self.token_for(room, token)?;
            return Ok(Grant {
                role: claims.role,
                name: Some(claims.name),
            });
        }
        match policy {
            Policy::Open => Ok(Grant {
                role: Role::Presenter,
                name: None,
            }),
            Policy::Token => Err(Denied::TokenRequired(format!(
                "room {room} admits join tokens only, not passwords"
            ))),
            Policy::Password(phc) => {
                let given = creds.password.clone().unwrap_or_default();
                let phc = phc.clone();
                let Ok(_permit) = self.hashing.acquire().await else {
                    return Err(Denied::Required("the server is shutting down".into()));
                };
                // Guesses queued behind others are throttled by what those found.
                if let Err(retry_after) = self.throttle().check(ip, now) {
                    return Err(Denied::Throttled { retry_after });
                }
                let ok = tokio::task::spawn_blocking(move || password::verify(&phc, &given))
                    .await
                    .unwrap_or(false);
                if ok {
                    Ok(Grant {
                        role: Role::Presenter,
                        name: None,
                    })
                } else {
                    Err(Denied::Wrong(format!("wrong password for room {room}")))
                }
            }
        }
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(s: &str) -> RoomName {
        RoomName::parse(s).unwrap()
    }

    fn access() -> Access {
        let mut p = HashMap::new();
        p.insert(
            room("locked"),
            Policy::Password(password::hash("pw").unwrap()),
        );
        p.insert(room("invite"), Policy::Token);
        Access::new(p, TokenKey::new(b"test secret, long enough"))
    }

    fn token(a: &Access, room: &str, role: Role, exp: u64) -> String {
        a.key().sign(&token::Claims {
            room: room.into(),
            name: "Ann".into(),
            role,
            exp,
            iat: 0,
        })
    }

    #[tokio::test]
    async fn viewer_tokens_admit_viewers_of_their_room_only() {
        let a = access();
        let ip: IpAddr = "192.0.2.10".parse().unwrap();
        let (t, exp) = a.viewer_token(&room("invite"), "Ann (RTSP)", 3600);
        assert!((unix_now() + 3590..=unix_now() + 3600).contains(&exp));
        let creds = Credentials {
            password: None,
            token: Some(t.clone()),
        };
        let grant = a
            .admit(&room("invite"), &creds, ip, Instant::now())
            .await
            .unwrap();
        assert_eq!(grant.role, Role::Viewer);
        assert!(!grant.role.can_publish());
        assert!(matches!(
            a.admit(&room("locked"), &creds, ip, Instant::now()).await,
            Err(Denied::Wrong(_))
        ));
    }

    #[tokio::test]
    async fn policies() {
        let a = access();
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        let now = Instant::now();
        let none = Credentials::default();
        let pw = |s: &str| Credentials {
            password: Some(s.into()),
            token: None,
        };
        let tok = |t: String| Credentials {
            password: None,
            token: Some(t),
        };
        let open = a.admit(&room("open"), &none, ip, now).await.unwrap();
        assert_eq!(open.role, Role::Presenter);
        assert!(matches!(
            a.admit(&room("locked"), &none, ip, now).await,
            Err(Denied::Required(_))
        ));
        assert_eq!(
            a.admit(&room("locked"), &pw("pw"), ip, now)
                .await
                .unwrap()
                .role,
            Role::Presenter
        );
        assert!(matches!(
            a.admit(&room("locked"), &pw("nope"), ip, now).await,
            Err(Denied::Wrong(_))
        ));
        assert!(matches!(
            a.admit(&room("invite"), &pw("pw"), ip, now).await,
            Err(Denied::TokenRequired(_))
        ));
        assert!(matches!(
            a.admit(&room("invite"), &none, ip, now).await,
            Err(Denied::TokenRequired(_))
        ));
        let later = unix_now() + 3600;
        let g = a
            .admit(
                &room("invite"),
                &tok(token(&a, "invite", Role::Viewer, later)),
                ip,
                now,
            )
            .await
            .unwrap();
        assert_eq!(
            g,
            Grant {
                role: Role::Viewer,
                name: Some("Ann".into())
            }
        );
        // A token for another room, or expired, is wrong; in an open room it still gives its role.
        assert!(matches!(
            a.admit(
                &room("invite"),
                &tok(token(&a, "other", Role::Viewer, later)),
                ip,
                now
            )
            .await,
            Err(Denied::Wrong(_))
        ));
        assert!(matches!(
            a.admit(
                &room("invite"),
                &tok(token(&a, "invite", Role::Viewer, 5)),
                ip,
                now
            )
            .await,
            Err(Denied::Wrong(_))
        ));
        let op = a
            .admit(
                &room("open"),
                &tok(token(&a, "open", Role::Operator, later)),
                ip,
                now,
            )
            .await
            .unwrap();
        assert_eq!(op.role, Role::Operator);
    }

    #[tokio::test]
    async fn repeated_failures_are_throttled_per_address() {
        let a = access();
        let ip: IpAddr = "192.0.2.10".parse().unwrap();
        let other: IpAddr = "192.0.2.11".parse().unwrap();
        let now = Instant::now();
        let wrong = Credentials {
            password: Some("wrong".into()),
            token: None,
        };
        for _ in 0..throttle::MAX_FAILURES {
            assert!(matches!(
                a.admit(&room("locked"), &wrong, ip, now).await,
                Err(Denied::Wrong(_))
            ));
        }
        let right = Credentials {
            password: Some("pw".into()),
            token: None,
        };
        assert!(matches!(
            a.admit(&room("locked"), &right, ip, now).await,
            Err(Denied::Throttled { .. })
        ));
        assert!(a.admit(&room("locked"), &right, other, now).await.is_ok());
        assert!(a
            .admit(&room("locked"), &right, ip, now + throttle::WINDOW)
            .await
            .is_ok());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_concurrent_flood_of_guesses_is_cut_short() {
        let a = std::sync::Arc::new(access());
        let ip: IpAddr = "192.0.2.12".parse().unwrap();
        let now = Instant::now();
        let guesses = (0..30).map(|i| {
            let a = a.clone();
            tokio::spawn(async move {
                let c = Credentials {
                    password: Some(format!("guess {i}")),
                    token: None,
                };
                a.admit(&room("locked"), &c, ip, now).await
            })
        });
        let results = futures_util::future::join_all(guesses).await;
        let checked = results
            .iter()
            .filter(|r| matches!(r, Ok(Err(Denied::Wrong(_)))))
            .count();
        let throttled = results
            .iter()
            .filter(|r| matches!(r, Ok(Err(Denied::Throttled { .. }))))
            .count();
        assert_eq!(checked + throttled, 30);
        assert!(
            checked <= throttle::MAX_FAILURES as usize + HASHING_AT_ONCE,
            "{checked} passwords were checked"
        );
    }
}
