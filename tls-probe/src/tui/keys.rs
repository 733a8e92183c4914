//! Key bindings and the help text that lists them, side by side so they cannot drift.

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

/// What a key asks for, in the normal mode (not typing a filter).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Quit,
    NextPanel,
    PrevPanel,
    Up,
    Down,
    PageUp,
    PageDown,
    Top,
    Bottom,
    /// Opens the selected finding's evidence and advice.
    Open,
    /// Closes an overlay; clears the filter.
    Back,
    Filter,
    CycleSort,
    Pause,
    Help,
}

/// The help overlay: keys, then what they do.
pub const HELP: &[(&str, &str)] = &[
    ("q  Ctrl-C", "quit"),
    ("Tab  S-Tab", "next / previous panel"),
    ("j k  ↓ ↑", "move within the panel"),
    ("PgDn PgUp", "move a page"),
    ("g G  Home End", "first / last row"),
    ("Enter", "open the finding: evidence and advice"),
    ("Esc", "close; clear the filter"),
    ("/", "filter rows (pid, tid, fd, peer, kind)"),
    ("s", "cycle the sort of the panel"),
    ("p", "pause / resume the display"),
    ("?", "this help"),
];

pub fn is_ctrl_c(key: &KeyEvent) -> bool {
    key.modifiers.contains(KeyModifiers::CONTROL) && matches!(key.code, KeyCode::Char('c' | 'C'))
}

/// True for the key events to act on: presses and repeats, not releases.
pub fn is_press(key: &KeyEvent) -> bool {
    key.kind != KeyEventKind::Release
}

pub fn action(key: &KeyEvent) -> Option<Action> {
    if is_ctrl_c(key) {
        return Some(Action::Quit);
    }
    let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
    Some(match key.code {
        KeyCode::Char('q') => Action::Quit,
        KeyCode::Tab => Action::NextPanel,
        KeyCode::BackTab => Action::PrevPanel,
        KeyCode::Up | KeyCode::Char('k') => Action::Up,
        KeyCode::Down | KeyCode::Char('j') => Action::Down,
        KeyCode::PageUp => Action::PageUp,
        KeyCode::Char('b') if ctrl => Action::PageUp,
        KeyCode::PageDown => Action::PageDown,
        KeyCode::Char('f') if ctrl => Action::PageDown,
        KeyCode::Home | KeyCode::Char('g') => Action::Top,
        KeyCode::End | KeyCode::Char('G') => Action::Bottom,
        KeyCode::Enter => Action::Open,
        KeyCode::Esc => Action::Back,
        KeyCode::Char('/') => Action::Filter,
        KeyCode::Char('s') => Action::CycleSort,
        KeyCode::Char('p') => Action::Pause,
        KeyCode::Char('?') => Action::Help,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(code: KeyCode, modifiers: KeyModifiers) -> KeyEvent {
        KeyEvent::new(code, modifiers)
    }

    #[test]
    fn bindings() {
        let none = KeyModifiers::NONE;
        assert_eq!(action(&key(KeyCode::Char('q'), none)), Some(Action::Quit));
        assert_eq!(
            action(&key(KeyCode::Char('c'), KeyModifiers::CONTROL)),
            Some(Action::Quit)
        );
        assert_eq!(action(&key(KeyCode::Char('c'), none)), None);
        assert_eq!(action(&key(KeyCode::Char('j'), none)), Some(Action::Down));
        assert_eq!(action(&key(KeyCode::Up, none)), Some(Action::Up));
        assert_eq!(action(&key(KeyCode::Tab, none)), Some(Action::NextPanel));
        assert_eq!(
            action(&key(KeyCode::BackTab, KeyModifiers::SHIFT)),
            Some(Action::PrevPanel)
        );
        assert_eq!(action(&key(KeyCode::Char('?'), none)), Some(Action::Help));
    }
}
