//! The handshakes panel: the rate as a sparkline, full versus resumed, and latency.

use ratatui::{
    Frame,
    layout::{Constraint, Layout, Rect},
    text::{Line, Span},
    widgets::{Paragraph, Sparkline},
};

use super::{Ctx, fmt};

/// Sparkline rows when the terminal is tall.
const SPARK_ROWS: u16 = 4;

pub fn height(cx: &Ctx<'_>) -> u16 {
    if cx.framed {
        cx.chrome() + 2 + SPARK_ROWS
    } else {
        cx.chrome() + 1
    }
}

pub fn render(frame: &mut Frame, area: Rect, cx: &Ctx<'_>) {
    let (m, t) = (cx.app.model(), cx.theme);
    let h = &m.handshakes;
    let block = cx.panel(vec![Span::raw("Handshakes")], None);
    let inner = block.inner(area);
    frame.render_widget(block, area);

    let na = || Span::styled("n/a", t.dim());
    let num = |v: Option<u64>| v.map_or_else(na, |v| Span::raw(fmt::count(v as f64)));
    let lat = |v: Option<u64>| v.map_or_else(na, |v| Span::raw(fmt::latency(v)));
    let label = |s: &'static str| Span::styled(s, t.dim());
    let rate = vec![
        label("rate "),
        h.rate().map_or_else(na, |r| {
            Span::styled(format!("{}/s", fmt::count(r as f64)), t.bold())
        }),
        label("  total "),
        Span::raw(fmt::count(h.total as f64)),
    ];
    let split = vec![
        label("full "),
        num(h.full),
        label("  resumed "),
        num(h.resumed),
        label("  p50 "),
        lat(h.p50_ns),
        label("  p99 "),
        lat(h.p99_ns),
    ];
    let mut rate = rate;
    if let Some(v) = &h.version {
        rate.push(Span::raw("  "));
        rate.push(Span::raw(v.clone()));
    }
    if let Some(c) = &h.cipher {
        rate.push(Span::raw(" "));
        rate.push(Span::styled(c.clone(), t.dim()));
    }
    let spark_data: Vec<u64> = {
        let n = inner.width as usize;
        let from = h.rate_history.len().saturating_sub(n);
        h.rate_history[from..].to_vec()
    };

    if cx.framed {
        let [text, spark] =
            Layout::vertical([Constraint::Length(2), Constraint::Min(0)]).areas(inner);
        frame.render_widget(
            Paragraph::new(vec![Line::from(rate), Line::from(split)]),
            text,
        );
        frame.render_widget(
            Sparkline::default().data(&spark_data).style(t.good()),
            spark,
        );
    } else {
        // One line: the numbers, then the sparkline in what is left.
        let mut spans = rate;
        spans.push(Span::raw("  "));
        spans.extend(split);
        let line = Line::from(spans);
        let text_w = (line.width() as u16 + 2).min(inner.width);
        let [text, spark] =
            Layout::horizontal([Constraint::Length(text_w), Constraint::Min(0)]).areas(inner);
        frame.render_widget(Paragraph::new(line), text);
        let n = spark.width as usize;
        let from = spark_data.len().saturating_sub(n);
        frame.render_widget(
            Sparkline::default()
                .data(&spark_data[from..])
                .style(t.good()),
            spark,
        );
    }
}
