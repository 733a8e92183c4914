//! Numbers and names as the dashboard prints them: short, fixed units.

use crate::{
    engine::{ConnSnapshot, Evidence, FindingKind, Severity, epoll_bits::EPOLLOUT},
    event::SslErrorCode,
};

/// "950", "41.2k", "3.1M": a count or a rate, in at most 5 characters.
pub fn count(x: f64) -> String {
    let x = x.max(0.0);
    if x < 10.0 && x.fract() != 0.0 {
        format!("{x:.1}")
    } else if x < 1e3 {
        format!("{x:.0}")
    } else if x < 1e6 {
        scaled(x / 1e3, "k")
    } else if x < 1e9 {
        scaled(x / 1e6, "M")
    } else {
        scaled(x / 1e9, "G")
    }
}

fn scaled(x: f64, unit: &str) -> String {
    if x < 99.95 {
        format!("{x:.1}{unit}")
    } else {
        format!("{x:.0}{unit}")
    }
}

/// "512", "1.5K", "12M": bytes in binary units.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["", "K", "M", "G", "T"];
    let mut x = n as f64;
    let mut unit = 0;
    while x >= 1024.0 && unit < UNITS.len() - 1 {
        x /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        n.to_string()
    } else if x < 9.95 {
        format!("{x:.1}{}", UNITS[unit])
    } else {
        format!("{x:.0}{}", UNITS[unit])
    }
}

/// "0s", "45s", "3m04s", "2h05m", "3d04h": a span, coarse when long.
pub fn span(ns: u64) -> String {
    let s = ns / 1_000_000_000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

/// "01:02:03": hours, minutes and seconds.
pub fn clock(ns: u64) -> String {
    let s = ns / 1_000_000_000;
    format!("{:02}:{:02}:{:02}", s / 3600, s % 3600 / 60, s % 60)
}

/// "850us", "1.2ms", "3.40s".
pub fn latency(ns: u64) -> String {
    if ns < 1_000_000 {
        format!("{}us", ns / 1000)
    } else if ns < 1_000_000_000 {
        format!("{:.1}ms", ns as f64 / 1e6)
    } else {
        format!("{:.2}s", ns as f64 / 1e9)
    }
}

/// A horizontal bar of `width` cells for a percentage, in eighths of a cell.
pub fn bar(pct: f64, width: usize) -> String {
    const PARTS: [char; 8] = [' ', '▏', '▎', '▍', '▌', '▋', '▊', '▉'];
    let eighths = ((pct.clamp(0.0, 100.0) / 100.0) * (width * 8) as f64).round() as usize;
    let mut s = "█".repeat(eighths / 8);
    if eighths / 8 < width {
        s.push(PARTS[eighths % 8]);
        s.push_str(&" ".repeat(width - eighths / 8 - 1));
    }
    s
}

/// "WANT_READ", "SYSCALL".
pub fn ssl_error(code: SslErrorCode) -> String {
    code.name().to_uppercase()
}

pub fn severity(s: Severity) -> &'static str {
    match s {
        Severity::Critical => "CRIT",
        Severity::Warning => "WARN",
        Severity::Info => "INFO",
    }
}

pub fn severity_long(s: Severity) -> &'static str {
    match s {
        Severity::Critical => "CRITICAL",
        Severity::Warning => "WARNING",
        Severity::Info => "INFO",
    }
}

/// The kind in words, at most 14 characters.
pub fn kind(k: FindingKind) -> &'static str {
    match k {
        FindingKind::SpinLoop => "spin loop",
        FindingKind::BusyEpollLoop => "busy epoll",
        FindingKind::BadWriteRetry => "bad retry",
        FindingKind::ConcurrentSslUse => "concurrent SSL",
        FindingKind::WantAsyncStall => "async stall",
        FindingKind::HandshakeSaturation => "handshakes",
        FindingKind::LowSessionResumption => "no resumption",
        FindingKind::ConnectionChurn => "conn churn",
        FindingKind::WriteAfterShutdown => "write shut",
    }
}

