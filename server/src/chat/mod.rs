//! Chat: room messages (public and private), system notices and shared-file metadata.
//!
//! [`store`] is the durable record: SQLite at `<data>/confab.db` by default, or PostgreSQL
//! (`--database`), behind one interface. The server must commit a message *before* showing it
//! to anyone, so that nobody is ever shown a message that a restart would forget.
//!
//! The store is told the time (`ts` in milliseconds since the Unix epoch) rather than reading a
//! clock, so its tests are deterministic; [`unix_millis`] turns the server's clock into that.

pub mod preview;
pub mod rate;
pub mod service;
pub mod store;
pub mod text;
pub mod writer;

pub use service::{identity_key, Chat, ChatError, Upload, UploadError};
pub use store::{
    FileRecord, FileRef, Inserted, Kind, Location, MessageKind, NewMessage, PreviewFigures,
    PreviewRecord, Store, StoreError, StoredMessage, DEFAULT_LIMIT, MAX_LIMIT, SCHEMA_VERSION,
};

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (UTC), as stored in `ts`. Saturates instead of panicking
/// on a clock set before 1970 or past the year 292 million.
pub fn unix_millis(at: SystemTime) -> i64 {
    match at.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_millis()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_millis())
            .map(|ms| -ms)
            .unwrap_or(i64::MIN),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn unix_millis_table() {
        let cases = [
            (UNIX_EPOCH, 0),
            (
                UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
                1_700_000_000_123,
            ),
            (UNIX_EPOCH + Duration::from_micros(1_999), 1),
            (UNIX_EPOCH - Duration::from_millis(5), -5),
        ];
        for (at, want) in cases {
            assert_eq!(unix_millis(at), want, "{at:?}");
        }
    }
}
