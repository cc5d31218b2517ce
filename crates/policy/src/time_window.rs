//! Weekday and time-of-day windows in an IANA time zone (SPEC F14), written
//! `MTWRF/09:00-17:00/Europe/Berlin`: days (M T W R F S U), a half-open
//! local time range (`24:00` ends at midnight), and the zone.

use jiff::Timestamp;
use jiff::civil::Date;
use jiff::tz::TimeZone;

const DAY_LETTERS: [char; 7] = ['M', 'T', 'W', 'R', 'F', 'S', 'U'];
const SECONDS_PER_DAY: u32 = 86_400;
/// How far ahead a change of a window set is searched: a week and a day covers
/// every weekly pattern, even across a DST shift.
const HORIZON_DAYS: i32 = 9;

/// One parsed window.
#[derive(Clone, Debug, PartialEq)]
pub struct TimeWindow {
    /// Monday first.
    days: [bool; 7],
    /// Seconds after local midnight, start inclusive, end exclusive.
    start: u32,
    end: u32,
    zone: TimeZone,
    text: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimeWindowError {
    #[error("{0:?} is not DAYS/HH:MM-HH:MM/ZONE, e.g. MTWRF/09:00-17:00/Europe/Berlin")]
    Shape(String),
    #[error("{0:?}: days are letters of MTWRFSU (R is Thursday, U is Sunday), each once")]
    Days(String),
    #[error("{0:?}: times are HH:MM or HH:MM:SS between 00:00 and 24:00")]
    Time(String),
    #[error("{0:?}: the window must end after it starts")]
    Empty(String),
    #[error("{0:?}: unknown time zone; use an IANA name such as Europe/Berlin or UTC")]
    Zone(String),
}

impl TimeWindow {
    pub fn parse(text: &str) -> Result<Self, TimeWindowError> {
        let shape = || TimeWindowError::Shape(text.to_string());
        let mut parts = text.trim().splitn(3, '/');
        let (days_text, times, zone_name) = match (parts.next(), parts.next(), parts.next()) {
            (Some(d), Some(t), Some(z)) if !d.is_empty() && !z.is_empty() => (d, t, z),
            _ => return Err(shape()),
        };
        let mut days = [false; 7];
        for letter in days_text.chars() {
            let index = DAY_LETTERS
                .iter()
                .position(|&d| d == letter.to_ascii_uppercase())
                .ok_or_else(|| TimeWindowError::Days(text.to_string()))?;
            if std::mem::replace(&mut days[index], true) {
                return Err(TimeWindowError::Days(text.to_string()));
            }
        }
        let (start, end) = times.split_once('-').ok_or_else(shape)?;
        let bad_time = || TimeWindowError::Time(text.to_string());
        let start = parse_time_of_day(start).ok_or_else(bad_time)?;
        let end = parse_time_of_day(end).ok_or_else(bad_time)?;
        if start >= SECONDS_PER_DAY {
            return Err(bad_time());
        }
        if end <= start {
            return Err(TimeWindowError::Empty(text.to_string()));
        }
        let zone =
            TimeZone::get(zone_name).map_err(|_| TimeWindowError::Zone(zone_name.to_string()))?;
        Ok(TimeWindow {
            days,
            start,
            end,
            zone,
            text: text.trim().to_string(),
        })
    }

    /// Whether `at` falls inside the window.
    pub fn contains(&self, at: Timestamp) -> bool {
        let local = at.to_zoned_datetime(self.zone.clone());
        let day = local.weekday().to_monday_zero_offset() as usize;
        let time = local.time();
        let second = time.hour() as u32 * 3600 + time.minute() as u32 * 60 + time.second() as u32;
        self.days[day] && (self.start..self.end).contains(&second)
    }

    /// Instants after `after` (and within the horizon) where this window opens
    /// or closes.
    fn boundaries_after(&self, after: Timestamp, out: &mut Vec<Timestamp>) {
        let today = after.to_zoned_datetime(self.zone.clone()).date();
        for offset in -1..=HORIZON_DAYS {
            let Ok(day) = today.checked_add(jiff::Span::new().days(offset)) else {
                continue;
            };
            if !self.days[day.weekday().to_monday_zero_offset() as usize] {
                continue;
            }
            for second in [self.start, self.end] {
                if let Some(instant) = self.local_instant(day, second)
                    && instant > after
                {
                    out.push(instant);
                }
            }
        }
    }

