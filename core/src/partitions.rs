//! The time partitions of the `logs` table, as pure arithmetic: which range holds a time,
//! what a partition is called, which partitions must exist ahead of ingest, and which a
//! retention has expired. [`crate::storage`] does the same against PostgreSQL.
//!
//! Partitions cover `[from, to)` ranges of `created_at`, the time the api received a
//! log. They are cut at multiples of the interval since the Unix epoch (UTC midnights
//! for the default of one day). After the interval changes, a new partition is clipped so
//! that it never overlaps one made before.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use time::OffsetDateTime;
use time::macros::format_description;

/// Name of the partition that holds the rows of a table from before partitioning.
pub const LEGACY_PARTITION: &str = "logs_legacy";

const HOUR_SECS: i64 = 3600;

/// How much time one partition covers: whole hours, from one hour to 31 days.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionInterval {
    secs: i64,
}

impl PartitionInterval {
    /// One day, the default.
    pub const DAY: Self = Self {
        secs: 24 * HOUR_SECS,
    };

    /// The interval's length.
    pub fn duration(self) -> Duration {
        Duration::from_secs(self.secs.unsigned_abs())
    }

    /// The range of the interval's grid that holds `at`.
    pub fn bucket(self, at: OffsetDateTime) -> TimeRange {
        let secs = at.unix_timestamp();
        let start = secs.div_euclid(self.secs) * self.secs;
        TimeRange {
            from: from_unix(start),
            to: from_unix(start + self.secs),
        }
    }
}

impl FromStr for PartitionInterval {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let duration = parse_duration(text)?;
        let secs = i64::try_from(duration.as_secs()).unwrap_or(i64::MAX);
        let whole_hours = duration.subsec_nanos() == 0 && secs % HOUR_SECS == 0;
        if !whole_hours || !(HOUR_SECS..=31 * 24 * HOUR_SECS).contains(&secs) {
            return Err(format!(
                "a partition interval is whole hours from 1h to 31d, got {text:?}"
            ));
        }
        Ok(Self { secs })
    }
}

impl fmt::Display for PartitionInterval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.secs % (24 * HOUR_SECS) == 0 {
            write!(f, "{}d", self.secs / (24 * HOUR_SECS))
        } else {
            write!(f, "{}h", self.secs / HOUR_SECS)
        }
    }
}

/// How long logs are kept: at least one hour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention(Duration);

impl Retention {
    /// The retention's length.
    pub fn duration(self) -> Duration {
        self.0
    }

    /// Logs received before this time, at `now`, are past the retention.
    pub fn cutoff(self, now: OffsetDateTime) -> OffsetDateTime {
        now - self.0
    }
}

impl FromStr for Retention {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let duration = parse_duration(text)?;
        if duration < Duration::from_secs(HOUR_SECS.unsigned_abs()) {
            return Err(format!("a retention is at least 1h, got {text:?}"));
        }
        Ok(Self(duration))
    }
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|error| format!("{text:?} is not a duration such as 30d or 12h: {error}"))
}

fn from_unix(secs: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(secs).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// A half-open range of time, `[from, to)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeRange {
    /// The first instant in the range.
    pub from: OffsetDateTime,
    /// The first instant after it.
    pub to: OffsetDateTime,
}

impl TimeRange {
    /// Whether `at` is in the range.
    pub fn contains(&self, at: OffsetDateTime) -> bool {
        self.from <= at && at < self.to
    }
}

/// A partition of `logs`, as `log_partitions` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// The table's name.
    pub name: String,
    /// Its first instant; None for the legacy partition, which starts at MINVALUE.
    pub from: Option<OffsetDateTime>,
    /// The first instant after it.
    pub to: OffsetDateTime,
}

impl Partition {
    /// Whether `at` falls in the partition.
    pub fn contains(&self, at: OffsetDateTime) -> bool {
        self.from.is_none_or(|from| from <= at) && at < self.to
    }
}

