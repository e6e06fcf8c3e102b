//! The lease behind S3, apart from where its inputs come from: when this
//! node last heard from a quorum-holding leader, and whether it has applied
//! what that leader committed.
//!
//! A node answers service names until `lease` after its last contact. A
//! node whose lease ran out answers again only once it has caught up, so it
//! never serves an answer older than the one the cluster moved on to while
//! it was cut off. The gap is noticed however it shows: by a check that
//! finds the lease expired, or by the next contact, which arrives after the
//! deadline when no check ran in between (a process frozen by SIGSTOP checks
//! nothing, and a leader's heartbeat may be the first thing it handles).

use std::time::Duration;

use tokio::time::Instant;

/// The lease of one node; see the module documentation.
#[derive(Debug)]
pub(crate) struct LeaseClock {
    lease: Duration,
    /// The last moment a quorum-holding leader (this node included) was
    /// known to be in charge; the lease counts from here.
    contact: Option<Instant>,
    /// Whether the lease has held without a gap since this node last caught up.
    answering: bool,
}

impl LeaseClock {
    /// A lease of `lease` that is not held until the first contact.
    pub(crate) fn new(lease: Duration) -> LeaseClock {
        LeaseClock {
            lease,
            contact: None,
            answering: false,
        }
    }

    /// Records contact with a quorum-holding leader at `at`. Older contacts
    /// than the last one change nothing.
    pub(crate) fn touch(&mut self, at: Instant) {
        if self.contact.is_some_and(|c| c >= at) {
            return;
        }
        if self.contact.is_none_or(|c| c + self.lease <= at) {
            self.answering = false;
        }
        self.contact = Some(at);
    }

    /// Until when this node may answer service names, as of `now`: `None`
    /// outside the lease, or inside a new one until `caught_up` says the
    /// node has applied what the leader committed.
    pub(crate) fn deadline(
        &mut self,
        now: Instant,
        caught_up: impl FnOnce() -> bool,
    ) -> Option<Instant> {
        let Some(deadline) = self.contact.map(|c| c + self.lease).filter(|&d| d > now) else {
            self.answering = false;
            return None;
        };
        if !self.answering {
            if !caught_up() {
                return None;
            }
            self.answering = true;
        }
        Some(deadline)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(2);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn no_contact_no_lease() {
        let mut clock = LeaseClock::new(LEASE);
        assert_eq!(clock.deadline(Instant::now(), || true), None);
    }

    #[test]
    fn a_contact_holds_the_lease_for_its_length_once_caught_up() {
        let t0 = Instant::now();
        let mut clock = LeaseClock::new(LEASE);
        clock.touch(t0);
        assert_eq!(
            clock.deadline(t0 + ms(10), || false),
            None,
            "not caught up yet"
        );
        assert_eq!(clock.deadline(t0 + ms(20), || true), Some(t0 + LEASE));
        // Caught up once, it keeps answering through later contacts even
        // while the newest commit is still being applied.
        clock.touch(t0 + ms(500));
        assert_eq!(
            clock.deadline(t0 + ms(600), || false),
            Some(t0 + ms(500) + LEASE)
        );
        assert_eq!(clock.deadline(t0 + ms(500) + LEASE, || true), None);
    }

    #[test]
    fn an_older_contact_does_not_shorten_the_lease() {
        let t0 = Instant::now();
        let mut clock = LeaseClock::new(LEASE);
        clock.touch(t0 + ms(100));
        clock.touch(t0);
        assert_eq!(clock.deadline(t0, || true), Some(t0 + ms(100) + LEASE));
    }

    #[test]
    fn a_lapse_seen_by_a_check_waits_for_catching_up() {
        let t0 = Instant::now();
        let mut clock = LeaseClock::new(LEASE);
        clock.touch(t0);
        assert!(clock.deadline(t0, || true).is_some());
        assert_eq!(clock.deadline(t0 + LEASE + ms(1), || true), None);
        clock.touch(t0 + ms(3000));
        assert_eq!(clock.deadline(t0 + ms(3001), || false), None);
        assert_eq!(
            clock.deadline(t0 + ms(3002), || true),
            Some(t0 + ms(3000) + LEASE)
        );
    }

    // The frozen-process case: nothing checked the lease while it ran out,
    // and the first thing handled afterwards is a new leader's heartbeat.
    #[test]
    fn a_lapse_found_only_by_the_next_contact_waits_for_catching_up() {
        let t0 = Instant::now();
        let mut clock = LeaseClock::new(LEASE);
        clock.touch(t0);
        assert!(clock.deadline(t0, || true).is_some());
        clock.touch(t0 + ms(3000));
        assert_eq!(
            clock.deadline(t0 + ms(3001), || false),
            None,
            "answered from a state older than the new leader's commit"
        );
        assert!(clock.deadline(t0 + ms(3002), || true).is_some());
    }

    #[test]
    fn a_contact_exactly_at_the_deadline_is_a_lapse() {
        let t0 = Instant::now();
        let mut clock = LeaseClock::new(LEASE);
        clock.touch(t0);
        assert!(clock.deadline(t0, || true).is_some());
        clock.touch(t0 + LEASE);
        assert_eq!(clock.deadline(t0 + LEASE, || false), None);
    }
}
