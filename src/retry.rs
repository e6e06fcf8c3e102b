//! Exponential backoff with jitter, shared by everything that retries an
//! outside party forever (hooks, external DNS publishers): the wait doubles
//! after each failure up to a ceiling, and a random factor keeps retries
//! that failed together from retrying together.

use std::time::Duration;

/// A retry schedule: `first` doubling up to `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
}

impl Backoff {
    /// The wait before attempt `attempt + 1` (attempts count from 1),
    /// scaled by `jitter` (drawn from 0.5 to 1.0 by the caller; clamped to
    /// 0–1).
    pub fn delay(&self, attempt: u32, jitter: f64) -> Duration {
        let doubled = self
            .first
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
        doubled.min(self.max).mul_f64(jitter.clamp(0.0, 1.0))
    }

    /// [`Backoff::delay`] with a fresh random jitter from 0.5 to 1.0.
    pub fn jittered(&self, attempt: u32) -> Duration {
        self.delay(attempt, rand::random_range(0.5..=1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_the_first_wait_up_to_the_ceiling() {
        let b = Backoff {
            first: Duration::from_millis(500),
            max: Duration::from_secs(30),
        };
        let waits: Vec<u128> = (1..=9).map(|a| b.delay(a, 1.0).as_millis()).collect();
        assert_eq!(
            waits,
            [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
        );
        assert_eq!(b.delay(u32::MAX, 1.0), Duration::from_secs(30));
    }

    #[test]
    fn jitter_scales_the_wait_down_and_is_clamped() {
        let b = Backoff {
            first: Duration::from_secs(1),
            max: Duration::from_secs(60),
        };
        assert_eq!(b.delay(2, 0.5), Duration::from_secs(1));
        assert_eq!(b.delay(2, 7.0), Duration::from_secs(2));
        let drawn = b.jittered(3);
        assert!(drawn >= Duration::from_secs(2) && drawn <= Duration::from_secs(4));
    }
}
