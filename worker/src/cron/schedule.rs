//! Schedule math as pure functions of "now": next run of `at` / `every` / `cron` schedules, standard 5-field
//! cron expressions translated for the `cron` crate (with Vixie cron's day-of-month OR day-of-week rule, as
//! Clawdbot's croner applies it), and the agent heartbeat interval.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;

use super::error::{Error, Result};
use super::job::Schedule;

/// The next time (ms since the epoch) `schedule` fires strictly after `now_ms`, or `None` when it never will
/// again (an `at` in the past). `every` without an anchor uses `default_anchor_ms` (the job's creation time).
pub fn next_run_at_ms(
    schedule: &Schedule,
    now_ms: i64,
    default_anchor_ms: i64,
) -> Result<Option<i64>> {
    match schedule {
        Schedule::At { at_ms } => Ok((*at_ms > now_ms).then_some(*at_ms)),
        Schedule::Every {
            every_ms,
            anchor_ms,
        } => {
            let every = (*every_ms).max(1);
            let anchor = anchor_ms.unwrap_or(default_anchor_ms).max(0);
            if now_ms < anchor {
                return Ok(Some(anchor));
            }
            let steps = (now_ms - anchor) / every + 1;
            Ok(Some(anchor + steps * every))
        }
        Schedule::Cron { expr, tz } => {
            let parsed = parse_cron(expr)?;
            let zone = parse_tz(tz.as_deref())?;
            let Some(now) = Utc.timestamp_millis_opt(now_ms).single() else {
                return Err(Error::Invalid {
                    what: "now",
                    reason: format!("{now_ms} out of range"),
                });
            };
            Ok(parsed
                .next_after(&now.with_timezone(&zone))
                .map(|t| t.timestamp_millis()))
        }
    }
}

/// Checks a schedule the way `next_run_at_ms` will use it.
pub(crate) fn validate_schedule(schedule: &Schedule) -> Result<()> {
    match schedule {
        Schedule::At { at_ms } if *at_ms <= 0 => Err(Error::Invalid {
            what: "schedule.atMs",
            reason: "must be > 0".into(),
        }),
        Schedule::Every { every_ms, .. } if *every_ms < 1 => Err(Error::Invalid {
            what: "schedule.everyMs",
            reason: "must be ≥ 1".into(),
        }),
        Schedule::Cron { expr, tz } => {
            parse_cron(expr)?;
            parse_tz(tz.as_deref()).map(|_| ())
        }
        _ => Ok(()),
    }
}

fn parse_tz(tz: Option<&str>) -> Result<Tz> {
    match tz.map(str::trim).filter(|t| !t.is_empty()) {
        None => Ok(Tz::UTC),
        Some(name) => Tz::from_str(name).map_err(|e| Error::Schedule {
            expr: name.to_owned(),
            reason: format!("unknown time zone: {e}"),
        }),
    }
}

/// A parsed cron expression. Standard cron (Vixie, and croner in its default legacy mode, which Clawdbot uses)
/// fires when the day of month OR the day of week matches if both fields are restricted; the `cron` crate ANDs
/// them. Such an expression is kept as two schedules (days of month with every weekday, weekdays with every day
/// of month) and fires at the earlier of the two.
#[derive(Debug, Clone)]
pub struct CronExpr {
    alternatives: Vec<cron::Schedule>,
}

impl CronExpr {
    /// The first firing strictly after `t`.
    pub fn next_after(&self, t: &DateTime<Tz>) -> Option<DateTime<Tz>> {
        self.alternatives
            .iter()
            .filter_map(|s| s.after(t).next())
            .min()
    }
}

/// Parses a standard cron expression: 5 fields (`min hour dom mon dow`, Sunday = 0 or 7) get a leading
/// seconds field of `0`; 6 fields are taken as seconds-first. Day-of-week numbers are translated to the
/// `cron` crate's numbering (Sunday = 1); names (`MON`) and `@daily`-style macros pass through.
pub fn parse_cron(expr: &str) -> Result<CronExpr> {
    let err = |reason: String| Error::Schedule {
        expr: expr.to_owned(),
        reason,
    };
    let compile = |text: &str| {
        cron::Schedule::from_str(text).map_err(|e| Error::Schedule {
            expr: expr.to_owned(),
            reason: e.to_string(),
        })
    };
    let trimmed = expr.trim();
    if trimmed.starts_with('@') {
        return Ok(CronExpr {
            alternatives: vec![compile(trimmed)?],
        });
    }
    let mut fields: Vec<String> = trimmed.split_whitespace().map(str::to_owned).collect();
    match fields.len() {
        5 => fields.insert(0, "0".to_owned()),
        6 => {}
        n => {
            return Err(err(format!(
                "expected 5 fields (or 6 with seconds), got {n}"
            )));
        }
    }
    fields[5] = translate_day_of_week(&fields[5]).map_err(err)?;
    let unrestricted = |f: &str| f == "*" || f == "?";
    if unrestricted(&fields[3]) || unrestricted(&fields[5]) {
        return Ok(CronExpr {
            alternatives: vec![compile(&fields.join(" "))?],
        });
    }
    let mut by_month_day = fields.clone();
    by_month_day[5] = "*".to_owned();
    let mut by_week_day = fields;
    by_week_day[3] = "*".to_owned();
    Ok(CronExpr {
        alternatives: vec![
            compile(&by_month_day.join(" "))?,
            compile(&by_week_day.join(" "))?,
        ],
    })
}

