//! Response rate limiting for UDP, in the spirit of BIND's RRL: a spoofed
//! flood that names a victim as its source, or one greedy client, gets at
//! most `rate` answers a second per client prefix (IPv4 /24, IPv6 /56, as
//! BIND's defaults), and the other clients keep theirs.
//!
//! Each prefix has a token bucket holding one second of responses, kept as
//! a GCRA "theoretical arrival time" (one number per prefix). Over the rate,
//! every `slip`-th response is sent truncated (TC=1, no records): no bigger
//! than the query, so it reflects nothing, and a real client behind the
//! prefix retries over TCP, which proves its address and is not limited.
//! The others are dropped.
//!
//! BIND also keys on the answer (name and kind of response); we key on the
//! prefix alone because the whole zone is a handful of names, so one prefix
//! asking many names is no more legitimate than one asking a single name.
//!
//! Memory is fixed when the limiter is built: a table of [`SLOTS`] entries,
//! found by a keyed hash (attackers cannot aim at one slot) and a short
//! probe. When every probed slot holds a prefix still inside its window, the
//! least busy one is evicted; the evicted prefix then starts over with a
//! full bucket, so a table under pressure limits less, never more.
//!
//! Pure logic: no clock reads (time comes in as `now`), no I/O.

use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Entries in the table: BIND's default `max-table-size` is 20000. At 24
/// bytes each this is 384 KiB, allocated once, and only when limiting is on.
pub(crate) const SLOTS: usize = 16384;

/// Slots looked at for one prefix before one is evicted.
const PROBE: usize = 8;

/// What to do with one UDP response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Within the rate: send it as it is.
    Send,
    /// Over the rate, and this one slips: send it truncated with no records.
    Slip,
    /// Over the rate: send nothing.
    Drop,
}

/// Per-prefix response budgets; shared by every UDP query task.
pub(crate) struct RateLimiter {
    /// What one response costs, in nanoseconds: one second divided by the rate.
    interval: u64,
    /// How far a prefix's arrival time may run ahead of now: one second,
    /// so a prefix that was quiet may send `rate` responses at once.
    burst: u64,
    /// Every `slip`-th limited response is truncated instead of dropped; 0 never.
    slip: u32,
    /// Times are kept as nanoseconds after this instant.
    base: Instant,
    /// Keyed with a random seed per process, so slot positions cannot be predicted.
    hasher: RandomState,
    /// The fixed-size table; held only for one probe, never across an await.
    slots: Mutex<Box<[Slot]>>,
}

/// One prefix's state.
#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    /// The prefix ([`prefix_key`]); 0 marks a free slot (no key is 0).
    key: u64,
    /// When the prefix's bucket is full again (GCRA's theoretical arrival
    /// time), in nanoseconds after `base`. At or before now: idle.
    full_at: u64,
    /// Limited responses so far: picks which of them slip.
    limited: u32,
}

impl RateLimiter {
    /// A limiter allowing `rate` responses a second per prefix, `None` when
    /// `rate` is 0 (limiting off). `now` is the time base for [`Self::check`].
    pub(crate) fn new(rate: u32, slip: u32, now: Instant) -> Option<RateLimiter> {
        RateLimiter::with_slots(rate, slip, SLOTS, now)
    }

    /// [`Self::new`] with a table of `slots` entries (a power of two), so tests
    /// can fill a small one.
    pub(crate) fn with_slots(
        rate: u32,
        slip: u32,
        slots: usize,
        now: Instant,
    ) -> Option<RateLimiter> {
        if rate == 0 {
            return None;
        }
        let burst = 1_000_000_000;
        Some(RateLimiter {
            interval: burst / u64::from(rate),
            burst,
            slip,
            base: now,
            hasher: RandomState::new(),
            slots: Mutex::new(vec![Slot::default(); slots.next_power_of_two()].into()),
        })
    }

    /// Spends one response of `source`'s prefix at `now`, or says what to do
    /// instead when its budget is gone.
    pub(crate) fn check(&self, source: IpAddr, now: Instant) -> Verdict {
        let now = nanos(now.saturating_duration_since(self.base));
        let key = prefix_key(source);
        let hash = usize::try_from(self.hasher.hash_one(key)).unwrap_or_default();
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        let mask = slots.len() - 1;
        let probe = PROBE.min(slots.len());
        let position = |i: usize| hash.wrapping_add(i) & mask;

        // The prefix's own slot if it has one; otherwise the best one to
        // take: a free or idle slot, or else the one whose bucket refills
        // soonest (the least busy prefix, which loses the least).
        let mut found = None;
        let mut victim = position(0);
        for i in 0..probe {
            let at = position(i);
            let slot = &slots[at];
            if slot.key == key {
                found = Some(at);
                break;
            }
            let victim_slot = &slots[victim];
            let idle = |s: &Slot| s.key == 0 || s.full_at <= now;
            if !idle(victim_slot) && (idle(slot) || slot.full_at < victim_slot.full_at) {
                victim = at;
            }
        }
        let slot = match found {
            Some(at) => &mut slots[at],
            None => {
                slots[victim] = Slot {
                    key,
                    ..Slot::default()
                };
                &mut slots[victim]
            }
        };

        let start = slot.full_at.max(now);
        if start - now + self.interval <= self.burst {
            slot.full_at = start + self.interval;
            return Verdict::Send;
        }
        slot.limited = slot.limited.wrapping_add(1);
        if self.slip != 0 && slot.limited % self.slip == 0 {
            Verdict::Slip
        } else {
            Verdict::Drop
        }
    }
}

