//! The benchmark's summary table: the median of each profile's runs beside the seed
//! system's published figures.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::probe::Diagnosis;
use crate::load::Report;

/// One profile's runs, summarised.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// The profile's name.
    pub profile: String,
    /// Runs summarised.
    pub runs: usize,
    /// Median accepted logs/s.
    pub accepted_logs_per_sec: f64,
    /// Median of each run's latency percentiles, in milliseconds.
    pub p50_ms: f64,
    /// Median p95.
    pub p95_ms: f64,
    /// Median p99.
    pub p99_ms: f64,
    /// Median persisted logs/s (start until everything is stored).
    pub persisted_logs_per_sec: Option<f64>,
    /// Median seconds from the last accepted log until everything was stored.
    pub drain_secs: Option<f64>,
    /// Lost logs, summed over the runs.
    pub lost: u64,
    /// Duplicated logs, summed over the runs.
    pub duplicated: u64,
    /// Failed requests (not counting 503 refusals), summed over the runs.
    pub errors: u64,
    /// Whether persistence kept up in every run (open-loop profiles only).
    pub keeps_up: Option<bool>,
    /// Median CPU per stored log of each process (and `pipeline`, all but the load
    /// generator), in microseconds.
    pub cpu_us_per_log: BTreeMap<String, f64>,
}

impl Row {
    /// Summarises `runs`, the runs of `profile` and what each cost.
    pub fn of(profile: &str, runs: &[(Report, Diagnosis)]) -> Self {
        let reports: Vec<&Report> = runs.iter().map(|(report, _)| report).collect();
        let mut cpu_us_per_log = BTreeMap::new();
        for (_, diagnosis) in runs {
            for name in diagnosis.cpu_us_per_log.keys() {
                cpu_us_per_log.entry(name.clone()).or_insert_with(|| {
                    median(
                        runs.iter()
                            .filter_map(|(_, d)| d.cpu_us_per_log.get(name).copied()),
                    )
                });
            }
        }
        let median_of = |value: &dyn Fn(&Report) -> f64| median(reports.iter().map(|r| value(r)));
        let e2e: Vec<_> = reports
            .iter()
            .filter_map(|r| r.end_to_end.as_ref())
            .collect();
        let has_e2e = !e2e.is_empty();
        Self {
            profile: profile.to_owned(),
            runs: reports.len(),
            accepted_logs_per_sec: median_of(&|r| r.logs_per_sec),
            p50_ms: median_of(&|r| r.latency_ms.p50),
            p95_ms: median_of(&|r| r.latency_ms.p95),
            p99_ms: median_of(&|r| r.latency_ms.p99),
            persisted_logs_per_sec: has_e2e
                .then(|| median(e2e.iter().map(|e| e.persisted_logs_per_sec))),
            drain_secs: has_e2e
                .then(|| median(e2e.iter().filter_map(|e| e.drain_secs)))
                .filter(|secs| !secs.is_nan()),
            lost: e2e.iter().map(|e| e.lost).sum(),
            duplicated: e2e.iter().map(|e| e.duplicated + e.stored_unsent).sum(),
            errors: reports.iter().map(|r| r.errors).sum(),
            // Only an open loop can keep up: a closed loop sends as fast as accepted.
            keeps_up: (has_e2e && reports.iter().all(|r| r.mode == "open"))
                .then(|| e2e.iter().all(|e| e.keeps_up)),
            cpu_us_per_log,
        }
    }
}

/// The median of `values` (NaN when there are none).
pub fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.collect();
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    if values.len() % 2 == 1 {
        values[middle]
    } else {
        (values[middle - 1] + values[middle]) / 2.0
    }
}

/// The table, the seed's published run first.
pub fn render(rows: &[Row]) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = writeln!(
        out,
        "| profile | runs | accepted logs/s | p50 ms | p95 ms | p99 ms | persisted logs/s | drain s | lost | duplicated | errors |"
    );
    let _ = writeln!(
        out,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    let _ = writeln!(
        out,
        "| seed system, published (laptop, 12 processes) | 50 | ~23,895 | 13.54 | ~61 | ~96 | – | – | – | – | 0 |"
    );
    let optional = |value: Option<f64>, precision: usize| {
        value.map_or_else(|| "–".to_owned(), |v| format!("{v:.precision$}"))
    };
    for row in rows {
        let keeps_up = match row.keeps_up {
            Some(true) => " (keeps up)",
            Some(false) => " (falls behind)",
            None => "",
        };
        let _ = writeln!(
            out,
            "| {}{keeps_up} | {} | {} | {:.2} | {:.2} | {:.2} | {} | {} | {} | {} | {} |",
            row.profile,
            row.runs,
            thousands(row.accepted_logs_per_sec),
            row.p50_ms,
            row.p95_ms,
            row.p99_ms,
            row.persisted_logs_per_sec
                .map_or_else(|| "–".to_owned(), thousands),
            optional(row.drain_secs, 2),
            row.lost,
            row.duplicated,
            row.errors,
        );
    }
    let _ = writeln!(out, "\nCPU per stored log, µs (median of the runs):\n");
    let names: Vec<&String> = rows
        .iter()
        .flat_map(|row| row.cpu_us_per_log.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let header: Vec<&str> = names.iter().map(|name| name.as_str()).collect();
    let _ = writeln!(out, "| profile | {} |", header.join(" | "));
    let _ = writeln!(out, "|---|{}", "---:|".repeat(names.len()));
    for row in rows {
        let cells: Vec<String> = names
            .iter()
            .map(|name| optional(row.cpu_us_per_log.get(*name).copied(), 1))
            .collect();
        let _ = writeln!(out, "| {} | {} |", row.profile, cells.join(" | "));
    }
    out
}

/// `value` rounded, with thousands separated by commas.
fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index) % 3 == 0 {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median([3.0, 1.0, 2.0].into_iter()), 2.0);
        assert_eq!(median([4.0, 1.0, 2.0, 3.0].into_iter()), 2.5);
        assert!(median(std::iter::empty()).is_nan());
    }

    #[test]
    fn numbers_are_grouped_by_thousands() {
        assert_eq!(thousands(23_895.4), "23,895");
        assert_eq!(thousands(1_234_567.0), "1,234,567");
        assert_eq!(thousands(999.0), "999");
    }

    #[test]
    fn the_table_starts_with_the_published_seed_figures() {
        let row = Row {
            profile: "seed".into(),
            runs: 3,
            accepted_logs_per_sec: 150_000.0,
            p50_ms: 1.0,
            p95_ms: 2.0,
            p99_ms: 3.0,
            persisted_logs_per_sec: Some(60_000.0),
            drain_secs: Some(1.5),
            lost: 0,
            duplicated: 0,
            errors: 0,
            keeps_up: None,
            cpu_us_per_log: BTreeMap::from([("api".to_owned(), 4.25)]),
        };
        let table = render(&[row]);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[2].contains("~23,895"), "{table}");
        assert_eq!(
            lines[3],
            "| seed | 3 | 150,000 | 1.00 | 2.00 | 3.00 | 60,000 | 1.50 | 0 | 0 | 0 |"
        );
        assert!(
            table.ends_with("| profile | api |\n|---|---:|\n| seed | 4.2 |\n"),
            "{table}"
        );
    }
}
