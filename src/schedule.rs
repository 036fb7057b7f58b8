//! Scheduled pool capacity (`hotPool.schedule`): windows of time, each opened by a cron
//! expression in a time zone and kept open for a duration, in which the pool keeps at least a
//! number of idle servers. Parsed once from the spec; asked, for an instant and the time servers
//! take to start, how many idle servers the open windows want and when that next changes.

use std::str::FromStr;
use std::time::Duration;

use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};

use crate::crd::ScheduleWindow;
use crate::duration::SCHEDULE_DURATION;

/// The soonest a change is reported, however near the edge.
const SOONEST_CHANGE: Duration = Duration::from_millis(100);

/// One window, parsed.
#[derive(Clone, Debug)]
pub struct Window {
    /// The spec's index, for messages.
    index: usize,
    opens: jiff_cron::Schedule,
    time_zone: TimeZone,
    duration: Duration,
    idle: usize,
}

/// The windows of a cluster that parsed.
#[derive(Clone, Debug, Default)]
pub struct Schedule {
    windows: Vec<Window>,
}

/// What the schedule wants at an instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Scheduled {
    /// Idle servers the open windows ask for (the largest; 0 when none is open).
    pub idle: usize,
    /// The open window asking for them (its index in `hotPool.schedule`).
    pub window: Option<usize>,
    /// When a window next opens or closes (counting its servers' lead), if ever.
    pub next_change: Option<Duration>,
}

impl Schedule {
    /// Parses the spec's windows; a window that does not parse is left out and described.
    pub fn parse(windows: &[ScheduleWindow]) -> (Self, Vec<String>) {
        let mut parsed = Vec::new();
        let mut refused = Vec::new();
        for (index, spec) in windows.iter().enumerate() {
            match Window::parse(index, spec) {
                Ok(window) => parsed.push(window),
                Err(why) => refused.push(format!("hotPool.schedule[{index}]: {why}")),
            }
        }
        (Self { windows: parsed }, refused)
    }

    /// Whether there is no window.
    pub fn is_empty(&self) -> bool {
        self.windows.is_empty()
    }

    /// What the windows want at `now` for servers that take `lead` to start: a window counts
    /// as open from `lead` before it opens until it closes.
    pub fn at(&self, now: Timestamp, lead: Duration) -> Scheduled {
        let mut scheduled = Scheduled::default();
        for window in &self.windows {
            let (open, change) = window.state(now, lead);
            if open && (scheduled.window.is_none() || window.idle > scheduled.idle) {
                scheduled.idle = window.idle;
                scheduled.window = Some(window.index);
            }
            // Never sooner than a moment from now: a look just before an edge must not spin.
            let change = change.map(|d| d.max(SOONEST_CHANGE));
            scheduled.next_change = match (scheduled.next_change, change) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        scheduled
    }
}

impl Window {
    fn parse(index: usize, spec: &ScheduleWindow) -> Result<Self, String> {
        let start = spec.start.trim();
        let fields: Vec<&str> = start.split_whitespace().collect();
        // Standard cron has no seconds field; the parser wants one first.
        let expression = match fields.len() {
            5 => format!("0 {}", fields.join(" ")),
            6 => fields.join(" "),
            n => {
                return Err(format!(
                    "start {start:?} has {n} fields; a cron expression has 5 (minute hour day-of-month month day-of-week), or 6 with seconds first"
                ));
            }
        };
        if fields
            .last()
            .is_some_and(|w| w.chars().any(|c| c.is_ascii_digit()))
        {
            return Err(format!(
                "start {start:?} numbers the days of the week; name them (Mon-Fri, Sun): cron dialects disagree on whether 0, 1 or 7 is Sunday"
            ));
        }
        let opens = jiff_cron::Schedule::from_str(&expression).map_err(|e| {
            // The parser's message points at the field with a caret; its last line says why.
            let message = e.to_string();
            let why = message.lines().last().unwrap_or_default().trim();
            format!("start {start:?} is not a cron expression: {why}")
        })?;
        let epoch = Timestamp::UNIX_EPOCH.to_zoned(TimeZone::UTC);
        if opens.after(epoch).next().is_none() {
            return Err(format!("start {start:?} names a date that never comes"));
        }
        let time_zone = match spec.time_zone.as_deref() {
            None => TimeZone::UTC,
            Some(name) => TimeZone::get(name)
                .map_err(|_| format!("timeZone {name:?} is not an IANA time zone"))?,
        };
        let duration = SCHEDULE_DURATION
            .parse(&spec.duration)
            .map_err(|e| e.to_string())?;
        Ok(Self {
            index,
            opens,
            time_zone,
            duration,
            idle: usize::try_from(spec.idle).unwrap_or(0),
        })
    }

