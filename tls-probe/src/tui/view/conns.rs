//! The connections panel: each SSL* with its socket, traffic and WANT_* answers. Sortable.

use ratatui::{
    Frame,
    layout::{Constraint, Rect},
    text::Span,
    widgets::{Cell, Paragraph, Row, Table, TableState},
};

use super::{Ctx, fmt};
use crate::tui::Panel;

pub fn render(frame: &mut Frame, area: Rect, cx: &Ctx<'_>) {
    let (app, t) = (cx.app, cx.theme);
    let m = app.model();
    let list = app.connections();
    let title = vec![
        Span::raw("Connections"),
        Span::raw(cx.shown(list.len(), m.connections().len())),
        Span::styled(format!(" by {}", app.conn_sort().name()), t.dim()),
    ];
    let block = cx.panel(title, Some(Panel::Connections));
    if list.is_empty() {
        let inner = block.inner(area);
        frame.render_widget(block, area);
        let text = if m.snapshot.is_none() {
            "Waiting for the first snapshot…"
        } else if !m.connections().is_empty() {
            "No connection matches the filter."
        } else if m.seen_connections {
            "No TLS connection open now."
        } else {
            "No TLS connection seen yet."
        };
        frame.render_widget(Paragraph::new(Span::styled(text, t.dim())), inner);
        return;
    }

    let mut header = vec![""];
    let mut widths = vec![Constraint::Length(1)];
    if cx.wide {
        header.push("PID/TID");
        widths.push(Constraint::Length(13));
    }
    header.extend([
        "FD", "SSL*", "PEER", "STATE", "IN", "OUT", "WANT_R", "WANT_W", "LAST",
    ]);
    widths.extend([
        Constraint::Length(4),
        Constraint::Length(if cx.wide { 14 } else { 6 }),
        Constraint::Length(if cx.wide { 21 } else { 15 }),
        Constraint::Length(11),
        Constraint::Length(5),
        Constraint::Length(5),
        Constraint::Length(6),
        Constraint::Length(6),
        Constraint::Length(6),
    ]);

    let rows = list.iter().map(|c| {
        let mark = match m.conn_severity(c) {
            Some(s) => Span::styled("!", t.severity(s)),
            None => Span::raw(" "),
        };
        let mut cells = vec![Cell::from(mark)];
        if cx.wide {
            cells.push(Cell::from(format!("{}/{}", c.pid, c.tid)));
        }
        let wants = |n: u64| {
            let text = fmt::count(n as f64);
            if n > 0 {
                Cell::from(Span::styled(text, t.warn()))
            } else {
                Cell::from(text)
            }
        };
        cells.extend([
            Cell::from(c.fd.map_or("-".into(), |fd| fd.to_string())),
            Cell::from(if cx.wide {
                format!("{:#x}", c.ssl)
            } else {
                fmt::short_ssl(c.ssl)
            }),
            Cell::from(c.peer.as_deref().unwrap_or("-").to_owned()),
            Cell::from(fmt::conn_state(c)),
            Cell::from(fmt::bytes(c.read_bytes_total)),
            Cell::from(fmt::bytes(c.written_bytes_total)),
            wants(c.want_read_total),
            wants(c.want_write_total),
            Cell::from(fmt::span(m.now_ns.saturating_sub(c.last_seen_ns))),
        ]);
        let row = Row::new(cells);
        if c.closed { row.style(t.dim()) } else { row }
    });
    let focused = app.focus() == Panel::Connections;
    let table = Table::new(rows, widths)
        .header(Row::new(header).style(t.table_header()))
        .block(block)
        .row_highlight_style(t.selected(focused));
    let mut state = TableState::default().with_selected(app.selected(Panel::Connections));
    frame.render_stateful_widget(table, area, &mut state);
}
