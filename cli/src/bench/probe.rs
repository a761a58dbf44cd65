//! Where the time goes during a run: CPU per process (from `/proc`), Redis
//! `INFO commandstats` and PostgreSQL's `pg_stat_statements`, each reset before the run.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Instant;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::stack::BenchStack;

/// Clock ticks per second in `/proc/<pid>/stat` (`USER_HZ`, 100 on Linux).
const USER_HZ: f64 = 100.0;

/// What a run cost, by process and by command.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Diagnosis {
    /// CPU used by each part of the stack (and `load`, the generator), in percent of
    /// one core over the run.
    pub cpu_percent: BTreeMap<String, f64>,
    /// CPU used by each part over the run (its drain included), in microseconds per log
    /// it stored (or accepted, without an end-to-end check).
    pub cpu_us_per_log: BTreeMap<String, f64>,
    /// CPU of each Redis master, in percent of one core, when there are several (a
    /// Redis Cluster): how evenly the shards spread the work.
    #[serde(default)]
    pub redis_masters_cpu_percent: Vec<f64>,
    /// Peak resident memory of each process of the stack but PostgreSQL (whose shared
    /// buffers would dominate), and of the generator, in MiB since it started.
    pub peak_rss_mib: BTreeMap<String, f64>,
    /// Redis commands by total time over every master, slowest first: name, calls,
    /// microseconds.
    pub redis_commands: Vec<(String, u64, u64)>,
    /// PostgreSQL statements by total time, slowest first: calls, total ms, mean ms,
    /// rows, query.
    pub statements: Vec<String>,
}

impl Diagnosis {
    /// As text, indented under a run.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let cpu: Vec<String> = self
            .cpu_percent
            .iter()
            .map(|(name, percent)| format!("{name} {percent:.0}%"))
            .collect();
        // Writing into a String cannot fail.
        let _ = writeln!(out, "  cpu        {}", cpu.join("  "));
        if self.redis_masters_cpu_percent.len() > 1 {
            let masters: Vec<String> = self
                .redis_masters_cpu_percent
                .iter()
                .map(|percent| format!("{percent:.0}%"))
                .collect();
            let _ = writeln!(out, "  masters    {}", masters.join("  "));
        }
        let per_log: Vec<String> = self
            .cpu_us_per_log
            .iter()
            .map(|(name, micros)| format!("{name} {micros:.1}"))
            .collect();
        let _ = writeln!(out, "  µs/log     {}", per_log.join("  "));
        let memory: Vec<String> = self
            .peak_rss_mib
            .iter()
            .map(|(name, mib)| format!("{name} {mib:.0} MiB"))
            .collect();
        let _ = writeln!(out, "  peak rss   {}", memory.join("  "));
        let commands: Vec<String> = self
            .redis_commands
            .iter()
            .take(6)
            .map(|(name, calls, usec)| {
                format!(
                    "{name} {calls} calls {:.1} µs/call",
                    *usec as f64 / (*calls).max(1) as f64
                )
            })
            .collect();
        let _ = writeln!(out, "  redis      {}", commands.join("; "));
        for statement in &self.statements {
            let _ = writeln!(out, "  postgres   {statement}");
        }
        out
    }
}

/// A probe started before a run.
pub struct Probe {
    started: Instant,
    cpu: Vec<(&'static str, f64)>,
}

impl Probe {
    /// Resets Redis's and PostgreSQL's statistics and reads the CPU used so far.
    pub async fn start(stack: &mut BenchStack) -> Result<Self> {
        for mut master in stack.redis_masters().await? {
            redis::cmd("CONFIG")
                .arg("RESETSTAT")
                .query_async::<()>(&mut master)
                .await?;
        }
        stack
            .postgres
            .psql("logs", "select pg_stat_statements_reset()")?;
        Ok(Self {
            started: Instant::now(),
            cpu: cpu_by_part(stack).await?,
        })
    }

