//! Checking the stored rows of a run against what the api answered, log by log.
//!
//! Every log is known by its `(device, seq)` (see [`super::plan`]), so one bit per log
//! sent says whether a row for it was seen: a second row for the same log is a
//! duplicate — a stricter check than the unique `message_id`, which a log stored twice
//! under two ids would pass — and an accepted log without a row is lost.

use std::collections::HashMap;

use super::plan::request_of;

/// What became of a request that was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// No usable answer (timeout, broken connection, 5xx): its logs may or may not be
    /// stored.
    Unconfirmed,
    /// Answered 4xx: its logs must not be stored.
    Rejected,
    /// Taken from the schedule after the run ended and never sent.
    NotSent,
}

/// The logs a run sent and the rows found for them.
#[derive(Debug)]
pub struct Ledger {
    devices: u64,
    logs_per_request: u64,
    issued: u64,
    fates: HashMap<u64, Fate>,
    seen: Vec<u64>,
    rows: u64,
    duplicated: u64,
    foreign: u64,
}

/// The verdict on a run's rows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Rows checked.
    pub rows: u64,
    /// Accepted logs with a row.
    pub persisted: u64,
    /// Accepted logs without a row.
    pub lost: u64,
    /// Rows beyond the first for the same log.
    pub duplicated: u64,
    /// Rows of unconfirmed requests.
    pub stored_unconfirmed: u64,
    /// Rows of rejected or unsent requests, or of logs the run never numbered.
    pub stored_unsent: u64,
}

impl Ledger {
    /// A ledger of requests `0..issued` of a run with `devices` and `logs_per_request`;
    /// every request is accepted unless `fates` says otherwise.
    pub fn new(
        devices: u64,
        logs_per_request: u64,
        issued: u64,
        fates: impl IntoIterator<Item = (u64, Fate)>,
    ) -> Self {
        let logs = issued * logs_per_request;
        Self {
            devices,
            logs_per_request,
            issued,
            fates: fates.into_iter().collect(),
            seen: vec![0; logs.div_ceil(64) as usize],
            rows: 0,
            duplicated: 0,
            foreign: 0,
        }
    }

    /// Counts a row holding log `seq` of `device` (either missing when the row's
    /// `log_data` lacks it).
    pub fn row(&mut self, device: Option<i64>, seq: Option<i64>) {
        self.rows += 1;
        let (Some(device), Some(seq)) = (
            device.and_then(|d| u64::try_from(d).ok()),
            seq.and_then(|s| u64::try_from(s).ok()),
        ) else {
            self.foreign += 1;
            return;
        };
        let (request, index) = request_of(device, seq, self.devices, self.logs_per_request);
        if device >= self.devices || request >= self.issued {
            self.foreign += 1;
            return;
        }
        let bit = request * self.logs_per_request + index;
        let (word, mask) = ((bit / 64) as usize, 1u64 << (bit % 64));
        if self.seen[word] & mask != 0 {
            self.duplicated += 1;
        } else {
            self.seen[word] |= mask;
        }
    }

    /// The verdict once every row has been counted.
    pub fn verdict(&self) -> Verdict {
        let mut verdict = Verdict {
            rows: self.rows,
            duplicated: self.duplicated,
            stored_unsent: self.foreign,
            ..Verdict::default()
        };
        for request in 0..self.issued {
            let first = request * self.logs_per_request;
            let stored = (first..first + self.logs_per_request)
                .filter(|bit| self.seen[(bit / 64) as usize] & (1 << (bit % 64)) != 0)
                .count() as u64;
            match self.fates.get(&request) {
                None => {
                    verdict.persisted += stored;
                    verdict.lost += self.logs_per_request - stored;
                }
                Some(Fate::Unconfirmed) => verdict.stored_unconfirmed += stored,
                Some(Fate::Rejected | Fate::NotSent) => verdict.stored_unsent += stored,
            }
        }
        verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_accepted_log_stored_once_is_a_clean_verdict() {
        // 3 devices, 2 logs per request, 6 requests: each device sends seqs 0..4.
        let mut ledger = Ledger::new(3, 2, 6, []);
        for device in 0..3 {
            for seq in 0..4 {
                ledger.row(Some(device), Some(seq));
            }
        }
        assert_eq!(
            ledger.verdict(),
            Verdict {
                rows: 12,
                persisted: 12,
                ..Verdict::default()
            }
        );
    }

    #[test]
    fn missing_repeated_and_unexpected_rows_are_told_apart() {
        let fates = [
            (1, Fate::Unconfirmed),
            (2, Fate::Rejected),
            (3, Fate::NotSent),
        ];
        // 2 devices, 1 log per request, requests 0..4 → device 0 seqs 0,1; device 1 seqs 0,1.
        let mut ledger = Ledger::new(2, 1, 4, fates);
        ledger.row(Some(1), Some(0)); // request 1, unconfirmed but stored
        ledger.row(Some(0), Some(1)); // request 2, rejected yet stored
        ledger.row(Some(0), Some(1)); // …and stored twice
        ledger.row(Some(5), Some(0)); // no such device
        ledger.row(None, Some(0)); // not a log of this generator
        // Request 0 (device 0, seq 0) was accepted and has no row.
        assert_eq!(
            ledger.verdict(),
            Verdict {
                rows: 5,
                persisted: 0,
                lost: 1,
                duplicated: 1,
                stored_unconfirmed: 1,
                stored_unsent: 3,
            }
        );
    }
}