    /// Whether the window counts as open at `now` (from `lead` before it opens), and how long
    /// until that next changes.
    fn state(&self, now: Timestamp, lead: Duration) -> (bool, Option<Duration>) {
        let Ok(lead) = SignedDuration::try_from(lead) else {
            return (false, None);
        };
        let Ok(ahead) = now.checked_add(lead) else {
            return (false, None);
        };
        let ahead = ahead.to_zoned(self.time_zone.clone());
        // The latest opening at or before `now + lead`, and the next one after it.
        let last = ahead
            .checked_add(SignedDuration::from_millis(1))
            .ok()
            .and_then(|just_after| self.opens.after(just_after).next_back());
        let next = self.opens.after(ahead).next();
        let until_next_opening = next.and_then(|n| {
            let starts_filling = n.timestamp().checked_sub(lead).ok()?;
            Duration::try_from(now.duration_until(starts_filling)).ok()
        });
        let closes = last.and_then(|l| l.timestamp().checked_add(self.duration).ok());
        match closes {
            Some(closes) if closes > now => {
                let until_close = Duration::try_from(now.duration_until(closes)).ok();
                let change = match (until_close, until_next_opening) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                (true, change)
            }
            _ => (false, until_next_opening),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(start: &str, duration: &str, idle: i32, time_zone: Option<&str>) -> ScheduleWindow {
        ScheduleWindow {
            start: start.into(),
            duration: duration.into(),
            idle,
            time_zone: time_zone.map(str::to_string),
        }
    }

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn schedule(windows: &[ScheduleWindow]) -> Schedule {
        let (schedule, refused) = Schedule::parse(windows);
        assert!(refused.is_empty(), "{refused:?}");
        schedule
    }

    #[test]
    fn a_window_counts_as_open_from_one_start_up_time_before_it_opens_until_it_closes() {
        // Weekdays 09:00-17:00 UTC; 2026-11-26 is a Thursday.
        let s = schedule(&[window("0 9 * * Mon-Fri", "8h", 5, None)]);
        let lead = Duration::from_secs(120);
        let before = s.at(at("2026-11-26T08:57:00Z"), lead);
        assert_eq!(before.idle, 0);
        assert_eq!(before.window, None);
        assert_eq!(
            before.next_change,
            Some(Duration::from_secs(60)),
            "opens at 08:58"
        );
        let filling = s.at(at("2026-11-26T08:58:30Z"), lead);
        assert_eq!((filling.idle, filling.window), (5, Some(0)));
        let open = s.at(at("2026-11-26T12:00:00Z"), lead);
        assert_eq!(open.idle, 5);
        assert_eq!(open.next_change, Some(Duration::from_secs(5 * 3600)));
        let closed = s.at(at("2026-11-26T17:00:00Z"), lead);
        assert_eq!(closed.idle, 0);
        // Friday's opening, less the lead.
        assert_eq!(
            closed.next_change,
            Some(Duration::from_secs(16 * 3600 - 120))
        );
    }

    #[test]
    fn the_weekend_has_no_window_and_a_time_zone_moves_it() {
        let s = schedule(&[window("0 9 * * Mon-Fri", "8h", 5, Some("Europe/Berlin"))]);
        // Saturday noon.
        assert_eq!(s.at(at("2026-11-28T12:00:00Z"), Duration::ZERO).idle, 0);
        // 09:00 in Berlin in November is 08:00 UTC.
        assert_eq!(s.at(at("2026-11-26T08:30:00Z"), Duration::ZERO).idle, 5);
        assert_eq!(s.at(at("2026-11-26T16:30:00Z"), Duration::ZERO).idle, 0);
    }

    #[test]
    fn overlapping_windows_keep_the_largest_and_report_the_nearest_change() {
        let s = schedule(&[
            window("0 9 * * *", "8h", 3, None),
            window("0 0 14 * * *", "30m", 9, None),
        ]);
        let workshop = s.at(at("2026-11-26T14:10:00Z"), Duration::ZERO);
        assert_eq!((workshop.idle, workshop.window), (9, Some(1)));
        assert_eq!(workshop.next_change, Some(Duration::from_secs(20 * 60)));
        let after = s.at(at("2026-11-26T15:00:00Z"), Duration::ZERO);
        assert_eq!((after.idle, after.window), (3, Some(0)));
    }

    #[test]
    fn windows_that_cannot_be_read_are_left_out_and_described() {
        let (schedule, refused) = Schedule::parse(&[
            window("0 9 * * 1-5", "8h", 5, None),
            window("0 9 * *", "8h", 5, None),
            window("61 9 * * *", "8h", 5, None),
            window("0 9 * * *", "8h", 5, Some("Mars/Olympus")),
            window("0 9 * * *", "forever", 5, None),
            window("0 9 30 Feb *", "1h", 2, None),
            window("0 9 * * *", "1h", 2, None),
        ]);
        assert_eq!(schedule.windows.len(), 1, "only the last one parses");
        assert_eq!(refused.len(), 6);
        assert!(refused[5].contains("never comes"), "{}", refused[5]);
        assert!(refused[0].contains("name them"), "{}", refused[0]);
        assert!(refused[1].contains("4 fields"), "{}", refused[1]);
        assert!(
            refused[2].contains("not a cron expression"),
            "{}",
            refused[2]
        );
        assert!(refused[3].contains("Mars/Olympus"), "{}", refused[3]);
        assert!(
            refused[4].contains("hotPool.schedule[].duration"),
            "{}",
            refused[4]
        );
        assert!(refused.iter().all(|r| r.starts_with("hotPool.schedule[")));
    }

    /// A cron field as a user might write it: mostly ordinary for its place, sometimes odd.
    fn cron_field(
        ordinary: Vec<&'static str>,
    ) -> impl proptest::strategy::Strategy<Value = &'static str> {
        proptest::prop_oneof![
            6 => proptest::sample::select(ordinary),
            1 => proptest::sample::select(vec![
                "*/0", "60", "5-1", "L", "?", "0-59/7", "1#2", "99999999999", "-1", "31",
            ]),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            cases: 1000,
            failure_persistence: None,
            ..proptest::prelude::ProptestConfig::default()
        })]

