//! Response rate limiting for UDP, in the spirit of BIND's RRL: a spoofed
//! flood that names a victim as its source, or one greedy client, gets at
//! most `rate` answers a second per client prefix (IPv4 /24, IPv6 /56 by
//! default, as BIND's; [`ClientPrefixes`]), and the other clients keep
//! theirs. Sources in the exempt networks (BIND's `exempt-clients`;
//! loopback by default) are never limited and take no slot.
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

use crate::config::IpPrefix;

/// Entries in the table: BIND's default `max-table-size` is 20000. At 32
/// bytes each this is 512 KiB, allocated once, and only when limiting is on.
pub(crate) const SLOTS: usize = 16384;

/// How sources are grouped into clients: by the leading `ipv4` or `ipv6`
/// bits of their address. The rate limit and the per-source TCP cap share it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ClientPrefixes {
    /// Leading bits of an IPv4 source that make one client (at most 32).
    pub(crate) ipv4: u8,
    /// Leading bits of an IPv6 source that make one client (at most 64).
    pub(crate) ipv6: u8,
}

impl Default for ClientPrefixes {
    fn default() -> ClientPrefixes {
        ClientPrefixes {
            ipv4: crate::config::DEFAULT_RATE_LIMIT_IPV4_PREFIX,
            ipv6: crate::config::DEFAULT_RATE_LIMIT_IPV6_PREFIX,
        }
    }
}

/// One client prefix as a number: bit 64 marks IPv4 (then the prefix bits
/// below it), bit 65 IPv6. Never 0, which marks a free slot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub(crate) struct PrefixKey(u128);

impl ClientPrefixes {
    /// The client prefix `source` belongs to. An IPv4-mapped IPv6 source
    /// (a dual-stack socket) counts as its IPv4 address. Lengths past 32
    /// and 64 bits count as 32 and 64.
    pub(crate) fn key(&self, source: IpAddr) -> PrefixKey {
        match source.to_canonical() {
            IpAddr::V4(v4) => {
                let drop = 32 - u32::from(self.ipv4.min(32));
                let bits = u32::from(v4).checked_shr(drop).unwrap_or(0);
                PrefixKey(1 << 64 | u128::from(bits))
            }
            IpAddr::V6(v6) => {
                let drop = 64 - u32::from(self.ipv6.min(64));
                // The top half of the address; the shift leaves 64 bits.
                let top = (u128::from(v6) >> 64) as u64;
                let bits = top.checked_shr(drop).unwrap_or(0);
                PrefixKey(2 << 64 | u128::from(bits))
            }
        }
    }
}

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
    /// How sources are grouped into the prefixes that share a budget.
    prefixes: ClientPrefixes,
    /// Networks whose sources are never limited (`dns.rate_limit_exempt`).
    exempt: Box<[IpPrefix]>,
    /// The fixed-size table; held only for one probe, never across an await.
    slots: Mutex<Box<[Slot]>>,
}

/// One prefix's state.
#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    /// The prefix; the default (0) marks a free slot (no key is 0).
    key: PrefixKey,
    /// When the prefix's bucket is full again (GCRA's theoretical arrival
    /// time), in nanoseconds after `base`. At or before now: idle.
    full_at: u64,
    /// Limited responses so far: picks which of them slip.
    limited: u32,
}

impl RateLimiter {
    /// A limiter allowing `rate` responses a second per prefix (IPv4 /24,
    /// IPv6 /56) and exempting no one, `None` when `rate` is 0 (limiting
    /// off). `now` is the time base for [`Self::check`].
    pub(crate) fn new(rate: u32, slip: u32, now: Instant) -> Option<RateLimiter> {
        RateLimiter::with_slots(rate, slip, SLOTS, now)
    }

    /// [`Self::new`] with a clock that never advances past `now`: every
    /// `check` for the next century happens at the same instant, so a
    /// prefix that spent its budget stays over it. For comparing two paths
    /// that must reach the same verdicts whatever the time between checks.
    pub(crate) fn frozen(rate: u32, slip: u32, now: Instant) -> Option<RateLimiter> {
        // Times before the base read as the base itself.
        let base = now
            .checked_add(Duration::from_secs(100 * 365 * 86_400))
            .unwrap_or(now);
        RateLimiter::new(rate, slip, base)
    }

    /// This limiter, grouping sources by `prefixes`.
    pub(crate) fn grouped_by(mut self, prefixes: ClientPrefixes) -> RateLimiter {
        self.prefixes = prefixes;
        self
    }

