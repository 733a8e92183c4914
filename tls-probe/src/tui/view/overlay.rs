//! Boxes drawn over the panels: the help, and one finding in full.

use ratatui::{
    Frame,
    layout::{Constraint, Rect},
    text::{Line, Span},
    widgets::{Block, Borders, Clear, Paragraph, Wrap},
};
use serde_json::Value;

use super::{Ctx, fmt};
use crate::{
    engine::{Evidence, Finding},
    tui::keys::HELP,
};

fn boxed<'a>(frame: &mut Frame, area: Rect, cx: &Ctx<'_>, title: Line<'a>) -> (Rect, Block<'a>) {
    frame.render_widget(Clear, area);
    let block = Block::new()
        .borders(Borders::ALL)
        .border_style(cx.theme.border(true))
        .title(title)
        .title_bottom(
            Line::from(Span::styled(" ↑↓ scroll  Esc close ", cx.theme.dim())).right_aligned(),
        );
    (block.inner(area), block)
}

pub fn help(frame: &mut Frame, body: Rect, cx: &Ctx<'_>) {
    let t = cx.theme;
    let key_w = HELP
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0);
    let mut lines: Vec<Line> = HELP
        .iter()
        .map(|(k, what)| {
            Line::from(vec![
                Span::styled(format!(" {k:<key_w$}  "), t.bold()),
                Span::raw(*what),
            ])
        })
        .collect();
    lines.push(Line::raw(""));
    lines.push(Line::from(Span::styled(
        " ! marks a thread or connection with an open finding.",
        t.dim(),
    )));
    lines.push(Line::from(Span::styled(
        " overhead: the probes' estimated share of the targets' CPU",
        t.dim(),
    )));
    let h = (lines.len() as u16 + 2).min(body.height);
    let area = body.centered(
        Constraint::Length(60.min(body.width)),
        Constraint::Length(h),
    );
    let (_, block) = boxed(frame, area, cx, Line::from(" Keys ").style(t.title(true)));
    frame.render_widget(Paragraph::new(lines).block(block), area);
}

pub fn finding(frame: &mut Frame, body: Rect, cx: &Ctx<'_>, id: u64, scroll: u16) {
    let t = cx.theme;
    let m = cx.app.model();
    let Some(f) = m.findings.get(&id) else {
        return;
    };
    // Narrow terminals give it every column; wide ones a readable measure.
    let width = if body.width < 100 {
        body.width
    } else {
        (body.width - 4).min(110)
    };
    let area = body.centered(Constraint::Length(width), Constraint::Length(body.height));
    let title = Line::from(vec![
        Span::raw(" "),
        Span::styled(
            format!(" {} ", fmt::severity_long(f.severity)),
            t.badge(f.severity),
        ),
        Span::styled(format!(" {} ", fmt::kind(f.kind)), t.severity(f.severity)),
        Span::raw(if f.is_open() { "open " } else { "closed " }),
    ]);
    let (_, block) = boxed(frame, area, cx, title);
    frame.render_widget(
        Paragraph::new(detail_lines(f, cx))
            .block(block)
            .wrap(Wrap { trim: false })
            .scroll((scroll, 0)),
        area,
    );
}

fn detail_lines<'a>(f: &Finding, cx: &Ctx<'_>) -> Vec<Line<'a>> {
    let (t, now) = (cx.theme, cx.app.model().now_ns);
    let heading = |s: &'static str| Line::from(Span::styled(s, t.bold()));
    let mut place = format!("pid {}", f.pid);
    if let Some(comm) = &f.comm {
        place += &format!(" ({comm})");
    }
    if let Some(tid) = f.tid {
        place += &format!("  tid {tid}");
    }
    if let Some(fd) = f.fd {
        place += &format!("  fd {fd}");
    }
    if let Some(ssl) = f.ssl {
        place += &format!("  SSL* {ssl:#x}");
    }
    if let Some(peer) = &f.peer {
        place += &format!("  peer {peer}");
    }
    let mut when = format!(
        "since {} ago, last seen {} ago",
        fmt::span(now.saturating_sub(f.first_seen_ns)),
        fmt::span(now.saturating_sub(f.last_seen_ns))
    );
    if let Some(closed) = f.closed_ns {
        when += &format!(", closed {} ago", fmt::span(now.saturating_sub(closed)));
    }
    let mut lines = vec![
        Line::raw(place),
        Line::from(Span::styled(when, t.dim())),
        Line::raw(""),
        Line::from(Span::styled(
            fmt::key_number(&f.evidence),
            t.severity(f.severity),
        )),
    ];
    if let Some(peak) = f.peak.as_ref().filter(|p| p.evidence != f.evidence) {
        lines.push(Line::from(Span::styled(
            format!(
                "peak {} ago: {}",
                fmt::span(now.saturating_sub(peak.ts_ns)),
                fmt::key_number(&peak.evidence)
            ),
            t.dim(),
        )));
    }
    lines.extend([
        Line::raw(""),
        heading("Why"),
        Line::raw(f.explanation.clone()),
        Line::raw(""),
        heading("What to do"),
        Line::raw(f.advice.clone()),
        Line::raw(""),
    ]);
    if let Some(cs) = &f.call_sites {
        lines.push(heading("Where in the program (sampled stacks)"));
        lines.extend(cs.lines().into_iter().map(Line::raw));
        lines.push(Line::raw(""));
    }
    lines.push(heading("Evidence"));
    lines.extend(evidence_lines(f).into_iter().map(|(k, v)| {
        Line::from(vec![
            Span::styled(format!("  {k:<26}"), t.dim()),
            Span::raw(v),
        ])
    }));
    let related = related_ids(f);
    if !related.is_empty() {
        lines.extend([Line::raw(""), heading("Related")]);
        let findings = &cx.app.model().findings;
        lines.extend(related.into_iter().map(|id| {
            let what = findings.get(&id).map_or_else(
                || "no longer kept".to_owned(),
                |r| {
                    format!(
                        "{} ({}): {}",
                        r.kind,
                        if r.is_open() { "open" } else { "closed" },
                        fmt::key_number(&r.evidence)
                    )
                },
            );
            Line::from(vec![
                Span::styled(format!("  #{id:<25}"), t.dim()),
                Span::raw(what),
            ])
        }));
    }
    lines
}

/// The findings this one links to: a bad_write_retry and the connection_churn its
/// reconnects are part of, either way.
fn related_ids(f: &Finding) -> Vec<u64> {
    match &f.evidence {
        Evidence::BadWriteRetry(e) => e.related_finding_ids.clone(),
        Evidence::ConnectionChurn(e) => e.related_finding_ids.clone(),
        _ => Vec::new(),
    }
}

/// The evidence's fields by name, from its serialized form, so that every field the engine
/// adds shows without a change here. Unknown (null) fields are left out.
fn evidence_lines(f: &Finding) -> Vec<(String, String)> {
    let Ok(Value::Object(outer)) = serde_json::to_value(&f.evidence) else {
        return Vec::new();
    };
    let Some((_, Value::Object(fields))) = outer.into_iter().next() else {
        return Vec::new();
    };
    fields
        .into_iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| {
            let text = match v {
                Value::Number(n) if k.ends_with("_ns") => {
                    n.as_u64().map_or(n.to_string(), fmt::latency)
                }
                Value::Number(n) => match n.as_f64() {
                    Some(x) if n.is_f64() => format!("{x:.1}"),
                    _ => n.to_string(),
                },
                Value::String(s) => s,
                other => other.to_string(),
            };
            (k, text)
        })
        .collect()
}
