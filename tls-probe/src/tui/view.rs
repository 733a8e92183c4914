//! Drawing: [`render`] lays out the header, the panels and the status line from an
//! [`App`], and does no I/O. Each panel is in a module of its own.

mod conns;
mod findings;
pub mod fmt;
mod handshakes;
mod overlay;
mod theme;
mod threads;

use ratatui::{
    Frame,
    layout::{Constraint, Layout, Rect},
    text::{Line, Span},
    widgets::{Block, Borders, Paragraph},
};

pub use self::theme::Theme;
use super::{App, Overlay, Panel};
use crate::sink::record::ProbeMode;

/// At least this wide, panels go side by side and tables show every column.
const WIDE: u16 = 120;
/// Below this height, panels are framed by a title line only, to leave room for rows.
const TALL: u16 = 40;

/// What every panel needs to draw itself.
#[derive(Clone, Copy)]
pub(super) struct Ctx<'a> {
    pub app: &'a App,
    pub theme: Theme,
    /// Full borders (tall terminals) or a title line only.
    pub framed: bool,
    pub wide: bool,
}

impl Ctx<'_> {
    /// The frame of a panel: its title, and whether it has the focus.
    pub fn panel<'a>(&self, title: Vec<Span<'a>>, panel: Option<Panel>) -> Block<'a> {
        let focused = panel.is_some_and(|p| p == self.app.focus());
        let mut spans = vec![Span::raw(" ")];
        spans.extend(title);
        spans.push(Span::raw(" "));
        Block::new()
            .borders(if self.framed {
                Borders::ALL
            } else {
                Borders::TOP
            })
            .border_style(self.theme.border(focused))
            .title(Line::from(spans).style(self.theme.title(focused)))
    }

    /// Rows a panel's frame takes.
    pub fn chrome(&self) -> u16 {
        if self.framed { 2 } else { 1 }
    }

    /// " (3 of 10)" when a filter hides rows.
    pub fn shown(&self, shown: usize, total: usize) -> String {
        if shown == total {
            String::new()
        } else {
            format!(" ({shown} of {total} shown)")
        }
    }
}

/// Draws one frame.
pub fn render(frame: &mut Frame, app: &App) {
    let area = frame.area();
    let cx = Ctx {
        app,
        theme: Theme::new(app.color()),
        framed: area.height >= TALL,
        wide: area.width >= WIDE,
    };
    let [header, body, status] = Layout::vertical([
        Constraint::Length(2),
        Constraint::Min(0),
        Constraint::Length(1),
    ])
    .areas(area);
    self::header(frame, header, &cx);

    let findings_h = findings::height(&cx, body);
    let threads_h = threads::height(&cx);
    if cx.wide {
        let middle_h = threads_h.max(handshakes::height(&cx));
        let [f, middle, c] = Layout::vertical([
            Constraint::Length(findings_h),
            Constraint::Length(middle_h),
            Constraint::Min(0),
        ])
        .areas(body);
        let [t, h] = Layout::horizontal([Constraint::Percentage(62), Constraint::Percentage(38)])
            .areas(middle);
        findings::render(frame, f, &cx);
        threads::render(frame, t, &cx);
        handshakes::render(frame, h, &cx);
        conns::render(frame, c, &cx);
    } else {
        let [f, t, c, h] = Layout::vertical([
            Constraint::Length(findings_h),
            Constraint::Length(threads_h),
            Constraint::Min(0),
            Constraint::Length(handshakes::height(&cx)),
        ])
        .areas(body);
        findings::render(frame, f, &cx);
        threads::render(frame, t, &cx);
        conns::render(frame, c, &cx);
        handshakes::render(frame, h, &cx);
    }
    self::status(frame, status, &cx);

    match app.overlay() {
        Overlay::None => {}
        Overlay::Help => overlay::help(frame, body, &cx),
        Overlay::Finding { id, scroll } => overlay::finding(frame, body, &cx, id, scroll),
    }
}

