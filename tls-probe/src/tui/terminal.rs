//! The real terminal: raw mode and the alternate screen, always given back.
//!
//! [`TerminalGuard::enter`] takes the terminal; dropping the guard restores it, and so does
//! a panic anywhere in the process (the hook restores first, then prints the panic message
//! on the normal screen). [`restore`] is idempotent, so every path may call it.

use std::{
    io::{self, Stdout},
    sync::{
        Once,
        atomic::{AtomicBool, Ordering},
    },
};

use crossterm::{
    cursor, execute,
    terminal::{EnterAlternateScreen, LeaveAlternateScreen, disable_raw_mode, enable_raw_mode},
};
use ratatui::{Terminal, backend::CrosstermBackend};

/// The terminal is in raw mode on the alternate screen.
static ACTIVE: AtomicBool = AtomicBool::new(false);
/// A panic restored the terminal: the dashboard must not draw again.
static HALT: AtomicBool = AtomicBool::new(false);
static HOOK: Once = Once::new();

pub type CrosstermTerminal = Terminal<CrosstermBackend<Stdout>>;

/// Installs, once, a panic hook that restores the terminal before the previous hook prints.
pub fn install_panic_hook() {
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if ACTIVE.load(Ordering::SeqCst) {
                HALT.store(true, Ordering::SeqCst);
                let _ = restore();
            }
            previous(info);
        }));
    });
}

/// Leaves the alternate screen and raw mode, and shows the cursor; does nothing when the
/// terminal is not taken.
pub fn restore() -> io::Result<()> {
    if !ACTIVE.swap(false, Ordering::SeqCst) {
        return Ok(());
    }
    let raw = disable_raw_mode();
    let screen = execute!(io::stdout(), LeaveAlternateScreen, cursor::Show);
    raw.and(screen)
}

/// Set once a panic has restored the terminal under the dashboard.
pub(super) fn halted() -> &'static AtomicBool {
    &HALT
}

/// Owns the terminal while the dashboard is up; restores it when dropped.
pub struct TerminalGuard {
    terminal: CrosstermTerminal,
}

impl TerminalGuard {
    /// Enters raw mode and the alternate screen on stdout, hiding the cursor.
    pub fn enter() -> io::Result<Self> {
        install_panic_hook();
        enable_raw_mode()?;
        ACTIVE.store(true, Ordering::SeqCst);
        HALT.store(false, Ordering::SeqCst);
        let taken = execute!(io::stdout(), EnterAlternateScreen, cursor::Hide)
            .and_then(|()| Terminal::new(CrosstermBackend::new(io::stdout())))
            .and_then(|mut t| t.clear().map(|()| t));
        match taken {
            Ok(terminal) => Ok(Self { terminal }),
            Err(e) => {
                let _ = restore();
                Err(e)
            }
        }
    }

    pub fn terminal(&mut self) -> &mut CrosstermTerminal {
        &mut self.terminal
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        let _ = restore();
    }
}
