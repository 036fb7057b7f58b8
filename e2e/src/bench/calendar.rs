//! The team's calendar for the economics trace: the windows a team would write into
//! `hotPool.schedule` from what it knows of its day in advance (shared by the measured and the
//! simulated replay).

use std::time::Duration;

use spark_connect_operator::controller::pool::autoscale::poisson_quantile;

use super::trace::{Day, WORKSHOP_AT, WORKSHOP_CLAIMS, WORKSHOP_EVERY};

/// A window of the team's calendar, in seconds into the day.
#[derive(Clone, Debug)]
pub struct CalendarWindow {
    pub what: &'static str,
    pub at: f64,
    pub length: f64,
    pub idle: usize,
}

/// How long the calendar's phase windows stay open, while the autoscaler catches up.
const PHASE_WINDOW: f64 = 20.0;

/// The schedule a team writes from what it knows in advance: the start of each phase whose
/// demand rises (the working day, the busy hour, after lunch), at the idle servers that phase's
/// rate needs (99 % of the arrivals within a start-up time `start`, as the autoscaler reckons),
/// and the workshop, at its size on top of the afternoon's; for the phases of `day`.
pub fn calendar(day: Day, start: Duration) -> Vec<CalendarWindow> {
    let need = |rate: f64| poisson_quantile(rate * start.as_secs_f64(), 0.99);
    let mut windows = Vec::new();
    let mut previous = 0.0;
    let mut at_workshop = 0.0;
    for (at, phase) in day.phase_starts() {
        if phase.rate > previous {
            windows.push(CalendarWindow {
                what: phase.name,
                at,
                length: PHASE_WINDOW,
                idle: need(phase.rate),
            });
        }
        if (at..at + phase.length).contains(&WORKSHOP_AT) {
            at_workshop = phase.rate;
        }
        previous = phase.rate;
    }
    windows.push(CalendarWindow {
        what: "workshop",
        at: WORKSHOP_AT,
        length: f64::from(WORKSHOP_CLAIMS) * WORKSHOP_EVERY + 2.0,
        idle: WORKSHOP_CLAIMS as usize + need(at_workshop),
    });
    windows
}
