//! Thresholds and bounds of the engine. Every default is named and explained here.

use serde::{Deserialize, Serialize};

const MS: u64 = 1_000_000;
const SEC: u64 = 1_000_000_000;

/// Engine thresholds. Times are event time (CLOCK_MONOTONIC ns).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// Length of the sliding windows that rates are computed over, and how long a rate
    /// condition must hold to count as sustained. Split into 10 buckets.
    pub window_ns: u64,
    /// A rate condition is "sustained" when at least this many of the window's 10 buckets
    /// saw the pathology: a single burst does not open a finding.
    pub sustained_buckets: usize,
    /// A rate finding stays open while its rate is at least this share of the opening
    /// threshold (hysteresis, so a finding near the threshold does not flap).
    pub keep_open_pct: f64,
    /// A rate finding closes once its condition has not held for this long.
    pub close_after_ns: u64,

    /// spin_loop: wasted wake-ups of one connection per second.
    pub spin_min_wasted_wakeups_per_sec: f64,
    /// spin_loop: share of the connection's wake-ups that made no progress.
    pub spin_min_no_progress_pct: f64,

    /// busy_epoll_loop: wake-ups per second of one thread that returned at once and made no
    /// progress.
    pub busy_min_immediate_wakeups_per_sec: f64,
    /// busy_epoll_loop: an epoll wait that blocked less than this returned "at once".
    pub busy_max_blocked_ns: u64,
    /// busy_epoll_loop: at most this share of the thread's wake-ups may have made progress.
    pub busy_max_progress_pct: f64,

    /// want_async_stall: consecutive WANT_ASYNC / WANT_ASYNC_JOB answers on a connection...
    pub async_min_waits: u32,
    /// ...spanning at least this long.
    pub async_min_stall_ns: u64,
    /// want_async_stall: stalls at least this long are critical.
    pub async_critical_stall_ns: u64,

    /// bad_write_retry and concurrent_ssl_use are incidents: they close after this long
    /// without a new occurrence. Longer than a rate window, so a bug that strikes every few
    /// seconds stays one finding instead of flapping.
    pub incident_quiet_ns: u64,

    /// spin_loop and busy_epoll_loop are critical when the thread burns at least this much of
    /// a core.
    pub critical_cpu_pct: f64,

    /// "Updated" is emitted when the headline number moved by at least this much...
    pub update_min_change_pct: f64,
    /// ...or when this long passed since the last emission.
    pub update_min_interval_ns: u64,
    /// Yet never sooner than this after the last emission (a severity change excepted), so
    /// that a count growing fast does not become a stream of updates.
    pub update_min_gap_ns: u64,

    /// handshake_saturation: a thread spends at least this share of its wall time inside
    /// handshake calls...
    pub saturation_min_handshake_pct: f64,
    /// ...and at most this share blocked in epoll waits (the loop has no idle time left)...
    pub saturation_max_blocked_pct: f64,
    /// ...while at least this many handshakes a second start on it...
    pub saturation_min_handshakes_per_sec: f64,
    /// ...for this long without a break, and the thread uses at least this much of a core
    /// (when its CPU is sampled).
    pub saturation_min_duration_ns: u64,
    pub saturation_min_cpu_pct: f64,
    /// handshake_saturation: the full handshakes take at least this share of the wall time.
    pub saturation_min_full_time_pct: f64,
    /// handshake_saturation is critical from this share of wall time in handshakes, or when
    /// the kernel's listen queue overflows meanwhile.
    pub saturation_critical_handshake_pct: f64,

    /// low_session_resumption: the resumption rate is measured over this long...
    pub resumption_window_ns: u64,
    /// ...over at least this many completed handshakes...
    pub resumption_min_handshakes: u32,
    /// ...and is low under this share...
    pub resumption_min_pct: f64,
    /// ...reported only when at least this share of those handshakes came from a peer host
    /// that had connected before (clients come back).
    pub resumption_min_returning_pct: f64,

    /// connection_churn: new connections a second from one peer host...
    pub churn_min_connections_per_sec: f64,
    /// ...whose median lifetime is under this.
    pub churn_max_lifetime_ns: u64,
    /// At most this many peer hosts are counted per process.
    pub max_peers: usize,

    /// At most this many connections are tracked; the least recently seen are evicted.
    pub max_connections: usize,
    /// At most this many threads are tracked; the least recently seen are evicted.
    pub max_threads: usize,
    /// Closed findings kept for `findings()`; the oldest are dropped.
    pub max_closed_findings: usize,
    /// Connections, threads and processes with no event for this long are retired.
    pub idle_retire_ns: u64,
    /// A failing SSL call waits this long for its SSL_get_error before its code is inferred.
    pub pending_error_ns: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            window_ns: SEC,
            sustained_buckets: 9,
            keep_open_pct: 50.0,
            close_after_ns: SEC,
            spin_min_wasted_wakeups_per_sec: 200.0,
            spin_min_no_progress_pct: 90.0,
            busy_min_immediate_wakeups_per_sec: 1000.0,
            busy_max_blocked_ns: 50_000,
            busy_max_progress_pct: 1.0,
            async_min_waits: 3,
            async_min_stall_ns: 100 * MS,
            async_critical_stall_ns: SEC,
            incident_quiet_ns: 10 * SEC,
            critical_cpu_pct: 80.0,
            update_min_change_pct: 20.0,
            update_min_interval_ns: 5 * SEC,
            update_min_gap_ns: SEC,
            saturation_min_handshake_pct: 50.0,
            saturation_max_blocked_pct: 20.0,
            saturation_min_handshakes_per_sec: 20.0,
            saturation_min_duration_ns: SEC / 2,
            saturation_min_cpu_pct: 25.0,
            saturation_min_full_time_pct: 25.0,
            saturation_critical_handshake_pct: 80.0,
            resumption_window_ns: 10 * SEC,
            resumption_min_handshakes: 100,
            resumption_min_pct: 70.0,
            resumption_min_returning_pct: 50.0,
            churn_min_connections_per_sec: 5.0,
            churn_max_lifetime_ns: SEC,
            max_peers: 1024,
            max_connections: 65_536,
            max_threads: 16_384,
            max_closed_findings: 1024,
            idle_retire_ns: 300 * SEC,
            pending_error_ns: 50 * MS,
        }
    }
}