/// Nanoseconds in `duration`, saturating (585 years).
fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// The client prefix of `source` as one number: bit 63 marks IPv6 (then the
/// top 56 bits of the address), bit 62 IPv4 (then the top 24 bits). An
/// IPv4-mapped IPv6 source (a dual-stack socket) counts as its IPv4 address.
fn prefix_key(source: IpAddr) -> u64 {
    match source.to_canonical() {
        IpAddr::V4(v4) => 1 << 62 | u64::from(u32::from(v4) >> 8),
        IpAddr::V6(v6) => 1 << 63 | (u128::from(v6) >> 72) as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE: u32 = 10;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("an IP address")
    }

    /// `count` responses to `source` at `now`, by verdict.
    fn spend(limiter: &RateLimiter, source: &str, now: Instant, count: usize) -> Vec<Verdict> {
        (0..count).map(|_| limiter.check(ip(source), now)).collect()
    }

    #[test]
    fn a_quiet_prefix_gets_one_second_of_responses_at_once_and_then_is_limited() {
        let start = Instant::now();
        let limiter = RateLimiter::new(RATE, 2, start).expect("on");
        let verdicts = spend(&limiter, "192.0.2.1", start, 14);
        assert_eq!(verdicts[..10], [Verdict::Send; 10]);
        assert_eq!(
            verdicts[10..],
            [Verdict::Drop, Verdict::Slip, Verdict::Drop, Verdict::Slip]
        );
    }

    #[test]
    fn the_budget_refills_at_the_rate() {
        let start = Instant::now();
        let limiter = RateLimiter::new(RATE, 0, start).expect("on");
        spend(&limiter, "192.0.2.1", start, 10);
        assert_eq!(limiter.check(ip("192.0.2.1"), start), Verdict::Drop);
        // One tenth of a second buys one response at 10 per second.
        let later = start + Duration::from_millis(100);
        assert_eq!(limiter.check(ip("192.0.2.1"), later), Verdict::Send);
        assert_eq!(limiter.check(ip("192.0.2.1"), later), Verdict::Drop);
        // A whole quiet second refills the bucket, and no more than that.
        let much_later = later + Duration::from_secs(5);
        let verdicts = spend(&limiter, "192.0.2.1", much_later, 11);
        assert_eq!(verdicts[..10], [Verdict::Send; 10]);
        assert_eq!(verdicts[10], Verdict::Drop);
    }

    #[test]
    fn slip_picks_which_limited_responses_are_truncated() {
        let start = Instant::now();
        for (slip, expected) in [
            (0, [Verdict::Drop; 4]),
            (1, [Verdict::Slip; 4]),
            (
                3,
                [Verdict::Drop, Verdict::Drop, Verdict::Slip, Verdict::Drop],
            ),
        ] {
            let limiter = RateLimiter::new(1, slip, start).expect("on");
            assert_eq!(limiter.check(ip("192.0.2.1"), start), Verdict::Send);
            assert_eq!(
                spend(&limiter, "192.0.2.1", start, 4),
                expected,
                "slip {slip}"
            );
        }
    }

    #[test]
    fn sources_share_a_budget_only_within_a_prefix() {
        let start = Instant::now();
        let limiter = RateLimiter::new(1, 0, start).expect("on");
        for (source, verdict) in [
            ("192.0.2.1", Verdict::Send),
            ("192.0.2.254", Verdict::Drop),
            ("::ffff:192.0.2.9", Verdict::Drop),
            ("192.0.3.1", Verdict::Send),
            ("2001:db8:0:100::1", Verdict::Send),
            ("2001:db8:0:1ff:ffff::1", Verdict::Drop),
            ("2001:db8:0:200::1", Verdict::Send),
            // The same 24 bits as 192.0.2.0/24 but IPv6: another prefix.
            ("c000:200::1", Verdict::Send),
        ] {
            assert_eq!(limiter.check(ip(source), start), verdict, "{source}");
        }
    }

    #[test]
    fn rate_zero_turns_limiting_off() {
        assert!(RateLimiter::new(0, 2, Instant::now()).is_none());
    }

    #[test]
    fn a_full_table_evicts_the_least_busy_prefix_which_then_starts_over() {
        let start = Instant::now();
        let limiter = RateLimiter::with_slots(1, 0, 8, start).expect("on");
        // Eight prefixes fill the table (the probe covers all of it); the
        // first one used its budget longest ago, so its bucket refills first.
        for i in 0..8 {
            let at = start + Duration::from_millis(i);
            assert_eq!(limiter.check(ip(&format!("10.0.{i}.1")), at), Verdict::Send);
        }
        let now = start + Duration::from_millis(10);
        assert_eq!(
            limiter.check(ip("10.0.7.1"), now),
            Verdict::Drop,
            "still limited"
        );
        // A ninth prefix takes the least busy slot ...
        assert_eq!(limiter.check(ip("10.0.99.1"), now), Verdict::Send);
        // ... whose prefix is forgotten: it is answered again (limiting
        // less under pressure, never more), while the others still are not.
        assert_eq!(limiter.check(ip("10.0.0.1"), now), Verdict::Send);
        let slots = limiter.slots.lock().expect("not poisoned");
        assert_eq!(slots.len(), 8, "the table never grows");
    }

    #[test]
    fn thousands_of_prefixes_fit_in_the_fixed_table() {
        let start = Instant::now();
        let limiter = RateLimiter::new(RATE, 2, start).expect("on");
        for i in 0..(SLOTS as u32 * 2) {
            let source = IpAddr::from(std::net::Ipv4Addr::from(i << 8));
            assert_eq!(limiter.check(source, start), Verdict::Send);
        }
        let slots = limiter.slots.lock().expect("not poisoned");
        assert_eq!(slots.len(), SLOTS);
    }
}
