//! A region's health: HEALTHY -> SUSPECT -> DOWN -> RECOVERING -> HEALTHY, driven by probe results
//! (and produce failures), with hysteresis both ways: one failure only makes a region SUSPECT, which
//! moves no traffic; `down_after` failures in a row make it DOWN; and a DOWN region must answer every
//! probe for `hold_down` before it is HEALTHY again, so a flapping cluster does not flap traffic.
//!
//! A cluster whose every broker refuses connections is DOWN at once: nothing listens where its
//! brokers were (a killed process, a lost node), which one observation shows as surely as many. Only
//! a silent cluster (requests that hang, packets that vanish) needs `down_after` failures, since a
//! slow answer and a lost cluster look alike once or twice.

use std::{fmt, time::Duration};

use tokio::time::Instant;

use serde::Serialize;

/// Where a region stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RegionHealth {
    /// Answering.
    Healthy,
    /// Failed recently but not often enough to move traffic.
    Suspect,
    /// Lost: traffic moves elsewhere.
    Down,
    /// Answering again after being lost, not yet for the hold-down time.
    Recovering,
}

impl RegionHealth {
    /// Whether traffic may go to a region in this state. A recovering region is not trusted yet.
    pub fn usable(self) -> bool {
        matches!(self, Self::Healthy | Self::Suspect)
    }

    /// The name operators see.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Healthy => "HEALTHY",
            Self::Suspect => "SUSPECT",
            Self::Down => "DOWN",
            Self::Recovering => "RECOVERING",
        }
    }
}

impl fmt::Display for RegionHealth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What one probe (or client request) found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Observation {
    /// The region answered.
    Answered,
    /// It failed, or did not answer in time.
    Failed,
    /// Every broker refused the connection: nothing listens there.
    Refused,
}

/// The state machine of one region. Pure: the caller says what was observed and when.
#[derive(Debug, Clone)]
pub(crate) struct HealthMachine {
    state: RegionHealth,
    failures_in_a_row: u32,
    since: Instant,
    changes: u64,
    down_after: u32,
    hold_down: Duration,
}

impl HealthMachine {
    /// A region believed healthy until a probe says otherwise.
    pub(crate) fn new(down_after: u32, hold_down: Duration, now: Instant) -> Self {
        Self {
            state: RegionHealth::Healthy,
            failures_in_a_row: 0,
            since: now,
            changes: 0,
            down_after: down_after.max(1),
            hold_down,
        }
    }

    pub(crate) fn state(&self) -> RegionHealth {
        self.state
    }

    /// When the current state began.
    pub(crate) fn since(&self) -> Instant {
        self.since
    }

    /// State changes so far.
    pub(crate) fn changes(&self) -> u64 {
        self.changes
    }

    /// Takes in one observation; returns the new state when it changed.
    pub(crate) fn observe(&mut self, seen: Observation, now: Instant) -> Option<RegionHealth> {
        use Observation::{Answered, Failed, Refused};
        use RegionHealth::{Down, Healthy, Recovering, Suspect};
        self.failures_in_a_row = match seen {
            Answered => 0,
            Failed | Refused => self.failures_in_a_row.saturating_add(1),
        };
        let next = match (self.state, seen) {
            (Healthy | Suspect, Refused) => Down,
            (Healthy | Suspect, Failed) if self.failures_in_a_row >= self.down_after => Down,
            (Healthy, Failed) => Suspect,
            (Suspect, Answered) => Healthy,
            (Down, Answered) => Recovering,
            (Recovering, Failed | Refused) => Down,
            (Recovering, Answered) if now.duration_since(self.since) >= self.hold_down => Healthy,
            (state, _) => state,
        };
        (next != self.state).then(|| {
            self.state = next;
            self.since = now;
            self.changes += 1;
            next
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOLD: Duration = Duration::from_secs(10);

    fn run(
        machine: &mut HealthMachine,
        start: Instant,
        steps: &[(u64, bool)],
    ) -> Vec<RegionHealth> {
        let seen = |answered| {
            if answered {
                Observation::Answered
            } else {
                Observation::Failed
            }
        };
        steps
            .iter()
            .filter_map(|&(at, answered)| {
                machine.observe(seen(answered), start + Duration::from_secs(at))
            })
            .collect()
    }

    #[test]
    fn a_cluster_that_refuses_connections_is_down_at_once_and_still_held_down() {
        let start = Instant::now();
        let mut machine = HealthMachine::new(3, HOLD, start);
        use RegionHealth::*;
        let at = |seconds| start + Duration::from_secs(seconds);
        assert_eq!(machine.observe(Observation::Refused, at(1)), Some(Down));
        // Back, then refusing again within the hold-down: down again, and healthy only after a
        // whole hold-down of answers.
        assert_eq!(
            machine.observe(Observation::Answered, at(2)),
            Some(Recovering)
        );
        assert_eq!(machine.observe(Observation::Refused, at(3)), Some(Down));
        assert_eq!(
            machine.observe(Observation::Answered, at(4)),
            Some(Recovering)
        );
        assert_eq!(machine.observe(Observation::Answered, at(10)), None);
        assert_eq!(
            machine.observe(Observation::Answered, at(14)),
            Some(Healthy)
        );
        // From SUSPECT too.
        assert_eq!(machine.observe(Observation::Failed, at(15)), Some(Suspect));
        assert_eq!(machine.observe(Observation::Refused, at(16)), Some(Down));
    }

    #[test]
    fn one_failure_is_only_suspect() {
        let start = Instant::now();
        let mut machine = HealthMachine::new(3, HOLD, start);
        let changes = run(
            &mut machine,
            start,
            &[(1, false), (2, true), (3, false), (4, true)],
        );
        use RegionHealth::*;
        assert_eq!(changes, [Suspect, Healthy, Suspect, Healthy]);
    }

    #[test]
    fn failures_in_a_row_make_it_down_and_recovery_waits_for_the_hold_down() {
        let start = Instant::now();
        let mut machine = HealthMachine::new(3, HOLD, start);
        use RegionHealth::*;
        let changes = run(
            &mut machine,
            start,
            &[
                (1, false),
                (2, false),
                (3, false),
                (4, true),
                (9, true),
                (14, true),
            ],
        );
        assert_eq!(changes, [Suspect, Down, Recovering, Healthy]);
        assert!(!Recovering.usable() && !Down.usable() && Suspect.usable());
    }

    #[test]
    fn a_flapping_region_stays_down() {
        let start = Instant::now();
        let mut machine = HealthMachine::new(2, HOLD, start);
        // Down for 2 s, up for 3 s, over and over: it never answers for the whole hold-down.
        let mut steps = Vec::new();
        for cycle in 0..10 {
            let base = cycle * 5;
            steps.extend([
                (base, false),
                (base + 1, false),
                (base + 2, true),
                (base + 3, true),
                (base + 4, true),
            ]);
        }
        let changes = run(&mut machine, start, &steps);
        assert!(
            changes.iter().all(|state| *state != RegionHealth::Healthy),
            "flapping made the region healthy: {changes:?}"
        );
        assert!(!machine.state().usable());
    }
}