        #[test]
        fn any_window_a_user_writes_is_refused_or_answers_without_panicking(
            minute in cron_field(vec!["*", "0", "30", "*/15", "0,30", "59"]),
            hour in cron_field(vec!["*", "9", "0-23/2", "1-5", "23"]),
            day in cron_field(vec!["*", "1", "29", "31", "1-5"]),
            month in cron_field(vec!["*", "1", "Feb", "2", "12", "1-6"]),
            weekday in cron_field(vec!["*", "Mon-Fri", "Sun", "Mon,Wed", "Sat,Sun"]),
            raw in proptest::option::weighted(0.05, ".{0,24}"),
            zone in proptest::sample::select(vec![None, Some("UTC"), Some("Europe/Berlin"), Some("Australia/Lord_Howe"), Some("America/St_Johns"), Some("Mars/Olympus"), Some("")]),
            duration in proptest::sample::select(vec!["1m", "8h", "168h", "1m", "8h", "0s", "forever"]),
            idle in proptest::prelude::any::<i32>(),
            // 2020 to 2080: the cron library looks for openings up to the year 2100.
            now_secs in 1_577_836_800i64..3_471_292_800,
            lead_secs in 0u64..86_400,
        ) {
            let start = raw.unwrap_or_else(|| format!("{minute} {hour} {day} {month} {weekday}"));
            let (schedule, refused) = Schedule::parse(&[window(&start, duration, idle, zone)]);
            proptest::prop_assert_eq!(schedule.windows.len() + refused.len(), 1);
            let now = Timestamp::from_second(now_secs).unwrap_or(Timestamp::UNIX_EPOCH);
            let wanted = schedule.at(now, Duration::from_secs(lead_secs));
            proptest::prop_assert!(wanted.next_change.is_none_or(|d| d >= SOONEST_CHANGE));
            proptest::prop_assert!(wanted.idle == 0 || wanted.idle == usize::try_from(idle).unwrap_or(0));
            proptest::prop_assert!(wanted.window.is_none() || !schedule.is_empty());
            // Five fields name no year: a window that parsed opens again, so a change is ahead.
            proptest::prop_assert!(schedule.is_empty() || wanted.next_change.is_some(), "{start}");
        }
    }

    #[test]
    fn an_empty_schedule_wants_nothing_and_never_changes() {
        let s = Schedule::default();
        assert!(s.is_empty());
        assert_eq!(
            s.at(at("2026-11-26T12:00:00Z"), Duration::from_secs(30)),
            Scheduled::default()
        );
    }
}
