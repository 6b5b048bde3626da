//! One agent's breaker as types: `Closed → Open → HalfOpen → Closed`. Every move consumes the state it
//! leaves, so a state can only be left by a move it has.

use serde::{Deserialize, Serialize};
use vigil_schemas::rows::{Actor, BreakerState, Mode};

/// What opened a breaker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trip {
    /// When (event time, or the command's stamp).
    pub at: i64,
    /// How it is carried out.
    pub mode: Mode,
    /// The rule or operator.
    pub actor: Actor,
    /// One sentence.
    pub reason: String,
    /// The transition that opened it (the webhook-id of the halt).
    pub transition_id: String,
}

impl Trip {
    /// The trip a transition made (restored from the log, or just decided).
    pub fn of(t: &vigil_schemas::rows::Transition) -> Trip {
        Trip {
            at: t.ts,
            mode: t.mode,
            actor: t.actor.clone(),
            reason: t.reason.clone(),
            transition_id: t.transition_id.clone(),
        }
    }
}

/// Acting normally.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Closed;

/// Halted (in shadow and warn mode: would be).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Open {
    /// What opened it (the strongest trip since it opened).
    pub trip: Trip,
    /// When it opened (a stronger trip later keeps this).
    pub since: i64,
    /// It stays open until an operator resumes it: an operator's halt, or the flap guard's cap.
    pub pinned: bool,
}

/// Allowed again on probation since `since`; the next trip reopens it at once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HalfOpen {
    /// When probation began.
    pub since: i64,
    /// The mode of the halt it follows.
    pub mode: Mode,
}

impl Closed {
    /// A rule or operator opens it.
    pub fn trip(self, trip: Trip, pinned: bool) -> Open {
        Open { since: trip.at, trip, pinned }
    }
}

impl Open {
    /// A stronger trip while open (a warn becoming an enforced halt, a rule's halt an operator's):
    /// same opening time, the stronger trip.
    pub fn strengthen(self, trip: Trip, pinned: bool) -> Open {
        Open { since: self.since, trip, pinned: self.pinned || pinned }
    }

    /// The cooldown ended: probation. Only an unpinned breaker lapses.
    pub fn cool(self, at: i64) -> Result<HalfOpen, Open> {
        if self.pinned { Err(self) } else { Ok(HalfOpen { since: at, mode: self.trip.mode }) }
    }

    /// An operator resumes it.
    pub fn resume(self) -> Closed {
        Closed
    }
}

impl HalfOpen {
    /// A trip during probation reopens at once.
    pub fn trip(self, trip: Trip, pinned: bool) -> Open {
        Open { since: trip.at, trip, pinned }
    }

    /// Probation passed quietly, or an operator resumed it.
    pub fn close(self) -> Closed {
        Closed
    }
}

/// Where one agent's breaker stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Breaker {
    /// Acting normally.
    Closed(Closed),
    /// Halted, or in shadow and warn mode would be.
    Open(Open),
    /// On probation.
    HalfOpen(HalfOpen),
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker::Closed(Closed)
    }
}

impl Breaker {
    /// The wire state.
    pub fn state(&self) -> BreakerState {
        match self {
            Breaker::Closed(_) => BreakerState::Closed,
            Breaker::Open(_) => BreakerState::Open,
            Breaker::HalfOpen(_) => BreakerState::HalfOpen,
        }
    }

    /// The halt in force, when it is open in enforce mode.
    pub fn enforced(&self) -> Option<&Open> {
        match self {
            Breaker::Open(o) if o.trip.mode == Mode::Enforce => Some(o),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_schemas::rows::Rule;

    fn trip(at: i64, mode: Mode) -> Trip {
        Trip {
            at,
            mode,
            actor: Actor::Rule(Rule::CriticalFinding),
            reason: "r".into(),
            transition_id: "t".into(),
        }
    }

    #[test]
    fn a_pinned_breaker_does_not_cool_and_probation_reopens() {
        let open = Closed.trip(trip(10, Mode::Enforce), true);
        let open = open.cool(20).expect_err("pinned stays open");
        assert_eq!(open.since, 10);
        let open = Closed.trip(trip(30, Mode::Warn), false).strengthen(trip(40, Mode::Enforce), false);
        assert_eq!((open.since, open.trip.mode), (30, Mode::Enforce));
        let half = open.cool(50).unwrap();
        assert_eq!(half.mode, Mode::Enforce);
        let again = half.trip(trip(60, Mode::Enforce), false);
        assert_eq!(again.since, 60);
        assert_eq!(Breaker::Open(again).enforced().map(|o| o.since), Some(60));
    }
}
