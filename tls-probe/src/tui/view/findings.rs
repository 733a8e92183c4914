//! The findings panel: the worst open finding as a one-line headline, then every finding,
//! most severe first.

use ratatui::{
    Frame,
    layout::{Constraint, Layout, Rect},
    text::{Line, Span},
    widgets::{Cell, Paragraph, Row, Table, TableState, Wrap},
};

use super::{Ctx, fmt};
use crate::{engine::Finding, tui::Panel};

/// Rows the panel wants: its frame, the headline, the table's header and up to a few rows.
pub fn height(cx: &Ctx<'_>, body: Rect) -> u16 {
    let n = cx.app.findings().len();
    if n == 0 {
        return cx.chrome() + 1;
    }
    let rows = n.min(if cx.framed { 8 } else { 3 }) as u16;
    let inner_w = body.width.saturating_sub(if cx.framed { 2 } else { 0 });
    let headline = cx
        .app
        .top_finding()
        .map_or(1, |f| headline(f, cx, inner_w).len() as u16);
    (cx.chrome() + headline + 1 + rows).min(body.height / 2)
}

pub fn render(frame: &mut Frame, area: Rect, cx: &Ctx<'_>) {
    let (app, t) = (cx.app, cx.theme);
    let list = app.findings();
    let m = app.model();
    let open = m.open_findings().count();
    let mut title = vec![Span::raw("Findings")];
    if open > 0 {
        title.push(Span::styled(format!(" {open} open"), t.bad()));
    }
    title.push(Span::raw(cx.shown(list.len(), m.findings.len())));
    let block = cx.panel(title, Some(Panel::Findings));
    let inner = block.inner(area);
    frame.render_widget(block, area);

    if list.is_empty() {
        let what = if m.findings.is_empty() {
            match &m.snapshot {
                Some(s) => format!(
                    "No findings so far: {} threads, {} connections watched.",
                    s.threads.len(),
                    s.connections.len()
                ),
                None => "No findings yet.".to_owned(),
            }
        } else {
            "No finding matches the filter.".to_owned()
        };
        frame.render_widget(
            Paragraph::new(Span::styled(what, t.good())).wrap(Wrap { trim: true }),
            inner,
        );
        return;
    }

    let headline = match app.top_finding() {
        Some(f) => headline(f, cx, inner.width),
        None if !app.filter().is_empty() => vec![Line::from(Span::styled(
            "No open finding matches the filter.",
            t.dim(),
        ))],
        None => vec![Line::from(Span::styled(
            "No open findings: what was found has stopped.",
            t.good(),
        ))],
    };
    let [top, table] = Layout::vertical([
        Constraint::Length(headline.len() as u16),
        Constraint::Min(0),
    ])
    .areas(inner);
    frame.render_widget(Paragraph::new(headline), top);

    let rows = list.iter().map(|f| {
        let row = Row::new(vec![
            Cell::from(Span::styled(
                if f.is_open() {
                    fmt::severity(f.severity)
                } else {
                    "done"
                },
                t.severity(f.severity),
            )),
            Cell::from(fmt::kind(f.kind)),
            Cell::from(match f.tid {
                Some(tid) => format!("{}/{tid}", f.pid),
                None => f.pid.to_string(),
            }),
            Cell::from(f.fd.map_or("-".into(), |fd| fd.to_string())),
            Cell::from(f.peer.as_deref().unwrap_or("-")),
            Cell::from(fmt::span(m.now_ns.saturating_sub(f.first_seen_ns))),
            Cell::from(fmt::key_number(&f.evidence)),
        ]);
        if f.is_open() { row } else { row.style(t.dim()) }
    });
    let widths = [
        Constraint::Length(4),
        Constraint::Length(14),
        Constraint::Length(if cx.wide { 15 } else { 11 }),
        Constraint::Length(4),
        Constraint::Length(if cx.wide { 21 } else { 15 }),
        Constraint::Length(6),
        Constraint::Min(10),
    ];
    let header = Row::new([
        "SEV",
        "KIND",
        "PID/TID",
        "FD",
        "PEER",
        "SINCE",
        "KEY NUMBER",
    ])
    .style(t.table_header());
    let focused = app.focus() == Panel::Findings;
    let table_widget = Table::new(rows, widths)
        .header(header)
        .row_highlight_style(t.selected(focused));
    let mut state = TableState::default().with_selected(app.selected(Panel::Findings));
    frame.render_stateful_widget(table_widget, table, &mut state);
}

/// The worst open finding, made to be read first: what, how bad and why on the first line,
/// in the severity's colour; where on the next (or the same, when it fits in `width`); then,
/// when the terminal is tall, why it happens and what to do.
fn headline<'a>(f: &Finding, cx: &Ctx<'_>, width: u16) -> Vec<Line<'a>> {
    let t = cx.theme;
    let sev = t.severity(f.severity);
    let mut place = match f.tid {
        Some(tid) => format!("tid {tid} of pid {}", f.pid),
        None => format!("pid {}", f.pid),
    };
    if let Some(comm) = &f.comm {
        place += &format!(" ({comm})");
    }
    if let Some(fd) = f.fd {
        place += &format!(", fd {fd}");
    }
    if let Some(peer) = &f.peer {
        place += &format!(", peer {peer}");
    }
    let now = cx.app.model().now_ns;
    place += &format!(", for {}", fmt::span(now.saturating_sub(f.first_seen_ns)));
    let mut first = vec![
        Span::styled(
            format!(" {} ", fmt::severity_long(f.severity)),
            t.badge(f.severity),
        ),
        Span::styled(format!(" {}: ", fmt::kind(f.kind)), sev),
        Span::styled(fmt::key_number(&f.evidence), sev),
    ];
    let mut lines = Vec::new();
    let one_line = first.iter().map(Span::width).sum::<usize>() + 5 + place.chars().count();
    if one_line <= usize::from(width) {
        first.push(Span::styled(format!("  ·  {place}"), t.bold()));
        lines.push(Line::from(first));
    } else {
        lines.push(Line::from(first));
        lines.push(Line::from(Span::styled(format!("  {place}"), t.bold())));
    }
    if cx.framed {
        for (label, text) in [("  why ", &f.explanation), ("  fix ", &f.advice)] {
            lines.push(Line::from(vec![
                Span::styled(label, t.dim()),
                Span::raw(text.clone()),
            ]));
        }
    }
    lines
}
