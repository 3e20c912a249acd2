//! A token bucket per connection: `rate` messages per second on average, bursts of `burst`.
//! Told the time, so it is tested without sleeping.

use std::time::Instant;

#[derive(Debug, Clone)]
pub struct RateLimit {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl RateLimit {
    pub fn new(rate: f64, burst: u32, now: Instant) -> Self {
        RateLimit {
            rate,
            burst: burst as f64,
            tokens: burst as f64,
            last: now,
        }
    }

    /// Chat's limit: 10 messages per second, bursts of 20.
    pub fn chat(now: Instant) -> Self {
        RateLimit::new(10.0, 20, now)
    }

    /// Takes a token if there is one.
    pub fn allow(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn burst_then_steady_rate() {
        let t0 = Instant::now();
        let mut r = RateLimit::chat(t0);
        let burst = (0..30).filter(|_| r.allow(t0)).count();
        assert_eq!(burst, 20);
        // 100 ms later exactly one more token has accrued.
        assert!(r.allow(t0 + Duration::from_millis(100)));
        assert!(!r.allow(t0 + Duration::from_millis(100)));
        // Over 10 s at 20 attempts/s, about 10/s get through.
        let mut ok = 0;
        for i in 1..=200 {
            if r.allow(t0 + Duration::from_millis(100 + 50 * i)) {
                ok += 1;
            }
        }
        assert!((99..=101).contains(&ok), "{ok}");
        // A long pause refills only up to the burst.
        let later = t0 + Duration::from_secs(3600);
        assert_eq!((0..50).filter(|_| r.allow(later)).count(), 20);
        // A clock that steps back does not mint tokens.
        assert!(!r.allow(t0));
    }
}
