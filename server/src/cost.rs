//! A session's cost budget, as ElectrumX keeps one: every request costs a tenth of a unit plus
//! one unit per millisecond of work it took, and the sum decays at a steady rate. Over the soft limit, the
//! session waits before each request until its cost is back at the limit, which holds it to the
//! decay rate; over the hard limit (a burst no wait could absorb: a batch of expensive calls),
//! it is disconnected. Connection counts bound how many sessions one client has; this bounds
//! what each of them may make the server do.

use std::time::{Duration, Instant};

use crate::config::CostLimits;

/// What the session does before its next request.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    Go,
    Wait(Duration),
    Disconnect,
}

pub struct Cost {
    limits: CostLimits,
    units: f64,
    at: Instant,
}

impl Cost {
    pub fn new(limits: CostLimits) -> Cost {
        Cost { limits, units: 0.0, at: Instant::now() }
    }

    /// Adds a request that took `work`.
    pub fn charge(&mut self, work: Duration) {
        self.charge_units(0.1 + work.as_secs_f64() * 1000.0);
    }

    fn charge_units(&mut self, units: f64) {
        self.decay(Instant::now());
        self.units += units;
    }

    /// The cost now, after decay.
    pub fn units(&mut self) -> f64 {
        self.decay(Instant::now());
        self.units
    }

    pub fn verdict(&mut self) -> Verdict {
        let units = self.units();
        let l = self.limits;
        if units > l.hard {
            Verdict::Disconnect
        } else if units > l.soft {
            Verdict::Wait(Duration::from_secs_f64((units - l.soft) / l.decay))
        } else {
            Verdict::Go
        }
    }

    fn decay(&mut self, now: Instant) {
        let secs = now.saturating_duration_since(self.at).as_secs_f64();
        self.units = (self.units - secs * self.limits.decay).max(0.0);
        self.at = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slowed_over_the_soft_limit_and_cut_off_over_the_hard_one() {
        let mut c = Cost::new(CostLimits { soft: 100.0, hard: 1000.0, decay: 10.0 });
        for _ in 0..1000 {
            c.charge(Duration::ZERO);
        }
        assert_eq!(c.verdict(), Verdict::Go);
        c.charge(Duration::from_micros(49_900)); // 150 units, with its tenth
        let Verdict::Wait(d) = c.verdict() else { panic!("over the soft limit") };
        assert!(d > Duration::from_millis(4900) && d <= Duration::from_secs(5), "{d:?}");
        c.charge(Duration::from_millis(900));
        assert_eq!(c.verdict(), Verdict::Disconnect);
        // Time forgives: 10 units a second.
        c.at -= Duration::from_secs(100);
        assert_eq!(c.verdict(), Verdict::Go);
        assert!((c.units() - 50.1).abs() < 0.1, "{}", c.units());
    }
}
