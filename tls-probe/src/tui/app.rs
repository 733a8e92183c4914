//! The dashboard's state: everything the view draws, changed only by [`App::update`].

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use super::{
    Msg,
    keys::{self, Action},
    model::{ConnSort, Model, ThreadSort, about_conn, keep_exited},
};
use crate::engine::{ConnSnapshot, Finding, ThreadSnapshot};

/// How long a notice stays in the status line.
const NOTICE_NS: u64 = 5_000_000_000;
/// Rows one PageUp/PageDown moves.
const PAGE: usize = 10;

/// The panels that Tab moves between, in order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Panel {
    #[default]
    Findings,
    Threads,
    Connections,
}

impl Panel {
    pub const ALL: [Panel; 3] = [Self::Findings, Self::Threads, Self::Connections];

    fn index(self) -> usize {
        self as usize
    }

    fn step(self, by: isize) -> Self {
        let n = Self::ALL.len() as isize;
        Self::ALL[(self.index() as isize + by).rem_euclid(n) as usize]
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Overlay {
    #[default]
    None,
    Help,
    /// One finding's evidence and advice, scrolled down by `scroll` lines.
    Finding {
        id: u64,
        scroll: u16,
    },
}

/// All UI state. The view reads it; only [`App::update`] changes it.
#[derive(Debug)]
pub struct App {
    live: Model,
    frozen: Option<Box<Model>>,
    focus: Panel,
    selected: [usize; 3],
    thread_sort: ThreadSort,
    conn_sort: ConnSort,
    filter: String,
    editing_filter: bool,
    overlay: Overlay,
    /// A line for the status bar, and the live clock until which it shows.
    notice: Option<(String, u64)>,
    color: bool,
    quit: bool,
}

impl App {
    /// `color`: whether styles may use colours (false under `NO_COLOR`).
    pub fn new(color: bool) -> Self {
        Self {
            live: Model::default(),
            frozen: None,
            focus: Panel::default(),
            selected: [0; 3],
            thread_sort: ThreadSort::default(),
            conn_sort: ConnSort::default(),
            filter: String::new(),
            editing_filter: false,
            overlay: Overlay::None,
            notice: None,
            color,
            quit: false,
        }
    }

    pub fn update(&mut self, msg: Msg) {
        let clock_was = self.live.now_ns;
        self.apply(msg);
        // A notice sent before the first clock (the agent's notices at start) counts its
        // time from when the clock starts, not from zero.
        if clock_was == 0
            && self.live.now_ns > 0
            && let Some((_, until)) = &mut self.notice
        {
            *until = self.live.now_ns + NOTICE_NS;
        }
    }

    fn apply(&mut self, msg: Msg) {
        let live = &mut self.live;
        match msg {
            Msg::Header(h) => live.header = h,
            Msg::Finding(change) => live.insert(change.finding),
            Msg::Snapshot(mut snap) => {
                live.now_ns = live.now_ns.max(snap.now_ns);
                live.handshakes.observe(&snap);
                if let Some(old) = &live.snapshot {
                    keep_exited(&live.exited, old, &mut snap);
                }
                live.seen_connections |= !snap.connections.is_empty();
                live.snapshot = Some(*snap);
            }
            Msg::TargetExit { pid } => {
                live.exited.insert(pid);
            }
            Msg::Notice(text) => self.notice = Some((text, live.now_ns + NOTICE_NS)),
            Msg::Key(key) => self.on_key(key),
            // The next draw takes the new size.
            Msg::Resize => {}
            Msg::Tick { now_ns } => live.now_ns = live.now_ns.max(now_ns),
        }
    }

    /// What the view draws: the live model, or the one frozen when paused.
    pub fn model(&self) -> &Model {
        self.frozen.as_deref().unwrap_or(&self.live)
    }

    pub fn paused(&self) -> bool {
        self.frozen.is_some()
    }

    pub fn should_quit(&self) -> bool {
        self.quit
    }

    pub fn color(&self) -> bool {
        self.color
    }

    pub fn focus(&self) -> Panel {
        self.focus
    }

    pub fn overlay(&self) -> Overlay {
        self.overlay
    }

    pub fn filter(&self) -> &str {
        &self.filter
    }

    pub fn editing_filter(&self) -> bool {
        self.editing_filter
    }

    pub fn thread_sort(&self) -> ThreadSort {
        self.thread_sort
    }

    pub fn conn_sort(&self) -> ConnSort {
        self.conn_sort
    }

    pub fn notice(&self) -> Option<&str> {
        let (text, until) = self.notice.as_ref()?;
        (self.live.now_ns < *until).then_some(text.as_str())
    }

    /// The selected row of a panel, within its current rows; None when it has none.
    pub fn selected(&self, panel: Panel) -> Option<usize> {
        let len = self.len(panel);
        (len > 0).then(|| self.selected[panel.index()].min(len - 1))
    }

    /// Findings, filtered; open before closed, most severe first.
    pub fn findings(&self) -> Vec<&Finding> {
        self.model().findings_by_severity(&self.filter_lc())
    }

    /// The finding the findings panel puts in its headline: the worst open one.
    pub fn top_finding(&self) -> Option<&Finding> {
        self.findings().into_iter().find(|f| f.is_open())
    }

    pub fn threads(&self) -> Vec<&ThreadSnapshot> {
        self.model()
            .threads_sorted(&self.filter_lc(), self.thread_sort)
    }

    pub fn connections(&self) -> Vec<&ConnSnapshot> {
        self.model()
            .connections_sorted(&self.filter_lc(), self.conn_sort)
    }

    fn len(&self, panel: Panel) -> usize {
        match panel {
            Panel::Findings => self.findings().len(),
            Panel::Threads => self.threads().len(),
            Panel::Connections => self.connections().len(),
        }
    }

    fn filter_lc(&self) -> String {
        self.filter.to_lowercase()
    }

    fn on_key(&mut self, key: KeyEvent) {
        if !keys::is_press(&key) {
            return;
        }
        if keys::is_ctrl_c(&key) {
            self.quit = true;
            return;
        }
        if self.editing_filter {
            self.edit_filter(key);
            return;
        }
        let Some(action) = keys::action(&key) else {
            return;
        };
        if action == Action::Quit {
            self.quit = true;
            return;
        }
        match self.overlay {
            Overlay::Help => self.overlay = Overlay::None,
            Overlay::Finding { id, scroll } => {
                let scroll = match action {
                    Action::Up => scroll.saturating_sub(1),
                    Action::Down => scroll.saturating_add(1),
                    Action::PageUp => scroll.saturating_sub(PAGE as u16),
                    Action::PageDown => scroll.saturating_add(PAGE as u16),
                    Action::Top => 0,
                    Action::Help => {
                        self.overlay = Overlay::Help;
                        return;
                    }
                    _ => {
                        self.overlay = Overlay::None;
                        return;
                    }
                };
                self.overlay = Overlay::Finding { id, scroll };
            }
            Overlay::None => self.act(action),
        }
    }

    fn edit_filter(&mut self, key: KeyEvent) {
        match key.code {
            KeyCode::Enter => self.editing_filter = false,
            KeyCode::Esc => {
                self.editing_filter = false;
                self.filter.clear();
            }
            KeyCode::Backspace => {
                self.filter.pop();
            }
            KeyCode::Char(c)
                if !key
                    .modifiers
                    .intersects(KeyModifiers::CONTROL | KeyModifiers::ALT) =>
            {
                self.filter.push(c);
            }
            _ => return,
        }
        self.selected = [0; 3];
    }

    fn act(&mut self, action: Action) {
        match action {
            Action::Quit => self.quit = true,
            Action::NextPanel => self.focus = self.focus.step(1),
            Action::PrevPanel => self.focus = self.focus.step(-1),
            Action::Up => self.move_by(-1),
            Action::Down => self.move_by(1),
            Action::PageUp => self.move_by(-(PAGE as isize)),
            Action::PageDown => self.move_by(PAGE as isize),
            Action::Top => self.selected[self.focus.index()] = 0,
            Action::Bottom => {
                self.selected[self.focus.index()] = self.len(self.focus).saturating_sub(1);
            }
            Action::Open => {
                if let Some(id) = self.finding_for_selection() {
                    self.overlay = Overlay::Finding { id, scroll: 0 };
                }
            }
            Action::Back => {
                self.filter.clear();
                self.selected = [0; 3];
            }
            Action::Filter => self.editing_filter = true,
            Action::CycleSort => self.cycle_sort(),
            Action::Pause => {
                self.frozen = match self.frozen {
                    Some(_) => None,
                    None => Some(Box::new(self.live.clone())),
                };
            }
            Action::Help => self.overlay = Overlay::Help,
        }
    }

    fn cycle_sort(&mut self) {
        let text = match self.focus {
            Panel::Findings => {
                "findings are ordered by severity; Tab to threads or connections to sort".into()
            }
            Panel::Threads => {
                self.thread_sort = self.thread_sort.next();
                format!("threads by {}", self.thread_sort.name())
            }
            Panel::Connections => {
                self.conn_sort = self.conn_sort.next();
                format!("connections by {}", self.conn_sort.name())
            }
        };
        self.notice = Some((text, self.live.now_ns + NOTICE_NS));
    }

    fn move_by(&mut self, by: isize) {
        let len = self.len(self.focus);
        let cur = self.selected(self.focus).unwrap_or(0);
        self.selected[self.focus.index()] =
            cur.saturating_add_signed(by).min(len.saturating_sub(1));
    }

    /// The finding Enter opens: the selected one, or the worst about the selected thread or
    /// connection.
    fn finding_for_selection(&self) -> Option<u64> {
        let worst = |pred: &dyn Fn(&Finding) -> bool| {
            self.findings().into_iter().find(|f| pred(f)).map(|f| f.id)
        };
        match self.focus {
            Panel::Findings => {
                let i = self.selected(Panel::Findings)?;
                self.findings().get(i).map(|f| f.id)
            }
            Panel::Threads => {
                let t = *self.threads().get(self.selected(Panel::Threads)?)?;
                worst(&|f| f.pid == t.pid && f.tid == Some(t.tid))
            }
            Panel::Connections => {
                let c = *self.connections().get(self.selected(Panel::Connections)?)?;
                worst(&|f| f.pid == c.pid && about_conn(f, c))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_notice_before_the_clock_starts_stays_for_its_time() {
        let mut app = App::new(false);
        app.update(Msg::Notice("serving metrics".into()));
        let start = 7_000_000_000_000;
        app.update(Msg::Tick { now_ns: start });
        assert_eq!(app.notice(), Some("serving metrics"));
        app.update(Msg::Tick {
            now_ns: start + NOTICE_NS + 1,
        });
        assert_eq!(app.notice(), None);
    }
}