    /// What the run, which stored `logs`, cost since [`start`](Self::start).
    pub async fn finish(self, stack: &mut BenchStack, logs: u64) -> Result<Diagnosis> {
        let wall = self.started.elapsed().as_secs_f64();
        let mut cpu_percent = BTreeMap::new();
        let mut cpu_us_per_log = BTreeMap::new();
        let mut redis_masters_cpu_percent = Vec::new();
        for ((name, before), (_, after)) in self.cpu.iter().zip(cpu_by_part(stack).await?) {
            let percent = (after - before) / wall * 100.0;
            if *name == "redis" {
                redis_masters_cpu_percent.push(percent);
            }
            *cpu_percent.entry((*name).to_owned()).or_insert(0.0) += percent;
            *cpu_us_per_log.entry((*name).to_owned()).or_insert(0.0) +=
                (after - before) * 1e6 / logs.max(1) as f64;
        }
        let pipeline: f64 = cpu_us_per_log
            .iter()
            .filter(|(name, _)| name.as_str() != "load")
            .map(|(_, micros)| micros)
            .sum();
        cpu_us_per_log.insert("pipeline".to_owned(), pipeline);
        let mut peak_rss_mib = BTreeMap::new();
        let mut parts = stack.pids().await?;
        parts.push(("load", std::process::id()));
        for (name, pid) in parts {
            if name != "postgres" {
                let mib = peak_rss_kib(pid)? / 1024.0;
                let peak = peak_rss_mib.entry(name.to_owned()).or_insert(0.0_f64);
                *peak = peak.max(mib);
            }
        }
        let mut infos = Vec::new();
        for mut master in stack.redis_masters().await? {
            let info: String = redis::cmd("INFO")
                .arg("commandstats")
                .query_async(&mut master)
                .await?;
            infos.push(info);
        }
        let statements = stack.postgres.psql(
            "logs",
            "select format('%s calls, %s ms total, %s ms mean, %s rows: %s', calls, \
             round(total_exec_time), round(mean_exec_time::numeric, 2), rows, \
             left(regexp_replace(query, '\\s+', ' ', 'g'), 110)) \
             from pg_stat_statements order by total_exec_time desc limit 6",
        )?;
        Ok(Diagnosis {
            cpu_percent,
            cpu_us_per_log,
            redis_masters_cpu_percent,
            peak_rss_mib,
            redis_commands: command_stats(&infos),
            statements: statements.lines().map(str::to_owned).collect(),
        })
    }
}

/// CPU seconds used so far by each part of the stack and by this process.
async fn cpu_by_part(stack: &mut BenchStack) -> Result<Vec<(&'static str, f64)>> {
    let mut used = Vec::new();
    for (name, pid) in stack.pids().await? {
        let mut secs = cpu_secs(pid)?;
        if matches!(name, "postgres" | "standby") {
            // Each connection (and the standby's WAL receiver and replay) is a child
            // process of the postmaster.
            secs += children_of(pid)?
                .into_iter()
                .map(|child| cpu_secs(child).unwrap_or(0.0))
                .sum::<f64>();
        }
        used.push((name, secs));
    }
    used.push(("load", cpu_secs(std::process::id())?));
    Ok(used)
}

/// CPU seconds of the PostgreSQL server: the postmaster and every child.
pub(crate) fn postgres_cpu(postmaster: u32) -> Result<f64> {
    Ok(cpu_secs(postmaster)?
        + children_of(postmaster)?
            .into_iter()
            .map(|child| cpu_secs(child).unwrap_or(0.0))
            .sum::<f64>())
}

/// The user and system CPU seconds of process `pid`.
pub(crate) fn cpu_secs(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    let fields = stat_fields(&stat).with_context(|| format!("parsing /proc/{pid}/stat"))?;
    // Fields 14 and 15 (utime, stime); `fields` starts at field 3.
    let ticks = |index: usize| -> Option<f64> { fields.get(index)?.parse().ok() };
    let (user, system) = ticks(11).zip(ticks(12)).context("no CPU times")?;
    Ok((user + system) / USER_HZ)
}

/// The peak resident memory of process `pid` (`VmHWM`), in KiB.
fn peak_rss_kib(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("/proc/{pid}/status has no VmHWM"))
}

