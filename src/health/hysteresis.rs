//! Rise/fall hysteresis: consecutive probe outcomes to a verdict. Pure: no
//! clock, no I/O, so every transition is tested exactly.

use crate::model::Verdict;

/// Turns probe outcomes into a [`Verdict`].
///
/// Starts [`Verdict::Unknown`]. `rise` consecutive successes make it
/// [`Verdict::Up`]; `fall` consecutive failures make it [`Verdict::Down`]. Any
/// outcome of the other kind resets the streak, so a flapping instance keeps
/// its verdict instead of flipping on every probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hysteresis {
    rise: u32,
    fall: u32,
    verdict: Verdict,
    successes: u32,
    failures: u32,
}

impl Hysteresis {
    /// A new, unknown verdict. A threshold of 0 is taken as 1: config
    /// validation forbids 0, and "no probe needed" has no useful meaning.
    pub fn new(rise: u32, fall: u32) -> Self {
        Hysteresis {
            rise: rise.max(1),
            fall: fall.max(1),
            verdict: Verdict::Unknown,
            successes: 0,
            failures: 0,
        }
    }

    /// Records one probe outcome; returns the new verdict if it changed.
    pub fn record(&mut self, ok: bool) -> Option<Verdict> {
        let (streak, threshold, target) = if ok {
            self.failures = 0;
            self.successes = self.successes.saturating_add(1);
            (self.successes, self.rise, Verdict::Up)
        } else {
            self.successes = 0;
            self.failures = self.failures.saturating_add(1);
            (self.failures, self.fall, Verdict::Down)
        };
        if streak >= threshold && self.verdict != target {
            self.verdict = target;
            Some(target)
        } else {
            None
        }
    }

    /// The current verdict.
    pub fn verdict(&self) -> Verdict {
        self.verdict
    }

    /// Successes in a row, up to now.
    pub fn consecutive_successes(&self) -> u32 {
        self.successes
    }

    /// Failures in a row, up to now.
    pub fn consecutive_failures(&self) -> u32 {
        self.failures
    }
}