/// The one number that says how bad a finding is, with what explains it:
/// "41.2k wasted wake-ups/s, WANT_READ, EPOLLOUT armed".
pub fn key_number(e: &Evidence) -> String {
    match e {
        Evidence::SpinLoop(e) => {
            let mut s = format!("{} wasted wake-ups/s", count(e.wasted_wakeups_per_sec));
            if let Some(code) = e.ssl_error {
                s += &format!(", {}", ssl_error(code));
            }
            let ready = e.ready_events_mask.unwrap_or(0);
            if e.ssl_error == Some(SslErrorCode::WantRead) && ready & EPOLLOUT != 0 {
                s += ", EPOLLOUT armed";
            }
            s
        }
        Evidence::BusyEpollLoop(e) => {
            let mut s = format!("{} empty wake-ups/s", count(e.immediate_wakeups_per_sec));
            if e.zero_timeout_pct >= 50.0 {
                s += ", timeout 0";
            }
            s
        }
        Evidence::BadWriteRetry(e) => {
            let mut s = format!(
                "{} failed write retr{}",
                e.occurrences,
                if e.occurrences == 1 { "y" } else { "ies" }
            );
            if let Some(fate) = &e.fate {
                s += &format!(", then {fate}");
            }
            s
        }
        Evidence::ConcurrentSslUse(e) => format!(
            "{} overlapping calls, tids {} and {}",
            e.overlaps, e.tid_a, e.tid_b
        ),
        Evidence::WantAsyncStall(e) => format!(
            "stalled {} on {}",
            latency(e.stalled_ns),
            ssl_error(e.ssl_error)
        ),
        Evidence::HandshakeSaturation(e) => format!(
            "{:.0}% time in handshakes, {} handshakes/s",
            e.handshake_time_pct,
            count(e.handshakes_per_sec)
        ),
        Evidence::LowSessionResumption(e) => format!(
            "{:.0}% of {} handshakes resumed",
            e.resumption_pct, e.handshakes
        ),
        Evidence::ConnectionChurn(e) => format!(
            "{} new connections/s from {}",
            count(e.connections_per_sec),
            e.peer
        ),
        Evidence::WriteAfterShutdown(e) => format!(
            "{} write{} after shutdown",
            e.occurrences,
            if e.occurrences == 1 { "" } else { "s" }
        ),
    }
}

/// What a connection is doing, in one word. "handshake" only for a handshake seen under
/// way; a connection whose handshake was never seen (made before attach) and that has not
/// moved data yet is "open", or its last WANT_*.
pub fn conn_state(c: &ConnSnapshot) -> String {
    let handshaking = c.ops.iter().any(|o| o.op.is_handshake());
    if c.closed {
        "closed".into()
    } else if !c.handshake_done && handshaking {
        "handshake".into()
    } else {
        match c.last_want {
            Some(code) if code.is_want() => code.name(),
            _ if c.handshake_done => "established".into(),
            _ => "open".into(),
        }
    }
}

/// The low 24 bits of an SSL*, enough to tell connections apart at a glance.
pub fn short_ssl(ssl: u64) -> String {
    format!("{:06x}", ssl & 0xff_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_whose_handshake_was_not_seen_is_not_said_to_be_handshaking() {
        let conn = |done: bool, ops: serde_json::Value, want: Option<&str>| -> ConnSnapshot {
            serde_json::from_value(serde_json::json!({
                "pid": 1, "ssl": 2, "fd": 3, "closed": false, "peer": null, "tid": 1,
                "first_seen_ns": 0, "last_seen_ns": 0, "read_bytes_total": 0,
                "written_bytes_total": 0, "want_read_total": 0, "want_write_total": 0,
                "last_want": want, "handshake_done": done, "ops": ops,
                "handshake_kind": null, "tls_version": null, "cipher": null,
            }))
            .unwrap()
        };
        let op = |name: &str| {
            serde_json::json!([{"op": name, "calls_total": 1, "progress_total": 0,
                "want_read_total": 1, "want_write_total": 0, "want_other_total": 0,
                "failed_total": 0, "transferred_bytes_total": 0}])
        };
        // Made before attach, spinning on SSL_read: its last WANT_*, not "handshake".
        assert_eq!(
            conn_state(&conn(false, op("SSL_read"), Some("want_read"))),
            "want_read"
        );
        assert_eq!(conn_state(&conn(false, op("SSL_read"), None)), "open");
        // A handshake seen under way.
        let hs = op("SSL_do_handshake");
        assert_eq!(
            conn_state(&conn(false, hs.clone(), Some("want_read"))),
            "handshake"
        );
        assert_eq!(conn_state(&conn(true, hs, None)), "established");
    }

    #[test]
    fn numbers() {
        assert_eq!(count(0.0), "0");
        assert_eq!(count(2.5), "2.5");
        assert_eq!(count(950.0), "950");
        assert_eq!(count(41_234.0), "41.2k");
        assert_eq!(count(123_456.0), "123k");
        assert_eq!(count(3_100_000.0), "3.1M");
        assert_eq!(bytes(512), "512");
        assert_eq!(bytes(1536), "1.5K");
        assert_eq!(bytes(12 << 20), "12M");
        assert_eq!(span(0), "0s");
        assert_eq!(span(184_000_000_000), "3m04s");
        assert_eq!(span(7_500_000_000_000), "2h05m");
        assert_eq!(clock(3_723_000_000_000), "01:02:03");
        assert_eq!(latency(850_000), "850us");
        assert_eq!(latency(1_200_000), "1.2ms");
    }

    #[test]
    fn bars() {
        assert_eq!(bar(0.0, 4), "    ");
        assert_eq!(bar(100.0, 4), "████");
        assert_eq!(bar(50.0, 4), "██  ");
        assert_eq!(bar(12.5 / 4.0, 4), "▏   ");
        assert_eq!(bar(250.0, 3).chars().count(), 3);
    }
}
