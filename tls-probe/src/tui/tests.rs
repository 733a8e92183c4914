//! App state and rendering on synthetic input with fixed pids and times.

use std::time::Duration;

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::{Terminal, backend::TestBackend, style::Color};
use tokio::sync::mpsc;

use super::{
    App, ConnSort, Exit, Msg, Overlay, Panel, RunOptions, ThreadSort, fixtures::*, run, view,
};
use crate::engine::{Change, FindingChange, FindingKind, FindingState};

fn key(code: KeyCode) -> Msg {
    Msg::Key(KeyEvent::new(code, KeyModifiers::NONE))
}

fn ctrl_c() -> Msg {
    Msg::Key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL))
}

fn typed(app: &mut App, text: &str) {
    for c in text.chars() {
        app.update(key(KeyCode::Char(c)));
    }
}

fn draw(app: &App, w: u16, h: u16) -> Terminal<TestBackend> {
    let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
    t.draw(|f| view::render(f, app)).unwrap();
    t
}

fn screen(app: &App, w: u16, h: u16) -> String {
    draw(app, w, h).backend().to_string()
}

// --- state ---

#[test]
fn findings_most_severe_and_open_first() {
    let app = spin_app(true);
    let kinds: Vec<_> = app.findings().iter().map(|f| f.kind).collect();
    assert_eq!(
        kinds,
        [
            FindingKind::SpinLoop,
            FindingKind::BusyEpollLoop,
            FindingKind::BadWriteRetry
        ]
    );
    assert_eq!(app.top_finding().map(|f| f.id), Some(spin().id));
}

#[test]
fn finding_changes_replace_by_id_and_closed_ones_stay() {
    let mut app = spin_app(true);
    let mut f = spin();
    f.state = FindingState::Closed;
    f.closed_ns = Some(NOW_NS);
    app.update(Msg::Finding(Box::new(FindingChange {
        change: Change::Closed,
        finding: f,
    })));
    assert_eq!(app.findings().len(), 3);
    assert_eq!(app.model().open_findings().count(), 1);
    assert_eq!(
        app.top_finding().map(|f| f.kind),
        Some(FindingKind::BusyEpollLoop)
    );
    // Closed findings sort after open ones.
    assert!(!app.findings()[2].is_open() && !app.findings()[1].is_open());
}

#[test]
fn target_exit_shows_and_findings_stay() {
    let mut app = spin_app(true);
    app.update(Msg::TargetExit { pid: PID });
    assert_eq!(app.findings().len(), 3);
    let s = screen(&app, 80, 24);
    assert!(s.contains("spin_server EXITED"), "{s}");
    assert!(s.contains("41.2k wasted wake-ups/s"), "{s}");
}

#[test]
fn tab_moves_between_panels_and_keys_move_within() {
    let mut app = spin_app(true);
    assert_eq!(app.focus(), Panel::Findings);
    assert_eq!(app.selected(Panel::Findings), Some(0));
    app.update(key(KeyCode::Char('j')));
    app.update(key(KeyCode::Down));
    app.update(key(KeyCode::Down));
    assert_eq!(
        app.selected(Panel::Findings),
        Some(2),
        "clamped to the last row"
    );
    app.update(key(KeyCode::Char('k')));
    assert_eq!(app.selected(Panel::Findings), Some(1));
    app.update(key(KeyCode::Tab));
    assert_eq!(app.focus(), Panel::Threads);
    app.update(key(KeyCode::End));
    assert_eq!(app.selected(Panel::Threads), Some(2));
    app.update(key(KeyCode::Tab));
    app.update(key(KeyCode::Tab));
    assert_eq!(app.focus(), Panel::Findings, "Tab wraps around");
    app.update(Msg::Key(KeyEvent::new(
        KeyCode::BackTab,
        KeyModifiers::SHIFT,
    )));
    assert_eq!(app.focus(), Panel::Connections);
}

