//! The threads panel: how each event-loop thread spends its wake-ups and its CPU.

use ratatui::{
    Frame,
    layout::{Constraint, Rect},
    text::{Line, Span},
    widgets::{Cell, Paragraph, Row, Table, TableState},
};

use super::{Ctx, Theme, fmt};
use crate::{engine::ThreadSnapshot, tui::Panel};

/// The share bars, each a percentage of something per thread; a column shows once some
/// thread has a value. To add one (time in epoll_wait, in SSL I/O, in handshakes, when the
/// engine reports them), add a line here, e.g. `("EPOLL_WAIT", |t| t.epoll_wait_pct)`.
type Share = (&'static str, fn(&ThreadSnapshot) -> Option<f64>);
const SHARES: &[Share] = &[("NO PROGRESS", no_progress_pct)];

/// Of the wake-ups in the window, the share after which no SSL call made progress.
fn no_progress_pct(t: &ThreadSnapshot) -> Option<f64> {
    (t.wakeups_per_sec > 0.0)
        .then(|| (t.wakeups_no_progress_per_sec * 100.0 / t.wakeups_per_sec).min(100.0))
}

pub fn height(cx: &Ctx<'_>) -> u16 {
    let n = cx.app.threads().len().max(1);
    cx.chrome() + 1 + n.min(if cx.framed { 8 } else { 3 }) as u16
}

pub fn render(frame: &mut Frame, area: Rect, cx: &Ctx<'_>) {
    let (app, t) = (cx.app, cx.theme);
    let m = app.model();
    let list = app.threads();
    let title = vec![
        Span::raw("Threads"),
        Span::raw(cx.shown(list.len(), m.threads().len())),
        Span::styled(format!(" by {}", app.thread_sort().name()), t.dim()),
    ];
    let block = cx.panel(title, Some(Panel::Threads));
    if list.is_empty() {
        let inner = block.inner(area);
        frame.render_widget(block, area);
        let text = if m.snapshot.is_none() {
            "Waiting for the first snapshot…"
        } else {
            "No thread seen in an SSL call or epoll wait yet."
        };
        frame.render_widget(Paragraph::new(Span::styled(text, t.dim())), inner);
        return;
    }

    // Long bars need the width of a full-width panel: side by side at 120 columns (~74)
    // the row would cut the percentages off.
    let bar_w = if cx.wide && area.width >= 80 { 10 } else { 6 };
    let shares: Vec<&Share> = SHARES
        .iter()
        .filter(|(_, f)| list.iter().any(|th| f(th).is_some()))
        .collect();
    let mut header = vec!["", "PID/TID"];
    let mut widths = vec![Constraint::Length(1), Constraint::Length(13)];
    if cx.wide {
        header.push("COMM");
        widths.push(Constraint::Length(15));
    }
    header.extend(["CPU", "WAKE/S", "SSL/S"]);
    widths.extend([
        Constraint::Length(bar_w + 5),
        Constraint::Length(6),
        Constraint::Length(6),
    ]);
    for (name, _) in &shares {
        header.push(name);
        widths.push(Constraint::Length(bar_w + 5));
    }

    let rows = list.iter().map(|th| {
        let mark = match m.thread_severity(th.pid, th.tid) {
            Some(s) => Span::styled("!", t.severity(s)),
            None => Span::raw(" "),
        };
        let mut cells = vec![
            Cell::from(mark),
            Cell::from(format!("{}/{}", th.pid, th.tid)),
        ];
        if cx.wide {
            cells.push(Cell::from(m.comm(th.pid).unwrap_or("").to_owned()));
        }
        cells.push(bar_cell(th.cpu_pct, bar_w, t));
        cells.push(Cell::from(fmt::count(th.wakeups_per_sec)));
        cells.push(Cell::from(fmt::count(th.ssl_calls_per_sec)));
        for (_, f) in &shares {
            cells.push(bar_cell(f(th), bar_w, t));
        }
        Row::new(cells)
    });
    let focused = app.focus() == Panel::Threads;
    let table = Table::new(rows, widths)
        .header(Row::new(header).style(t.table_header()))
        .block(block)
        .row_highlight_style(t.selected(focused));
    let mut state = TableState::default().with_selected(app.selected(Panel::Threads));
    frame.render_stateful_widget(table, area, &mut state);
}

/// "████▌  45%" in the colour of its level; "n/a" when unknown.
fn bar_cell<'a>(pct: Option<f64>, width: u16, t: Theme) -> Cell<'a> {
    let Some(pct) = pct else {
        return Cell::from(Span::styled("n/a", t.dim()));
    };
    let style = t.level(pct);
    Cell::from(Line::from(vec![
        Span::styled(fmt::bar(pct, width as usize), style),
        Span::styled(format!(" {:>4}", format!("{pct:.0}%")), style),
    ]))
}