/// Two lines: who is traced and since when; how the probe is doing.
fn header(frame: &mut Frame, area: Rect, cx: &Ctx<'_>) {
    let (m, t) = (cx.app.model(), cx.theme);
    let h = &m.header;
    let label = |s: &'static str| Span::styled(s, t.dim());
    let sep = || Span::styled("  │ ", t.dim());

    // Paused shows where the eye starts.
    let badge = if cx.app.paused() {
        " PAUSED "
    } else {
        " tls-probe "
    };
    let mut first = vec![Span::styled(badge, t.badge_plain()), Span::raw(" ")];
    if h.targets.is_empty() {
        first.push(Span::styled("attaching…", t.dim()));
    }
    for (i, target) in h.targets.iter().enumerate() {
        if i > 0 {
            first.push(Span::raw(", "));
        }
        first.push(label("pid "));
        first.push(Span::styled(target.pid.to_string(), t.bold()));
        first.push(Span::raw(format!(" {}", target.comm)));
        if m.exited.contains(&target.pid) {
            first.push(Span::styled(" EXITED", t.bad()));
        } else if h.targets.len() == 1 || cx.wide {
            let version = target
                .library_version
                .as_deref()
                .map_or_else(String::new, |v| format!(" {v}"));
            first.push(Span::styled(
                format!(" ({}{version})", target.library),
                t.dim(),
            ));
        }
    }
    first.extend([sep(), label("mode "), Span::raw(h.probe_mode.clone())]);
    // In auto mode, which processes have their per-call probes on now.
    if let Some(p) = m.snapshot.as_ref().and_then(|s| s.probes.as_ref())
        && p.mode == ProbeMode::Auto
    {
        let on = p.processes.iter().filter(|p| p.per_call).count();
        first.push(if on > 0 {
            Span::styled(
                format!(" (per-call on: {on}/{})", p.processes.len()),
                t.warn(),
            )
        } else {
            Span::styled(" (per-call off)", t.dim())
        });
    }
    first.extend([
        sep(),
        label("up "),
        Span::raw(fmt::clock(m.now_ns.saturating_sub(h.attached_ns))),
    ]);

    let open = m.open_findings().count();
    let closed = m.findings.len() - open;
    let mut second = vec![
        label(" events "),
        Span::raw(format!("{}/s", fmt::count(h.events_per_sec))),
        sep(),
        label("lost "),
        Span::styled(
            fmt::count(h.lost_total as f64),
            if h.lost_total > 0 { t.warn() } else { t.good() },
        ),
        sep(),
        label("overhead "),
        Span::raw(
            h.overhead_pct
                .map_or("n/a".into(), |p| format!("~{}%", fmt::count(p))),
        ),
    ];
    if cx.wide && h.overhead_pct.is_some() {
        second.push(label(" of target CPU"));
    }
    // Outside full mode the socket I/O tracepoints come and go with what they can tell.
    if cx.wide
        && let Some(io) = m
            .snapshot
            .as_ref()
            .and_then(|s| s.probes.as_ref())
            .and_then(|p| p.socket_io.as_ref())
    {
        let state = match (io.attached, io.sampled) {
            (true, true) => "sampled (on)",
            (false, true) => "sampled (off)",
            (true, false) => "on",
            (false, false) => "off",
        };
        second.extend([sep(), label("socket I/O "), Span::raw(state)]);
    }
    second.extend([
        sep(),
        label("findings "),
        Span::styled(
            format!("{open} open"),
            if open > 0 { t.bad() } else { t.good() },
        ),
    ]);
    if closed > 0 {
        second.push(Span::styled(format!(", {closed} closed"), t.dim()));
    }
    frame.render_widget(
        Paragraph::new(vec![Line::from(first), Line::from(second)]),
        area,
    );
}

/// The last line: the filter being typed, a notice, or the keys.
fn status(frame: &mut Frame, area: Rect, cx: &Ctx<'_>) {
    let (app, t) = (cx.app, cx.theme);
    let line = if app.editing_filter() {
        Line::from(vec![
            Span::styled(" filter: ", t.bold()),
            Span::raw(app.filter().to_owned()),
            Span::styled("▏", t.bold()),
            Span::styled("   Enter keep  Esc clear", t.dim()),
        ])
    } else if let Some(notice) = app.notice() {
        Line::from(Span::styled(format!(" {notice}"), t.warn()))
    } else {
        let mut spans = Vec::new();
        if !app.filter().is_empty() {
            spans.push(Span::styled(" filter ", t.bold()));
            spans.push(Span::styled(app.filter().to_owned(), t.warn()));
            spans.push(Span::styled(" (Esc clears) │", t.dim()));
        }
        for (key, what) in [
            ("q", "quit"),
            ("?", "help"),
            ("Enter", "details"),
            ("Tab", "panel"),
            ("↑↓", "move"),
            ("/", "filter"),
            ("s", "sort"),
            ("p", "pause"),
        ] {
            spans.push(Span::styled(format!(" {key}"), t.bold()));
            spans.push(Span::styled(format!(" {what} "), t.dim()));
        }
        Line::from(spans)
    };
    frame.render_widget(Paragraph::new(line), area);
}