#[test]
fn enter_opens_the_selected_finding_and_esc_closes() {
    let mut app = spin_app(true);
    app.update(key(KeyCode::Down));
    app.update(key(KeyCode::Enter));
    assert_eq!(app.overlay(), Overlay::Finding { id: 2, scroll: 0 });
    app.update(key(KeyCode::Char('j')));
    assert_eq!(app.overlay(), Overlay::Finding { id: 2, scroll: 1 });
    app.update(key(KeyCode::Esc));
    assert_eq!(app.overlay(), Overlay::None);
    assert!(!app.should_quit());

    // From the threads panel, Enter opens the worst finding about the selected thread.
    app.update(key(KeyCode::Tab));
    app.update(key(KeyCode::Home));
    assert_eq!(app.threads()[0].tid, SPIN_TID);
    app.update(key(KeyCode::Enter));
    assert_eq!(app.overlay(), Overlay::Finding { id: 1, scroll: 0 });
}

#[test]
fn filter_narrows_every_panel_and_esc_clears() {
    let mut app = spin_app(true);
    app.update(key(KeyCode::Char('/')));
    assert!(app.editing_filter());
    typed(&mut app, "40520q");
    app.update(key(KeyCode::Backspace));
    assert!(!app.should_quit(), "q while typing a filter is text");
    app.update(key(KeyCode::Enter));
    assert!(!app.editing_filter());
    assert_eq!(app.filter(), "40520");
    assert_eq!(app.connections().len(), 1);
    assert_eq!(app.connections()[0].fd, Some(9));
    assert_eq!(app.findings().len(), 1);
    assert_eq!(app.findings()[0].kind, FindingKind::BadWriteRetry);
    assert!(app.threads().is_empty());
    app.update(key(KeyCode::Esc));
    assert_eq!(app.filter(), "");
    assert_eq!(app.connections().len(), 4);
}

#[test]
fn s_cycles_the_sort_of_the_focused_panel() {
    let mut app = spin_app(true);
    app.update(key(KeyCode::Tab));
    app.update(key(KeyCode::Char('s')));
    assert_eq!(app.thread_sort(), ThreadSort::Cpu);
    app.update(key(KeyCode::Tab));
    let fds = |app: &App| -> Vec<_> { app.connections().iter().map(|c| c.fd).collect() };
    assert_eq!(
        fds(&app),
        [Some(7), Some(11), Some(9), Some(12)],
        "by WANT_*"
    );
    app.update(key(KeyCode::Char('s')));
    assert_eq!(app.conn_sort(), ConnSort::LastActive);
    assert_eq!(fds(&app), [Some(7), Some(11), Some(12), Some(9)]);
    app.update(key(KeyCode::Char('s')));
    assert_eq!(
        fds(&app),
        [Some(9), Some(11), Some(7), Some(12)],
        "by bytes"
    );
    app.update(key(KeyCode::Char('s')));
    assert_eq!(fds(&app), [Some(7), Some(9), Some(11), Some(12)], "by fd");
    assert_eq!(app.notice(), Some("connections by fd"));
}

#[test]
fn pause_freezes_the_display_and_resume_catches_up() {
    let mut app = spin_app(true);
    app.update(key(KeyCode::Char('p')));
    assert!(app.paused());
    let mut f = busy();
    f.id = 9;
    app.update(opened(f));
    app.update(Msg::Tick {
        now_ns: NOW_NS + 10_000_000_000,
    });
    assert_eq!(app.findings().len(), 3);
    assert_eq!(app.model().now_ns, NOW_NS);
    assert!(screen(&app, 80, 24).contains("PAUSED"));
    app.update(key(KeyCode::Char('p')));
    assert_eq!(app.findings().len(), 4);
    assert_eq!(app.model().now_ns, NOW_NS + 10_000_000_000);
}

