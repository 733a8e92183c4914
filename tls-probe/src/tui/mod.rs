//! The live dashboard: a terminal UI over the engine's findings and snapshots.
//!
//! One owner of UI state. The agent sends [`Msg`]s over a channel; [`run`] applies each to
//! the [`App`] with [`App::update`] and draws with [`view::render`], which does no I/O. The
//! loop is generic over the ratatui [`Backend`], so tests drive it with a `TestBackend`.
//!
//! ```text
//! session ──Msg::{Header,Finding,Snapshot,TargetExit,Notice}──┐
//! input thread (crossterm) ──Msg::{Key,Resize}────────────────┼─> run: app.update(msg) -> view::render
//! frame interval (250 ms) ──Msg::Tick──────────────────────────┘
//! ```
//!
//! [`start_dashboard`] puts this on a real terminal: raw mode and the alternate screen behind
//! a guard that restores the terminal on every exit path, panics included.

mod app;
mod dashboard;
mod handshakes;
mod keys;
mod model;
mod terminal;
pub mod view;

#[cfg(test)]
pub(crate) mod fixtures;
#[cfg(test)]
mod tests;

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use crossterm::event::KeyEvent;
use ratatui::{Terminal, backend::Backend};
use tokio::sync::mpsc;

pub use self::{
    app::{App, Overlay, Panel},
    dashboard::{Dashboard, DashboardOptions, color_allowed, start_dashboard, wanted},
    handshakes::HandshakeView,
    keys::{Action, HELP},
    model::{ConnSort, Model, ThreadSort},
    terminal::{TerminalGuard, install_panic_hook, restore},
};
use crate::engine::{FindingChange, Snapshot};

/// How many messages may wait for the dashboard. The agent sends with `try_send` and never
/// waits on the UI; see [`Dashboard`].
pub const CHANNEL_CAPACITY: usize = 4096;

/// What the dashboard is told. Everything it shows arrives as one of these.
#[derive(Clone, Debug)]
pub enum Msg {
    /// Who is traced and how the probe is doing; about once a second.
    Header(HeaderInfo),
    /// A finding opened, changed or closed. Findings are kept by id, closed ones included.
    Finding(Box<FindingChange>),
    /// The engine's metrics; about once a second, more often is fine.
    Snapshot(Box<Snapshot>),
    /// A target process exited: shown in the header; its findings stay.
    TargetExit {
        pid: u32,
    },
    /// A line the headless agent would print on stderr (lost events, a detach); shown in the
    /// status line for a few seconds.
    Notice(String),
    Key(KeyEvent),
    /// The terminal was resized; the next draw adapts.
    Resize,
    /// The frame clock: CLOCK_MONOTONIC ns, the clock of every `*_ns` time the engine reports.
    Tick {
        now_ns: u64,
    },
}

/// The header's facts about the run, as the agent knows them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HeaderInfo {
    pub targets: Vec<TargetInfo>,
    /// "full" (per-call uprobes attached) or "light".
    pub probe_mode: String,
    /// CLOCK_MONOTONIC ns when the probes were attached.
    pub attached_ns: u64,
    pub events_per_sec: f64,
    /// Events lost so far, everywhere (ring buffer, in-flight state, decode).
    pub lost_total: u64,
    /// tls-probe's estimated cost to the targets, in percent of their CPU time.
    pub overhead_pct: Option<f64>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TargetInfo {
    pub pid: u32,
    pub comm: String,
    /// The TLS library as shown: a file name such as "libssl.so.3".
    pub library: String,
    pub library_version: Option<String>,
}

/// How [`run`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// The user quit (`q`, Ctrl-C).
    Quit,
    /// Every sender was dropped: the agent is done.
    Closed,
    /// The terminal was restored under us (a panic elsewhere): stop drawing.
    Halted,
}

pub struct RunOptions {
    /// Time between frames; the dashboard also draws on every key.
    pub frame_interval: Duration,
    /// The clock sent in `Msg::Tick`.
    pub clock: fn() -> u64,
    /// When set, the loop stops without drawing again.
    pub halt: Option<&'static AtomicBool>,
}

/// Most messages applied between two frames; the rest wait for the next turn of the loop,
/// so that a burst cannot starve the frames or the keys.
const MAX_BATCH: usize = 512;

/// The dashboard loop: applies messages to `app` and draws, at every frame interval and
/// after every key or resize, until the user quits or every sender is gone.
pub async fn run<B: Backend>(
    terminal: &mut Terminal<B>,
    app: &mut App,
    rx: &mut mpsc::Receiver<Msg>,
    opts: &RunOptions,
) -> Result<Exit, B::Error> {
    let mut frames = tokio::time::interval(opts.frame_interval);
    frames.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let halted = || opts.halt.is_some_and(|h| h.load(Ordering::Relaxed));
    loop {
        let draw_now = tokio::select! {
            msg = rx.recv() => {
                let Some(msg) = msg else { return Ok(Exit::Closed) };
                let mut urgent = is_input(&msg);
                app.update(msg);
                for _ in 0..MAX_BATCH {
                    let Ok(msg) = rx.try_recv() else { break };
                    urgent |= is_input(&msg);
                    app.update(msg);
                }
                urgent
            }
            _ = frames.tick() => {
                app.update(Msg::Tick { now_ns: (opts.clock)() });
                true
            }
        };
        if halted() {
            return Ok(Exit::Halted);
        }
        if app.should_quit() {
            return Ok(Exit::Quit);
        }
        if draw_now {
            terminal.draw(|f| view::render(f, app))?;
        }
    }
}

fn is_input(msg: &Msg) -> bool {
    matches!(msg, Msg::Key(_) | Msg::Resize)
}
