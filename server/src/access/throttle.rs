//! Failed logins per client address: after [`MAX_FAILURES`] wrong passwords or tokens within
//! [`WINDOW`], that address is refused without checking anything until the window has passed.
//! Sans-I/O: told the time. Bounded: at most [`MAX_ADDRESSES`] addresses are remembered.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

pub const MAX_FAILURES: u32 = 5;
pub const WINDOW: Duration = Duration::from_secs(60);
pub const MAX_ADDRESSES: usize = 10_000;

#[derive(Debug, Default)]
pub struct Throttle {
    failures: HashMap<IpAddr, (Instant, u32)>,
}

impl Throttle {
    /// `Err(retry_after)` while `ip` is locked out.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        match self.failures.get(&ip) {
            Some(&(since, n)) if n >= MAX_FAILURES && now < since + WINDOW => {
                Err(since + WINDOW - now)
            }
            _ => Ok(()),
        }
    }

    pub fn fail(&mut self, ip: IpAddr, now: Instant) {
        if self.failures.len() >= MAX_ADDRESSES && !self.failures.contains_key(&ip) {
            self.failures.retain(|_, (since, _)| now < *since + WINDOW);
            if self.failures.len() >= MAX_ADDRESSES {
                // Still full of recent failures: forget the oldest, never grow.
                if let Some(oldest) = self
                    .failures
                    .iter()
                    .min_by_key(|(_, (since, _))| *since)
                    .map(|(ip, _)| *ip)
                {
                    self.failures.remove(&oldest);
                }
            }
        }
        let entry = self.failures.entry(ip).or_insert((now, 0));
        if now >= entry.0 + WINDOW {
            *entry = (now, 0);
        }
        entry.1 += 1;
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.failures.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locks_out_after_repeated_failures_then_forgives() {
        let t0 = Instant::now();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let mut t = Throttle::default();
        for i in 0..MAX_FAILURES {
            assert!(t.check(a, t0).is_ok(), "failure {i}");
            t.fail(a, t0 + Duration::from_secs(i as u64));
        }
        let wait = t.check(a, t0 + Duration::from_secs(10)).unwrap_err();
        assert_eq!(wait, Duration::from_secs(50));
        assert!(t.check(b, t0).is_ok(), "other addresses are not affected");
        assert!(t.check(a, t0 + WINDOW).is_ok());
        t.fail(a, t0 + WINDOW);
        assert!(
            t.check(a, t0 + WINDOW).is_ok(),
            "a new window starts counting at 1"
        );
    }

    #[test]
    fn memory_is_bounded() {
        let t0 = Instant::now();
        let mut t = Throttle::default();
        for i in 0..(MAX_ADDRESSES as u32 + 500) {
            t.fail(IpAddr::from(i.to_be_bytes()), t0);
        }
        assert!(t.len() <= MAX_ADDRESSES);
    }
}