#[test]
fn q_and_ctrl_c_quit_from_anywhere() {
    let mut app = spin_app(true);
    app.update(key(KeyCode::Char('?')));
    assert_eq!(app.overlay(), Overlay::Help);
    app.update(key(KeyCode::Char('q')));
    assert!(app.should_quit());

    let mut app = spin_app(true);
    app.update(key(KeyCode::Char('/')));
    app.update(ctrl_c());
    assert!(app.should_quit(), "Ctrl-C quits even while typing a filter");
}

#[test]
fn notices_expire() {
    let mut app = spin_app(true);
    app.update(Msg::Notice("lost 12 events".into()));
    assert_eq!(app.notice(), Some("lost 12 events"));
    app.update(Msg::Tick {
        now_ns: NOW_NS + 6_000_000_000,
    });
    assert_eq!(app.notice(), None);
}

#[test]
fn handshake_rate_is_per_second_of_snapshots() {
    let mut app = App::new(true);
    for (i, total) in [(0, 0), (1, 10), (2, 30)] {
        app.update(Msg::Snapshot(Box::new(snapshot_at(
            NOW_NS + i * 1_000_000_000,
            total,
        ))));
    }
    // A quarter-second later: folded into the next point, not a point of its own.
    app.update(Msg::Snapshot(Box::new(snapshot_at(
        NOW_NS + 2_250_000_000,
        35,
    ))));
    let h = &app.model().handshakes;
    assert_eq!(h.rate_history, [10, 20]);
    assert_eq!(h.total, 35);
    assert_eq!(h.resumed, None);
}

#[test]
fn handshake_panel_shows_the_split_latency_and_what_was_negotiated() {
    let mut app = App::new(false);
    let mut snap = snapshot_at(NOW_NS, 1_000);
    snap.processes[0].handshakes = Some(handshake_snapshot());
    app.update(Msg::Snapshot(Box::new(snap)));
    let h = &app.model().handshakes;
    assert_eq!((h.full, h.resumed), (Some(990), Some(10)));
    assert_eq!((h.p50_ns, h.p99_ns), (Some(1_800_000), Some(9_500_000)));
    let screen = screen(&app, 160, 48);
    assert!(screen.contains("full 990  resumed 10"), "{screen}");
    assert!(
        screen.contains("TLS 1.3 TLS_AES_256_GCM_SHA384"),
        "{screen}"
    );
}

#[test]
fn no_color_draws_without_colours() {
    let headline_fg = |color: bool| {
        let t = draw(&spin_app(color), 80, 24);
        let buf = t.backend().buffer();
        // Row 3 is the headline; column 1 is inside the CRITICAL badge.
        (buf[(1, 3)].style().bg, buf[(20, 3)].style().fg)
    };
    assert_eq!(headline_fg(true), (Some(Color::Red), Some(Color::Red)));
    let (bg, fg) = headline_fg(false);
    assert!(matches!(bg, None | Some(Color::Reset)), "{bg:?}");
    assert!(matches!(fg, None | Some(Color::Reset)), "{fg:?}");
    let t = draw(&spin_app(false), 160, 48);
    for cell in t.backend().buffer().content() {
        for c in [cell.fg, cell.bg] {
            assert_eq!(
                c,
                Color::Reset,
                "a colour under NO_COLOR at {:?}",
                cell.symbol()
            );
        }
    }
}

#[test]
fn adapts_to_resizes() {
    let app = spin_app(true);
    let mut t = draw(&app, 80, 24);
    t.backend_mut().resize(120, 30);
    t.draw(|f| view::render(f, &app)).unwrap();
    let s = t.backend().to_string();
    assert!(s.contains("COMM"), "wide tables show more columns: {s}");
    let cpu = s
        .lines()
        .find(|l| l.contains("4242/4243     spin_server"))
        .unwrap_or_default();
    assert!(cpu.contains("99%") && cpu.contains("100%"), "{s}");
    for (w, h) in [(20, 5), (40, 10), (1, 1), (300, 100)] {
        draw(&app, w, h);
    }
}

// --- the loop ---

fn fixed_clock() -> u64 {
    NOW_NS
}