/// The pid of the postmaster of the PostgreSQL server in `dir`.
pub(crate) fn postmaster_pid(dir: &std::path::Path) -> Result<u32> {
    std::fs::read_to_string(dir.join("data/postmaster.pid"))
        .context("reading postmaster.pid")?
        .lines()
        .next()
        .and_then(|pid| pid.trim().parse().ok())
        .context("postmaster.pid has no pid")
}

/// The fields of a `/proc/<pid>/stat` line after the command name (from field 3, the
/// state).
fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().collect())
}

/// The running children of process `parent`.
pub(crate) fn children_of(parent: u32) -> Result<Vec<u32>> {
    let mut children = Vec::new();
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        // A process may exit between listing and reading.
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let ppid = stat_fields(&stat).and_then(|fields| fields.get(1)?.parse::<u32>().ok());
        if ppid == Some(parent) {
            children.push(pid);
        }
    }
    Ok(children)
}

/// `INFO commandstats` as (command, calls, microseconds), the most time first.
fn command_stats(infos: &[String]) -> Vec<(String, u64, u64)> {
    let mut totals: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for line in infos.iter().flat_map(|info| info.lines()) {
        let Some((name, stats)) = line
            .strip_prefix("cmdstat_")
            .and_then(|line| line.split_once(':'))
        else {
            continue;
        };
        let stat = |key: &str| {
            stats
                .split(',')
                .find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))
                .and_then(|value| value.parse::<u64>().ok())
        };
        if let (Some(calls), Some(usec)) = (stat("calls"), stat("usec")) {
            let total = totals.entry(name.to_owned()).or_default();
            total.0 += calls;
            total.1 += usec;
        }
    }
    let mut commands: Vec<(String, u64, u64)> = totals
        .into_iter()
        .map(|(name, (calls, usec))| (name, calls, usec))
        .collect();
    commands.sort_by_key(|command| std::cmp::Reverse(command.2));
    commands
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_stats_are_parsed_added_up_over_masters_and_sorted_by_time() {
        let first = "# Commandstats\r\n\
            cmdstat_xadd:calls=10,usec=50,usec_per_call=5.00,rejected_calls=0,failed_calls=0\r\n\
            cmdstat_evalsha:calls=10,usec=200,usec_per_call=20.00,rejected_calls=0,failed_calls=0\r\n";
        let second = "# Commandstats\r\n\
            cmdstat_xadd:calls=30,usec=300,usec_per_call=10.00,rejected_calls=0,failed_calls=0\r\n";
        assert_eq!(
            command_stats(&[first.to_owned()]),
            vec![("evalsha".into(), 10, 200), ("xadd".into(), 10, 50)]
        );
        assert_eq!(
            command_stats(&[first.to_owned(), second.to_owned()]),
            vec![("xadd".into(), 40, 350), ("evalsha".into(), 10, 200)]
        );
    }

    #[test]
    fn stat_fields_start_after_the_command_name() {
        let stat = "42 (postgres: a (b)) S 7 42 42 0 -1 4194560 1 0 0 0 150 25 0 0";
        let fields = stat_fields(stat).unwrap();
        assert_eq!(fields[0], "S");
        assert_eq!(fields[1], "7");
        assert_eq!((fields[11], fields[12]), ("150", "25"));
    }

    #[test]
    fn peak_rss_covers_memory_this_process_touched() {
        let block = vec![1_u8; 64 << 20];
        let kib = peak_rss_kib(std::process::id()).unwrap();
        assert!(kib >= 64.0 * 1024.0, "{kib} KiB");
        drop(block);
    }
}