fn translate_day_of_week(field: &str) -> std::result::Result<String, String> {
    let map_day = |s: &str| -> std::result::Result<String, String> {
        match s.parse::<u32>() {
            Ok(n) if n <= 7 => Ok(((n % 7) + 1).to_string()),
            Ok(n) => Err(format!("day of week {n} is not 0-7")),
            Err(_) => Ok(s.to_owned()),
        }
    };
    let mut items = Vec::new();
    for item in field.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((r, s)) => (r, Some(s)),
            None => (item, None),
        };
        let suffix = step.map(|s| format!("/{s}")).unwrap_or_default();
        if range == "*" || range == "?" {
            items.push(format!("{range}{suffix}"));
            continue;
        }
        match range.split_once('-') {
            None => items.push(format!("{}{suffix}", map_day(range)?)),
            Some((a, b)) => {
                let (ma, mb) = (map_day(a)?, map_day(b)?);
                match (ma.parse::<u32>(), mb.parse::<u32>()) {
                    // e.g. 5-7 (Fri-Sun) becomes 6-1: split into 6-7,1.
                    (Ok(x), Ok(y)) if x > y => {
                        if step.is_some() {
                            return Err(format!("stepped range {range} wraps past Sunday"));
                        }
                        items.push(format!("{x}-7"));
                        items.push(if y == 1 {
                            "1".to_owned()
                        } else {
                            format!("1-{y}")
                        });
                    }
                    _ => items.push(format!("{ma}-{mb}{suffix}")),
                }
            }
        }
    }
    Ok(items.join(","))
}

/// Default heartbeat interval (`agents.defaults.heartbeat.every`).
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(30 * 60);

/// Parses a heartbeat interval like `30m`, `1h`, `45s`, `1500ms`, `2d` or a bare number of minutes;
/// `None` in → the 30-minute default; `0` (any unit) → `None` out: heartbeat off.
pub fn heartbeat_interval(every: Option<&str>) -> Result<Option<Duration>> {
    let Some(raw) = every.map(str::trim) else {
        return Ok(Some(DEFAULT_HEARTBEAT));
    };
    let bad = || Error::Invalid {
        what: "heartbeat.every",
        reason: format!("{raw:?} is not a duration like 30m"),
    };
    let split = raw
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(raw.len());
    let (number, unit) = raw.split_at(split);
    let value: f64 = number.parse().map_err(|_| bad())?;
    let unit_ms = match unit.trim() {
        "ms" => 1.0,
        "s" => 1_000.0,
        "" | "m" => 60_000.0,
        "h" => 3_600_000.0,
        "d" => 86_400_000.0,
        _ => return Err(bad()),
    };
    let ms = value * unit_ms;
    if !ms.is_finite() || ms < 0.0 {
        return Err(bad());
    }
    if ms < 1.0 {
        return Ok(None);
    }
    Ok(Some(Duration::from_secs_f64(ms.round() / 1000.0)))
}

