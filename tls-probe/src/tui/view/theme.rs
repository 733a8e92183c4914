//! Styles. Colours are the terminal's own named ones (its palette, its background); without
//! colour (`NO_COLOR`) the same emphasis comes from bold, dim and reverse video.

use ratatui::style::{Color, Modifier, Style};

use crate::engine::Severity;

#[derive(Clone, Copy, Debug)]
pub struct Theme {
    color: bool,
}

impl Theme {
    pub fn new(color: bool) -> Self {
        Self { color }
    }

    fn pick(self, color: Style, plain: Style) -> Style {
        if self.color { color } else { plain }
    }

    fn severity_color(s: Severity) -> Color {
        match s {
            Severity::Critical => Color::Red,
            Severity::Warning => Color::Yellow,
            Severity::Info => Color::Cyan,
        }
    }

    /// Text about a finding of this severity.
    pub fn severity(self, s: Severity) -> Style {
        let plain = match s {
            Severity::Info => Style::new(),
            _ => Style::new().add_modifier(Modifier::BOLD),
        };
        self.pick(plain.fg(Self::severity_color(s)), plain)
    }

    /// A severity label that must be seen first: " CRITICAL ".
    pub fn badge(self, s: Severity) -> Style {
        let bold = Style::new().add_modifier(Modifier::BOLD);
        self.pick(
            bold.bg(Self::severity_color(s)).fg(Color::Black),
            bold.add_modifier(Modifier::REVERSED),
        )
    }

    /// A label in reverse video, colour or not: the program's name, PAUSED.
    pub fn badge_plain(self) -> Style {
        Style::new().add_modifier(Modifier::BOLD | Modifier::REVERSED)
    }

    pub fn dim(self) -> Style {
        self.pick(
            Style::new().fg(Color::DarkGray),
            Style::new().add_modifier(Modifier::DIM),
        )
    }

    pub fn bold(self) -> Style {
        Style::new().add_modifier(Modifier::BOLD)
    }

    pub fn good(self) -> Style {
        self.pick(Style::new().fg(Color::Green), Style::new())
    }

    pub fn warn(self) -> Style {
        self.pick(
            Style::new().fg(Color::Yellow),
            Style::new().add_modifier(Modifier::BOLD),
        )
    }

    pub fn bad(self) -> Style {
        self.pick(
            Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
            Style::new().add_modifier(Modifier::BOLD),
        )
    }

    /// A panel's border and title.
    pub fn border(self, focused: bool) -> Style {
        match (focused, self.color) {
            (true, true) => Style::new().fg(Color::Cyan),
            (true, false) => Style::new().add_modifier(Modifier::BOLD),
            (false, _) => self.dim(),
        }
    }

    pub fn title(self, focused: bool) -> Style {
        let s = Style::new().add_modifier(Modifier::BOLD);
        match (focused, self.color) {
            (true, true) => s.fg(Color::Cyan),
            _ => s,
        }
    }

    pub fn table_header(self) -> Style {
        self.dim().add_modifier(Modifier::BOLD)
    }

    /// The selected row: reverse video in the focused panel, underlined elsewhere.
    pub fn selected(self, focused: bool) -> Style {
        if focused {
            Style::new().add_modifier(Modifier::REVERSED)
        } else {
            Style::new().add_modifier(Modifier::UNDERLINED)
        }
    }

    /// A bar or number that is a share of something bad: calm, then worrying, then bad.
    pub fn level(self, pct: f64) -> Style {
        if pct >= 80.0 {
            self.bad()
        } else if pct >= 40.0 {
            self.warn()
        } else {
            self.good()
        }
    }
}
