//! When periodic savepoints are due: a fixed interval or a cron expression (UTC).

use std::str::FromStr;
use std::time::Duration;

/// A parsed cron expression: `sec min hour day-of-month month day-of-week [year]`.
#[derive(Clone, Debug)]
pub struct CronSchedule(cron::Schedule);

impl CronSchedule {
    /// Parses `expression`; the error says what is wrong with it.
    pub fn parse(expression: &str) -> Result<CronSchedule, String> {
        cron::Schedule::from_str(expression.trim())
            .map(CronSchedule)
            .map_err(|e| {
                format!(
                    "{expression:?} is not a cron expression (sec min hour day month weekday [year]): {e}"
                )
            })
    }

    /// The first firing strictly after `now_ms` (Unix milliseconds), if any.
    pub fn next_after_ms(&self, now_ms: u64) -> Option<u64> {
        let now = chrono::DateTime::from_timestamp_millis(i64::try_from(now_ms).ok()?)?;
        let next = self.0.after(&now).next()?;
        u64::try_from(next.timestamp_millis()).ok()
    }
}

/// A job's periodic savepoint schedule.
#[derive(Clone, Debug)]
pub enum SavepointSchedule {
    Interval(Duration),
    Cron(Box<CronSchedule>),
}

impl SavepointSchedule {
    /// How long from `now_ms` (Unix milliseconds) until the next savepoint is due;
    /// None when the schedule never fires again.
    pub fn delay_from(&self, now_ms: u64) -> Option<Duration> {
        match self {
            SavepointSchedule::Interval(interval) => Some(*interval),
            SavepointSchedule::Cron(cron) => cron
                .next_after_ms(now_ms)
                .map(|next| Duration::from_millis(next.saturating_sub(now_ms))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cron_fires_at_the_next_matching_second() {
        let every_ten_seconds = CronSchedule::parse("*/10 * * * * *").unwrap();
        // 2026-01-01T00:00:03Z
        let now = 1_767_225_603_000;
        assert_eq!(every_ten_seconds.next_after_ms(now), Some(now + 7_000));
        let schedule = SavepointSchedule::Cron(Box::new(every_ten_seconds));
        assert_eq!(schedule.delay_from(now), Some(Duration::from_secs(7)));
    }

    #[test]
    fn hourly_cron_waits_for_the_full_hour() {
        let hourly = CronSchedule::parse("0 0 * * * *").unwrap();
        let now = 1_767_225_603_000; // 00:00:03
        assert_eq!(hourly.next_after_ms(now), Some(1_767_229_200_000)); // 01:00:00
    }

    #[test]
    fn bad_expressions_are_refused_with_the_expression_named() {
        let error = CronSchedule::parse("every hour").unwrap_err();
        assert!(error.contains("every hour"), "{error}");
    }
}
