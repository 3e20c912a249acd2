//! What a cluster node reads from Redis: signed node records (`cluster::placement`),
//! relayed operator actions (`cluster::action`) and registered cameras (`cluster::cameras`),
//! as anyone with access to Redis could write them. Nothing panics; only a value sealed with the cluster's key opens, and what opens
//! seals back to the same bytes.
#![no_main]

use confab::cluster::action::Relay;
use confab::cluster::cameras::CameraKey;
use confab::cluster::placement::{seal, unseal, RecordKey};
use libfuzzer_sys::fuzz_target;

const SECRET: &[u8] = b"the fuzzed cluster's secret";

fuzz_target!(|data: &[u8]| {
    let key = RecordKey::new(SECRET);
    let _ = key.open(data);
    let mut relay = Relay::new(SECRET, "me");
    let _ = relay.open(data, 1_000_000);
    let _ = CameraKey::new(SECRET).open("room/name", data);
    // The input's tail as JSON under a raw key: the seal opens to exactly it.
    let json = String::from_utf8_lossy(data);
    let sealed = seal(b"k", &json);
    assert_eq!(unseal(b"k", sealed.as_bytes()), Ok(json.as_bytes()));
    assert!(unseal(b"another key", sealed.as_bytes()).is_err());
});