/// When the next heartbeat is due: `interval` after the last one, or right away if none ran yet or it is overdue.
pub fn next_heartbeat_at_ms(
    last_heartbeat_ms: Option<i64>,
    now_ms: i64,
    interval: Duration,
) -> i64 {
    let every = i64::try_from(interval.as_millis()).unwrap_or(i64::MAX);
    match last_heartbeat_ms {
        Some(last) => last.saturating_add(every).max(now_ms),
        None => now_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::DateTime;

    fn ms(s: &str) -> i64 {
        DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis()
    }
    fn cron(expr: &str, tz: Option<&str>) -> Schedule {
        Schedule::Cron {
            expr: expr.into(),
            tz: tz.map(Into::into),
        }
    }

    #[test]
    fn at_fires_once_in_the_future() {
        let s = Schedule::At { at_ms: 1_000 };
        assert_eq!(next_run_at_ms(&s, 999, 0).unwrap(), Some(1_000));
        assert_eq!(next_run_at_ms(&s, 1_000, 0).unwrap(), None);
    }

    #[test]
    fn every_stays_on_its_anchor_grid() {
        let s = Schedule::Every {
            every_ms: 1_000,
            anchor_ms: Some(500),
        };
        assert_eq!(next_run_at_ms(&s, 0, 0).unwrap(), Some(500));
        assert_eq!(next_run_at_ms(&s, 500, 0).unwrap(), Some(1_500));
        assert_eq!(next_run_at_ms(&s, 10_499, 0).unwrap(), Some(10_500));
        // No anchor: the creation time is the grid origin.
        let s = Schedule::Every {
            every_ms: 60_000,
            anchor_ms: None,
        };
        assert_eq!(next_run_at_ms(&s, 100_000, 30_000).unwrap(), Some(150_000));
    }

    #[test]
    fn five_field_cron_uses_standard_weekdays_and_time_zones() {
        // Mon-Fri 09:00 in Berlin (UTC+1 in January). 2026-01-02 is a Friday.
        let s = cron("0 9 * * 1-5", Some("Europe/Berlin"));
        assert_eq!(
            next_run_at_ms(&s, ms("2026-01-02T07:00:00Z"), 0).unwrap(),
            Some(ms("2026-01-02T08:00:00Z"))
        );
        assert_eq!(
            next_run_at_ms(&s, ms("2026-01-02T08:00:00Z"), 0).unwrap(),
            Some(ms("2026-01-05T08:00:00Z"))
        );
        // Sunday as 0 and as 7; summer time in New York (UTC-4).
        for expr in ["30 18 * * 0", "30 18 * * 7", "30 18 * * SUN"] {
            let s = cron(expr, Some("America/New_York"));
            assert_eq!(
                next_run_at_ms(&s, ms("2026-07-01T00:00:00Z"), 0).unwrap(),
                Some(ms("2026-07-05T22:30:00Z")),
                "{expr}"
            );
        }
        // A wrapping range Fri-Sun, and UTC by default.
        let s = cron("0 12 * * 5-7", None);
        assert_eq!(
            next_run_at_ms(&s, ms("2026-01-05T00:00:00Z"), 0).unwrap(),
            Some(ms("2026-01-09T12:00:00Z"))
        );
        assert_eq!(
            next_run_at_ms(&s, ms("2026-01-10T13:00:00Z"), 0).unwrap(),
            Some(ms("2026-01-11T12:00:00Z"))
        );
        // Six fields: seconds first.
        let s = cron("*/10 * * * * *", None);
        assert_eq!(
            next_run_at_ms(&s, ms("2026-01-01T00:00:01Z"), 0).unwrap(),
            Some(ms("2026-01-01T00:00:10Z"))
        );
    }

    #[test]
    fn day_of_month_and_day_of_week_both_restricted_fire_on_either() {
        // The 1st of the month OR any Monday, like Vixie cron and croner. 2026-06-01 is a Monday,
        // 2026-06-08 the next Monday, 2026-07-01 a Wednesday.
        let s = cron("0 9 1 * 1", None);
        let runs: Vec<i64> = std::iter::successors(
            next_run_at_ms(&s, ms("2026-05-30T00:00:00Z"), 0).unwrap(),
            |&t| next_run_at_ms(&s, t, 0).unwrap(),
        )
        .take(6)
        .collect();
        let want = [
            "2026-06-01T09:00:00Z",
            "2026-06-08T09:00:00Z",
            "2026-06-15T09:00:00Z",
            "2026-06-22T09:00:00Z",
            "2026-06-29T09:00:00Z",
            "2026-07-01T09:00:00Z",
        ];
        assert_eq!(runs, want.map(ms).to_vec());
        // Only one field restricted: no OR, the other is "every".
        let s = cron("0 9 13 * *", None);
        assert_eq!(
            next_run_at_ms(&s, ms("2026-06-01T00:00:00Z"), 0).unwrap(),
            Some(ms("2026-06-13T09:00:00Z"))
        );
        // A bad day-of-month is still refused when the day of week is restricted too.
        assert!(validate_schedule(&cron("0 9 32 * 1", None)).is_err());
    }

    #[test]
    fn bad_expressions_and_zones_are_rejected_with_the_input() {
        for (expr, tz) in [
            ("0 9 * *", None),
            ("0 9 * * 8", None),
            ("61 9 * * *", None),
            ("0 9 * * *", Some("Mars/Base")),
        ] {
            let err = validate_schedule(&cron(expr, tz)).unwrap_err();
            assert!(matches!(err, Error::Schedule { .. }), "{expr}: {err}");
        }
    }

    #[test]
    fn heartbeat_interval_parses_units_and_off() {
        assert_eq!(
            heartbeat_interval(None).unwrap(),
            Some(Duration::from_secs(1800))
        );
        assert_eq!(
            heartbeat_interval(Some("45s")).unwrap(),
            Some(Duration::from_secs(45))
        );
        assert_eq!(
            heartbeat_interval(Some("2h")).unwrap(),
            Some(Duration::from_secs(7200))
        );
        assert_eq!(
            heartbeat_interval(Some("15")).unwrap(),
            Some(Duration::from_secs(900))
        );
        assert_eq!(heartbeat_interval(Some("0m")).unwrap(), None);
        assert!(heartbeat_interval(Some("soon")).is_err());
        let every = Duration::from_secs(60);
        assert_eq!(next_heartbeat_at_ms(None, 5, every), 5);
        assert_eq!(next_heartbeat_at_ms(Some(1_000), 2_000, every), 61_000);
        assert_eq!(next_heartbeat_at_ms(Some(1_000), 100_000, every), 100_000);
    }
}