/// The name of the partition starting at `from`: `logs_p<YYYYMMDD>_<HH>` in UTC. Unique,
/// since partitions start on whole hours and last one hour at least.
pub fn partition_name(from: OffsetDateTime) -> String {
    let format = format_description!("[year][month][day]_[hour]");
    let stamp = from
        .to_offset(time::UtcOffset::UTC)
        .format(&format)
        .unwrap_or_default();
    format!("logs_p{stamp}")
}

/// The range of a new partition to hold `at`: its bucket of `interval`, clipped so that it
/// overlaps none of `existing`. None when one of `existing` holds `at` already.
pub fn range_for(
    at: OffsetDateTime,
    interval: PartitionInterval,
    existing: &[Partition],
) -> Option<TimeRange> {
    if existing.iter().any(|partition| partition.contains(at)) {
        return None;
    }
    let mut range = interval.bucket(at);
    for partition in existing {
        if partition.to <= at {
            range.from = range.from.max(partition.to);
        } else if let Some(from) = partition.from.filter(|from| *from > at) {
            range.to = range.to.min(from);
        }
    }
    Some(range)
}

/// The times whose partitions must exist at `now`: the previous interval (late logs), the
/// current one, and `ahead` more, one time per interval.
pub fn wanted(now: OffsetDateTime, interval: PartitionInterval, ahead: u32) -> Vec<OffsetDateTime> {
    let start = interval.bucket(now).from - interval.duration();
    (0..=i64::from(ahead) + 1)
        .map(|step| start + interval.duration() * step as u32)
        .collect()
}

