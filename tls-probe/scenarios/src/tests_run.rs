//! Each scenario, run briefly in-process: does it show the behaviour it exists for?
//!
//! These open real loopback TLS connections and take about a second each.

use std::time::Duration;

use super::{Output, ScenarioName, execute, report::Done};

fn run(name: ScenarioName, millis: u64) -> Done {
    match execute(name, Duration::from_millis(millis), false, Output::Quiet) {
        Ok(done) => done,
        Err(e) => panic!("scenario {name} failed: {e:#}"),
    }
}

#[test]
fn healthy_echoes_everything_without_errors() {
    let done = run(ScenarioName::Healthy, 1000);
    let c = &done.counts;
    assert_eq!(c.get("client_handshakes_full"), 16, "{c:?}");
    assert_eq!(c.get("server_handshakes_full"), 16, "{c:?}");
    assert!(c.get("client_round_trips") > 16, "{c:?}");
    assert_eq!(
        c.get("client_read_bytes"),
        c.get("client_write_bytes"),
        "{c:?}"
    );
    let failures = ["read_failures", "write_failures", "handshake_failures"]
        .iter()
        .map(|k| c.get(&format!("client_{k}")) + c.get(&format!("server_{k}")))
        .sum::<u64>();
    assert_eq!(failures, 0, "{c:?}");
}

#[test]
fn spin_loop_wakes_without_progress() {
    let done = run(ScenarioName::SpinLoop, 500);
    let c = &done.counts;
    assert!(c.get("client_wakeups") > 1000, "{c:?}");
    // Every SSL_read answers WANT_READ, but one that meets the server's close at the end.
    assert_eq!(
        c.get("client_want_read") + c.get("client_closed_at_deadline"),
        c.get("client_ssl_read_calls"),
        "{c:?}"
    );
    assert_eq!(c.get("client_read_bytes"), 0, "{c:?}");
    assert_eq!(c.get("client_empty_wakeups"), 0, "{c:?}");
}

#[test]
fn busy_poll_polls_with_nothing_to_do() {
    let done = run(ScenarioName::BusyPoll, 500);
    let c = &done.counts;
    assert!(c.get("client_empty_wakeups") > 1000, "{c:?}");
    assert!(c.get("client_ssl_read_calls") <= 4, "{c:?}");
}

#[test]
fn bad_write_retry_breaks_and_reconnects() {
    // The server's first stall is 600-1000 ms into the run.
    let done = run(ScenarioName::BadWriteRetry, 1500);
    let c = &done.counts;
    assert!(c.get("client_bad_write_retries") >= 1, "{c:?}");
    assert_eq!(
        c.get("client_reconnects"),
        c.get("client_bad_write_retries")
            + c.get("client_write_failures")
            + c.get("client_read_failures"),
        "{c:?}"
    );
    assert!(c.get("client_requests_completed") > 0, "{c:?}");
}

#[test]
fn handshake_storm_is_all_full_handshakes() {
    let done = run(ScenarioName::HandshakeStorm, 800);
    let c = &done.counts;
    assert!(c.get("server_handshakes_full") > 20, "{c:?}");
    assert_eq!(c.get("server_handshakes_resumed"), 0, "{c:?}");
    assert_eq!(c.get("client_handshakes_resumed"), 0, "{c:?}");
}

#[test]
fn resumed_handshakes_mostly_resume() {
    let done = run(ScenarioName::ResumedHandshakes, 800);
    let c = &done.counts;
    let (full, resumed) = (
        c.get("server_handshakes_full"),
        c.get("server_handshakes_resumed"),
    );
    assert!(resumed > 20 && resumed > 4 * full, "{c:?}");
    assert!(
        c.get("client_handshakes_resumed") > 4 * c.get("client_handshakes_full"),
        "{c:?}"
    );
}

#[test]
fn concurrent_ssl_shares_one_ssl_between_reader_and_writer() {
    let done = run(ScenarioName::ConcurrentSsl, 500);
    let c = &done.counts;
    assert!(c.get("writer_ssl_write_calls") > 10, "{c:?}");
    assert!(c.get("reader_read_bytes") > 0, "{c:?}");
    let tids: Vec<i32> = done
        .threads
        .iter()
        .filter(|t| t.role != "server")
        .map(|t| t.tid)
        .collect();
    assert_eq!(tids.len(), 2);
    assert_ne!(tids[0], tids[1]);
}

#[test]
fn mixed_runs_every_part_under_its_own_roles() {
    let done = run(ScenarioName::Mixed, 1000);
    let c = &done.counts;
    assert!(c.get("spin-client_wakeups") > 1000, "{c:?}");
    assert_eq!(c.get("spin-client_read_bytes"), 0, "{c:?}");
    assert!(c.get("storm-server_handshakes_full") > 10, "{c:?}");
    assert_eq!(c.get("storm-server_handshakes_resumed"), 0, "{c:?}");
    assert_eq!(c.get("healthy-client_handshakes_full"), 16, "{c:?}");
    assert!(c.get("healthy-client_round_trips") > 16, "{c:?}");
    let mut roles: Vec<&str> = done.threads.iter().map(|t| t.role.as_str()).collect();
    roles.dedup();
    assert_eq!(
        roles,
        [
            "spin-server",
            "spin-client",
            "storm-server",
            "storm-client",
            "healthy-server",
            "healthy-client"
        ]
    );
}

#[test]
fn async_stall_answers_want_async_on_every_retry_then_completes() {
    let done = run(ScenarioName::AsyncStall, 1000);
    let c = &done.counts;
    // ~70% of the run at one retry per 10 ms: dozens of WANT_ASYNC, each a real pause.
    assert!(c.get("server_want_async") >= 20, "{c:?}");
    assert_eq!(
        c.get("server_want_async"),
        c.get("server_async_pauses"),
        "{c:?}"
    );
    assert_eq!(
        c.get("server_max_want_async_streak"),
        c.get("server_want_async"),
        "{c:?}"
    );
    assert_eq!(c.get("server_handshakes"), 1, "{c:?}");
    assert!(c.get("server_stall_ms") >= 500, "{c:?}");
    assert!(c.get("client_round_trips") >= 1, "{c:?}");
}

#[test]
fn async_quick_pauses_twice_per_handshake() {
    let done = run(ScenarioName::AsyncQuick, 1500);
    let c = &done.counts;
    let hs = c.get("server_handshakes");
    assert!(hs >= 3, "{c:?}");
    assert_eq!(c.get("server_want_async"), 2 * hs, "{c:?}");
    assert_eq!(c.get("server_async_pauses"), 2 * hs, "{c:?}");
    for t in done.threads.iter().filter(|t| t.role == "server") {
        let longest = t.counts.get("max_want_async_streak");
        assert!(longest == 2 || t.counts.get("handshakes") == 0, "{t:?}");
    }
    assert!(c.get("client_round_trips") >= hs, "{c:?}");
}

#[test]
fn async_no_jobs_answers_want_async_job_while_the_only_job_is_paused() {
    let done = run(ScenarioName::AsyncNoJobs, 1000);
    let c = &done.counts;
    assert!(c.get("server_want_async_job") >= 20, "{c:?}");
    // One round retries both: one WANT_ASYNC for the job holder, one WANT_ASYNC_JOB.
    assert_eq!(
        c.get("server_want_async"),
        c.get("server_want_async_job"),
        "{c:?}"
    );
    assert_eq!(c.get("server_handshakes"), 2, "{c:?}");
    assert_eq!(c.get("client_handshakes"), 2, "{c:?}");
}
