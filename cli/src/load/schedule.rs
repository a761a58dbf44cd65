//! When each request is due: at a constant arrival rate (open loop) or as soon as a
//! connection is free (closed loop), until the run's stop condition.

use std::time::{Duration, Instant};

use super::plan::Stop;

/// The send times of a run's requests.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    start: Instant,
    stop: Stop,
    requests_per_sec: Option<f64>,
}

impl Schedule {
    /// Requests from `start` until `stop`, at `requests_per_sec` (open loop) or as fast
    /// as they are answered (closed loop, `None`).
    pub fn new(start: Instant, stop: Stop, requests_per_sec: Option<f64>) -> Self {
        Self {
            start,
            stop,
            requests_per_sec,
        }
    }

    /// When the run began.
    pub fn start(&self) -> Instant {
        self.start
    }

    /// When request `n` is due — its intended send time in open loop, `now` in closed
    /// loop — or `None` when the run sends no request `n`.
    pub fn due(&self, n: u64, now: Instant) -> Option<Instant> {
        if let Stop::Requests(total) = self.stop
            && n >= total
        {
            return None;
        }
        let at = match self.requests_per_sec {
            Some(rate) => self.start + Duration::from_secs_f64(n as f64 / rate),
            None => now,
        };
        match self.stop {
            Stop::After(duration) if at >= self.start + duration => None,
            _ => Some(at),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_loop_requests_are_evenly_spaced_until_the_duration_ends() {
        let start = Instant::now();
        let schedule = Schedule::new(start, Stop::After(Duration::from_secs(2)), Some(1000.0));
        // The intended time does not depend on when the request is taken.
        let late = start + Duration::from_secs(5);
        assert_eq!(schedule.due(0, late), Some(start));
        assert_eq!(
            schedule.due(500, start),
            Some(start + Duration::from_millis(500))
        );
        assert_eq!(
            schedule.due(1999, start),
            Some(start + Duration::from_millis(1999))
        );
        assert_eq!(schedule.due(2000, start), None);
    }

    #[test]
    fn closed_loop_requests_are_due_at_once_until_the_duration_ends() {
        let start = Instant::now();
        let schedule = Schedule::new(start, Stop::After(Duration::from_secs(1)), None);
        let now = start + Duration::from_millis(999);
        assert_eq!(schedule.due(1_000_000, now), Some(now));
        assert_eq!(schedule.due(0, start + Duration::from_secs(1)), None);
    }

    #[test]
    fn a_request_count_stops_either_loop() {
        let start = Instant::now();
        let closed = Schedule::new(start, Stop::Requests(3), None);
        assert!(closed.due(2, start).is_some());
        assert_eq!(closed.due(3, start), None);
        let open = Schedule::new(start, Stop::Requests(3), Some(1.0));
        assert_eq!(open.due(2, start), Some(start + Duration::from_secs(2)));
        assert_eq!(open.due(3, start), None);
    }
}