#[tokio::test]
async fn run_applies_messages_draws_and_quits_on_q() {
    let (tx, mut rx) = mpsc::channel(64);
    let mut terminal = Terminal::new(TestBackend::new(80, 24)).unwrap();
    let mut app = App::new(true);
    tx.send(Msg::Header(header())).await.unwrap();
    tx.send(Msg::Snapshot(Box::new(snapshot_at(NOW_NS, 5))))
        .await
        .unwrap();
    tx.send(opened(spin())).await.unwrap();
    tx.send(key(KeyCode::Char('q'))).await.unwrap();
    let opts = RunOptions {
        frame_interval: Duration::from_millis(10),
        clock: fixed_clock,
        halt: None,
    };
    let exit = run(&mut terminal, &mut app, &mut rx, &opts).await.unwrap();
    assert_eq!(exit, Exit::Quit);
    assert_eq!(app.findings().len(), 1);
    drop(rx);
    assert!(tx.is_closed(), "the agent sees the dashboard gone");
}

#[tokio::test]
async fn run_ends_when_the_agent_lets_go() {
    let (tx, mut rx) = mpsc::channel(64);
    let mut terminal = Terminal::new(TestBackend::new(80, 24)).unwrap();
    let mut app = App::new(true);
    tx.send(Msg::Header(header())).await.unwrap();
    tx.send(opened(spin())).await.unwrap();
    let opts = RunOptions {
        frame_interval: Duration::from_millis(10),
        clock: fixed_clock,
        halt: None,
    };
    let agent = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(tx);
    });
    let exit = run(&mut terminal, &mut app, &mut rx, &opts).await.unwrap();
    agent.await.unwrap();
    assert_eq!(exit, Exit::Closed);
    let s = terminal.backend().to_string();
    assert!(
        s.contains("41.2k wasted wake-ups/s"),
        "frames were drawn: {s}"
    );
}

// --- snapshots ---

#[test]
fn spin_80x24() {
    insta::assert_snapshot!(screen(&spin_app(true), 80, 24));
}

#[test]
fn spin_160x48() {
    insta::assert_snapshot!(screen(&spin_app(true), 160, 48));
}

#[test]
fn starting_80x24() {
    let mut app = App::new(true);
    app.update(Msg::Header(header()));
    app.update(Msg::Tick {
        now_ns: ATTACHED_NS + 2_000_000_000,
    });
    insta::assert_snapshot!(screen(&app, 80, 24));
}

#[test]
fn healthy_80x24() {
    let mut app = App::new(true);
    app.update(Msg::Header(header()));
    app.update(Msg::Snapshot(Box::new(snapshot_at(NOW_NS, 40))));
    insta::assert_snapshot!(screen(&app, 80, 24));
}

#[test]
fn finding_detail_80x24() {
    let mut app = spin_app(true);
    app.update(key(KeyCode::Enter));
    insta::assert_snapshot!(screen(&app, 80, 24));
}

#[test]
fn finding_detail_160x48() {
    let mut app = spin_app(true);
    app.update(key(KeyCode::Enter));
    insta::assert_snapshot!(screen(&app, 160, 48));
}

#[test]
fn finding_detail_names_the_related_findings() {
    let mut app = spin_app(true);
    app.update(opened(churn_after_retry()));
    let at = app
        .findings()
        .iter()
        .position(|f| f.id == 4)
        .expect("the churn finding is listed");
    app.update(key(KeyCode::Home));
    for _ in 0..at {
        app.update(key(KeyCode::Down));
    }
    app.update(key(KeyCode::Enter));
    assert_eq!(app.overlay(), Overlay::Finding { id: 4, scroll: 0 });
    let s = screen(&app, 160, 48);
    assert!(s.contains("Related"), "{s}");
    assert!(
        s.contains("#3") && s.contains("bad_write_retry (closed): 3 failed write retries"),
        "{s}"
    );
}