/// The partitions `retention` has expired at `now`: those whose every log was received
/// more than `retention` plus `grace` ago. The grace keeps a worker whose clock runs a
/// little behind from meeting a partition that is gone.
pub fn expired(
    partitions: &[Partition],
    retention: Retention,
    grace: Duration,
    now: OffsetDateTime,
) -> Vec<&Partition> {
    let cutoff = retention.cutoff(now) - grace;
    partitions
        .iter()
        .filter(|partition| partition.to <= cutoff)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn partition(name: &str, from: Option<OffsetDateTime>, to: OffsetDateTime) -> Partition {
        Partition {
            name: name.into(),
            from,
            to,
        }
    }

    #[test]
    fn intervals_are_whole_hours_up_to_a_month() {
        for (text, shown) in [("1d", "1d"), ("6h", "6h"), ("7d", "7d"), ("48h", "2d")] {
            assert_eq!(
                text.parse::<PartitionInterval>().unwrap().to_string(),
                shown
            );
        }
        for bad in ["30m", "90m", "0h", "32d", "soon", ""] {
            assert!(bad.parse::<PartitionInterval>().is_err(), "{bad}");
        }
        assert!("30d".parse::<Retention>().is_ok());
        assert!("59m".parse::<Retention>().is_err());
    }

    #[test]
    fn buckets_start_at_utc_midnight_for_days() {
        let day = PartitionInterval::DAY;
        let range = day.bucket(datetime!(2026-12-01 23:59:59.999999 UTC));
        assert_eq!(range.from, datetime!(2026-12-01 0:00 UTC));
        assert_eq!(range.to, datetime!(2026-12-02 0:00 UTC));
        // A time given in another offset lands in its UTC day.
        let range = day.bucket(datetime!(2026-12-02 1:00 +02:00));
        assert_eq!(range.from, datetime!(2026-12-01 0:00 UTC));
        let before_1970 = day.bucket(datetime!(1969-12-31 12:00 UTC));
        assert_eq!(before_1970.from, datetime!(1969-12-31 0:00 UTC));
        assert_eq!(
            partition_name(datetime!(2026-12-01 0:00 UTC)),
            "logs_p20261201_00"
        );
    }

    #[test]
    fn every_hour_of_the_day_has_its_partition_and_the_next_ahead() {
        for interval in ["1h", "6h", "1d"] {
            let interval: PartitionInterval = interval.parse().unwrap();
            for hour in 0..24 {
                for minute in [0, 59] {
                    let now = datetime!(2026-12-31 0:00 UTC)
                        + Duration::from_secs(hour * 3600 + minute * 60);
                    let times = wanted(now, interval, 2);
                    let ranges: Vec<TimeRange> =
                        times.iter().map(|at| interval.bucket(*at)).collect();
                    assert!(ranges.iter().any(|r| r.contains(now)), "{now}");
                    // Ahead: across the next two boundaries, including midnight and the
                    // new year.
                    let later = now + interval.duration() * 2;
                    assert!(ranges.iter().any(|r| r.contains(later)), "{now}: {later}");
                    let late = now - interval.duration();
                    assert!(ranges.iter().any(|r| r.contains(late)), "{now}: {late}");
                    // Contiguous, with no gap between them.
                    assert!(ranges.windows(2).all(|pair| pair[0].to == pair[1].from));
                }
            }
        }
    }

    #[test]
    fn a_new_partition_never_overlaps_one_made_before() {
        let legacy = partition(LEGACY_PARTITION, None, datetime!(2026-12-02 0:00 UTC));
        let day = PartitionInterval::DAY;
        // Inside the legacy partition: nothing to make.
        assert_eq!(
            range_for(
                datetime!(2026-12-01 12:00 UTC),
                day,
                std::slice::from_ref(&legacy)
            ),
            None
        );
        // After it: the whole day.
        let next = range_for(
            datetime!(2026-12-02 5:00 UTC),
            day,
            std::slice::from_ref(&legacy),
        )
        .unwrap();
        assert_eq!(next.from, datetime!(2026-12-02 0:00 UTC));
        // Daily partitions made, then the interval changed to 6 hours mid-day: the new
        // partitions fill the gaps and stop where the old ones start.
        let existing = vec![
            partition(
                "a",
                Some(datetime!(2026-12-03 0:00 UTC)),
                datetime!(2026-12-04 0:00 UTC),
            ),
            partition(
                "b",
                Some(datetime!(2026-12-05 0:00 UTC)),
                datetime!(2026-12-06 0:00 UTC),
            ),
        ];
        let six: PartitionInterval = "6h".parse().unwrap();
        let gap = range_for(datetime!(2026-12-04 23:00 UTC), six, &existing).unwrap();
        assert_eq!(gap.from, datetime!(2026-12-04 18:00 UTC));
        assert_eq!(gap.to, datetime!(2026-12-05 0:00 UTC));
        let weekly: PartitionInterval = "7d".parse().unwrap();
        let clipped = range_for(datetime!(2026-12-04 1:00 UTC), weekly, &existing).unwrap();
        assert_eq!(clipped.from, datetime!(2026-12-04 0:00 UTC));
        assert_eq!(clipped.to, datetime!(2026-12-05 0:00 UTC));
    }

    #[test]
    fn retention_expires_exactly_the_partitions_past_it() {
        let day =
            |d: u8| datetime!(2026-12-01 0:00 UTC) + Duration::from_secs(u64::from(d - 1) * 86_400);
        let partitions = vec![
            partition(LEGACY_PARTITION, None, day(1)),
            partition("p1", Some(day(1)), day(2)),
            partition("p2", Some(day(2)), day(3)),
            partition("p3", Some(day(3)), day(4)),
        ];
        let retention: Retention = "2d".parse().unwrap();
        let grace = Duration::from_secs(600);
        let names = |now| {
            expired(&partitions, retention, grace, now)
                .iter()
                .map(|p| p.name.clone())
                .collect::<Vec<_>>()
        };
        // At day 4 00:05, p1 ended 2 days and 5 minutes ago: within the grace.
        assert_eq!(names(day(4) + Duration::from_secs(300)), [LEGACY_PARTITION]);
        assert_eq!(
            names(day(4) + Duration::from_secs(601)),
            [LEGACY_PARTITION, "p1"]
        );
        assert_eq!(names(day(1)), Vec::<String>::new());
    }
}