    /// This limiter, never limiting sources in `exempt`.
    pub(crate) fn exempting(mut self, exempt: &[IpPrefix]) -> RateLimiter {
        self.exempt = exempt.into();
        self
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
            prefixes: ClientPrefixes::default(),
            exempt: Box::default(),
            slots: Mutex::new(vec![Slot::default(); slots.next_power_of_two()].into()),
        })
    }

    /// Spends one response of `source`'s prefix at `now`, or says what to do
    /// instead when its budget is gone.
    pub(crate) fn check(&self, source: IpAddr, now: Instant) -> Verdict {
        if self.exempt.iter().any(|network| network.contains(source)) {
            return Verdict::Send;
        }
        let now = nanos(now.saturating_duration_since(self.base));
        let key = self.prefixes.key(source);
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
            let idle = |s: &Slot| s.key == PrefixKey::default() || s.full_at <= now;
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
    fn exempt_sources_are_never_limited_and_spend_no_budget() {
        let start = Instant::now();
        let exempt = [
            "127.0.0.53".parse().expect("a prefix"),
            "2001:db8::/32".parse().expect("a prefix"),
        ];
        let limiter = RateLimiter::new(1, 0, start)
            .expect("on")
            .exempting(&exempt);
        for source in ["127.0.0.53", "::ffff:127.0.0.53", "2001:db8:1:2::3"] {
            assert_eq!(
                spend(&limiter, source, start, 50),
                [Verdict::Send; 50],
                "{source}"
            );
        }
        // A neighbour in the same /24 is limited as before, on its own budget.
        assert_eq!(
            spend(&limiter, "127.0.0.1", start, 3),
            [Verdict::Send, Verdict::Drop, Verdict::Drop]
        );
        assert_eq!(limiter.check(ip("127.0.0.53"), start), Verdict::Send);
        let slots = limiter.slots.lock().expect("not poisoned");
        let used = slots
            .iter()
            .filter(|s| s.key != PrefixKey::default())
            .count();
        assert_eq!(used, 1, "exempt sources take no slot");
    }

    #[test]
    fn the_prefix_lengths_decide_which_sources_share_a_budget() {
        let start = Instant::now();
        let limiter = RateLimiter::new(1, 0, start)
            .expect("on")
            .grouped_by(ClientPrefixes { ipv4: 32, ipv6: 64 });
        for (source, verdict) in [
            ("192.0.2.1", Verdict::Send),
            ("192.0.2.1", Verdict::Drop),
            // Another host in the /24: its own budget at /32.
            ("192.0.2.2", Verdict::Send),
            ("2001:db8:0:1::1", Verdict::Send),
            ("2001:db8:0:1:ffff::2", Verdict::Drop),
            ("2001:db8:0:2::1", Verdict::Send),
        ] {
            assert_eq!(limiter.check(ip(source), start), verdict, "{source}");
        }
        let wide = RateLimiter::new(1, 0, start)
            .expect("on")
            .grouped_by(ClientPrefixes { ipv4: 8, ipv6: 16 });
        assert_eq!(wide.check(ip("10.1.2.3"), start), Verdict::Send);
        assert_eq!(wide.check(ip("10.200.0.1"), start), Verdict::Drop);
        assert_eq!(wide.check(ip("2001:ffff::1"), start), Verdict::Send);
        assert_eq!(wide.check(ip("2001:1::1"), start), Verdict::Drop);
        assert_eq!(wide.check(ip("11.0.0.1"), start), Verdict::Send);
    }

    #[test]
    fn ipv4_and_ipv6_prefixes_never_share_a_key_and_none_is_the_free_mark() {
        let prefixes = ClientPrefixes { ipv4: 32, ipv6: 64 };
        let v4 = prefixes.key(ip("0.0.0.0"));
        let v6 = prefixes.key(ip("::"));
        assert_ne!(v4, v6);
        assert_ne!(v4, PrefixKey::default());
        assert_ne!(v6, PrefixKey::default());
        assert_ne!(
            prefixes.key(ip("255.255.255.255")),
            prefixes.key(ip("::ffff:ffff"))
        );
    }

    #[test]
    fn a_frozen_limiter_never_refills() {
        let now = Instant::now();
        let limiter = RateLimiter::frozen(1, 1, now).expect("on");
        let later = now + Duration::from_secs(3600);
        assert_eq!(limiter.check(ip("192.0.2.1"), now), Verdict::Send);
        assert_eq!(spend(&limiter, "192.0.2.1", later, 3), [Verdict::Slip; 3]);
    }

    #[test]
    fn a_slot_takes_32_bytes_as_the_table_size_says() {
        assert_eq!(size_of::<Slot>(), 32);
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