#[test]
fn help_80x24() {
    let mut app = spin_app(true);
    app.update(key(KeyCode::Char('?')));
    insta::assert_snapshot!(screen(&app, 80, 24));
}

#[test]
fn exited_paused_filtered_80x24() {
    let mut app = spin_app(true);
    app.update(Msg::TargetExit { pid: PID });
    app.update(key(KeyCode::Tab));
    app.update(key(KeyCode::Tab));
    app.update(key(KeyCode::Char('/')));
    typed(&mut app, "4244");
    app.update(key(KeyCode::Enter));
    app.update(key(KeyCode::Char('p')));
    insta::assert_snapshot!(screen(&app, 80, 24));
}

#[test]
fn an_exited_targets_rows_stay_as_they_were() {
    let mut app = spin_app(true);
    let before = (app.model().threads().len(), app.model().connections().len());
    assert_eq!(before, (3, 4));
    app.update(Msg::TargetExit { pid: PID });
    // The engine freed its connections and retired its threads.
    let mut empty = snapshot_at(NOW_NS + 1_000_000_000, 0);
    empty.processes.clear();
    empty.threads.clear();
    empty.connections.clear();
    app.update(Msg::Snapshot(Box::new(empty.clone())));
    app.update(Msg::Snapshot(Box::new(empty)));
    let m = app.model();
    assert_eq!((m.threads().len(), m.connections().len()), before);
    assert_eq!(m.comm(PID), Some("spin_server"));
    let text = screen(&app, 120, 36);
    assert!(text.contains("127.0.0.1:40512"), "{text}");
    assert!(!text.contains("No TLS connection"), "{text}");
}

#[test]
fn connections_gone_are_not_never_seen() {
    let mut app = spin_app(true);
    let mut empty = snapshot_at(NOW_NS + 1_000_000_000, 0);
    empty.connections.clear();
    app.update(Msg::Snapshot(Box::new(empty)));
    let text = screen(&app, 120, 36);
    assert!(text.contains("No TLS connection open now."), "{text}");
}

#[test]
fn finding_detail_shows_the_call_site() {
    use crate::engine::{CallSite, CallSites, Frame, SymbolSource};
    let frame = |object: &str, function: Option<&str>, offset: u64, line: Option<u32>| Frame {
        address: 0x5555_0000 + offset,
        object: object.to_owned(),
        object_address: 0x1000 + offset,
        function: function.map(str::to_owned),
        offset: function.map(|_| offset),
        file: line.map(|_| "/src/pump.c".to_owned()),
        line,
        symbols: if line.is_some() {
            SymbolSource::DebugInfo
        } else if function.is_some() {
            SymbolSource::Dynsym
        } else {
            SymbolSource::None
        },
    };
    let caller = frame("/usr/bin/pump", Some("pump_connection"), 0x15, Some(66));
    let mut f = spin();
    f.call_sites = Some(CallSites {
        samples: 8,
        sites: vec![CallSite {
            call: Some("SSL_read".to_owned()),
            caller: Some(caller.clone()),
            samples: 7,
            share_pct: 87.5,
            stack: vec![
                frame("/usr/lib/libssl.so.3", Some("SSL_read"), 0, None),
                caller,
                frame("/usr/bin/pump", None, 0x2a0, None),
            ],
        }],
        note: None,
    });
    let mut app = spin_app(true);
    app.update(Msg::Finding(Box::new(FindingChange {
        change: Change::Updated,
        finding: f,
    })));
    app.update(key(KeyCode::Enter));
    let s = screen(&app, 160, 60);
    for want in [
        "Where in the program",
        "SSL_read from pump_connection+0x15 at /src/pump.c:66 (88%), 7 of 8 sampled calls",
        "#0  SSL_read+0x0 in libssl.so.3",
        "#2  0x12a0 (no symbols for /usr/bin/pump (stripped)) in pump",
    ] {
        assert!(s.contains(want), "no {want:?} in:\n{s}");
    }
}