    fn local_instant(&self, day: Date, second: u32) -> Option<Timestamp> {
        let (day, second) = if second >= SECONDS_PER_DAY {
            (day.tomorrow().ok()?, second - SECONDS_PER_DAY)
        } else {
            (day, second)
        };
        let datetime = day.at(
            (second / 3600) as i8,
            (second / 60 % 60) as i8,
            (second % 60) as i8,
            0,
        );
        // In a fold the earlier instant is taken. In a gap the local clock
        // jumps past the time: the boundary is crossed at the jump itself
        // (a window "Sunday 02:01-03:02" opens at 03:00 on the spring-forward
        // Sunday, not at 02:01 read as 03:01).
        let ambiguous = self.zone.to_ambiguous_zoned_datetime(datetime);
        let gap = matches!(ambiguous.offset(), jiff::tz::AmbiguousOffset::Gap { .. });
        let instant = ambiguous.compatible().ok()?.timestamp();
        if gap {
            return Some(
                self.zone
                    .preceding(instant)
                    .next()
                    .map_or(instant, |transition| transition.timestamp()),
            );
        }
        Some(instant)
    }
}

impl std::fmt::Display for TimeWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// Whether any window of the set contains `at`.
pub fn any_contains(windows: &[TimeWindow], at: Timestamp) -> bool {
    windows.iter().any(|w| w.contains(at))
}

/// The first instant after `now` at which [`any_contains`] changes its answer,
/// or `None` if it never does (within a week and a day, i.e. ever).
pub fn next_change(windows: &[TimeWindow], now: Timestamp) -> Option<Timestamp> {
    let current = any_contains(windows, now);
    let mut candidates = Vec::new();
    for window in windows {
        window.boundaries_after(now, &mut candidates);
    }
    candidates.sort_unstable();
    candidates.dedup();
    candidates
        .into_iter()
        .find(|&instant| any_contains(windows, instant) != current)
}

fn parse_time_of_day(text: &str) -> Option<u32> {
    let mut fields = text.trim().split(':');
    let hour: u32 = two_digits(fields.next()?)?;
    let minute: u32 = two_digits(fields.next()?)?;
    let second: u32 = match fields.next() {
        Some(s) => two_digits(s)?,
        None => 0,
    };
    if fields.next().is_some() || minute > 59 || second > 59 {
        return None;
    }
    let total = hour * 3600 + minute * 60 + second;
    (total <= SECONDS_PER_DAY).then_some(total)
}

fn two_digits(text: &str) -> Option<u32> {
    (text.len() == 2 && text.bytes().all(|b| b.is_ascii_digit()))
        .then(|| text.parse().ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    #[test]
    fn office_hours_in_berlin() {
        let window = TimeWindow::parse("MTWRF/09:00-17:00/Europe/Berlin").unwrap();
        // 2026-11-25 is a Wednesday; Berlin is UTC+1 in November.
        assert!(window.contains(at("2026-11-25T08:00:00Z")));
        assert!(!window.contains(at("2026-11-25T07:59:59Z")));
        assert!(!window.contains(at("2026-11-25T16:00:00Z")));
        // Saturday.
        assert!(!window.contains(at("2026-11-28T10:00:00Z")));
        let windows = [window];
        assert_eq!(
            next_change(&windows, at("2026-11-25T10:00:00Z")),
            Some(at("2026-11-25T16:00:00Z"))
        );
        // From Friday evening the next change is Monday's opening.
        assert_eq!(
            next_change(&windows, at("2026-11-27T18:00:00Z")),
            Some(at("2026-11-30T08:00:00Z"))
        );
    }

    #[test]
    fn adjacent_windows_merge_and_full_week_never_changes() {
        let windows = [
            TimeWindow::parse("M/00:00-24:00/UTC").unwrap(),
            TimeWindow::parse("T/00:00-12:00/UTC").unwrap(),
        ];
        // Monday 2026-11-30 noon: open until Tuesday noon, across midnight.
        assert_eq!(
            next_change(&windows, at("2026-11-30T12:00:00Z")),
            Some(at("2026-12-01T12:00:00Z"))
        );
        let always = [TimeWindow::parse("MTWRFSU/00:00-24:00/UTC").unwrap()];
        assert!(any_contains(&always, at("2026-11-29T23:59:59Z")));
        assert_eq!(next_change(&always, at("2026-11-29T23:59:59Z")), None);
    }

    #[test]
    fn dst_shift_moves_the_utc_end() {
        // Europe/Berlin leaves summer time on 2026-10-25.
        let windows = [TimeWindow::parse("SU/09:00-17:00/Europe/Berlin").unwrap()];
        assert_eq!(
            next_change(&windows, at("2026-10-24T10:00:00Z")),
            Some(at("2026-10-24T15:00:00Z"))
        );
        assert_eq!(
            next_change(&windows, at("2026-10-25T10:00:00Z")),
            Some(at("2026-10-25T16:00:00Z"))
        );
    }

    #[test]
    fn bad_windows_are_refused_with_the_reason() {
        for (text, expected) in [
            ("MTWRF/09:00-17:00", "DAYS/HH:MM"),
            ("MX/09:00-17:00/UTC", "days are letters"),
            ("MM/09:00-17:00/UTC", "days are letters"),
            ("M/9:00-17:00/UTC", "times are"),
            ("M/09:00-24:01/UTC", "times are"),
            ("M/17:00-09:00/UTC", "must end after"),
            ("M/09:00-17:00/Mars/Olympus", "unknown time zone"),
        ] {
            let error = TimeWindow::parse(text).unwrap_err().to_string();
            assert!(error.contains(expected), "{text}: {error}");
        }
        assert!(TimeWindow::parse("u/00:00:00-23:59:59/America/New_York").is_ok());
    }
}
