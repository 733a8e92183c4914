//! The dashboard on the real terminal, on a thread of its own, fed by the agent.
//!
//! The agent calls [`start_dashboard`] once its targets are attached, sends what it learns
//! through the returned [`Dashboard`] (never waiting on the UI), selects on
//! [`Dashboard::stopped`] to stop when the user quits, and drops the dashboard (or calls
//! [`Dashboard::finish`]) before it prints anything: the terminal is restored then.
//!
//! While the dashboard is up, log output is off (it would scribble on the screen); the level
//! comes back when the dashboard stops.

use std::{
    future::Future,
    io::{self, IsTerminal},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use crossterm::event::{self, Event};
use log::LevelFilter;
use tokio::sync::{
    mpsc::{self, WeakSender, error::TrySendError},
    watch,
};

use super::{
    App, CHANNEL_CAPACITY, Exit, HeaderInfo, Msg, RunOptions, run,
    terminal::{self, TerminalGuard},
};
use crate::engine::{FindingChange, Snapshot};

/// How often the input thread looks up from waiting for a key to check it should stop.
const INPUT_POLL: Duration = Duration::from_millis(100);

#[derive(Clone, Debug)]
pub struct DashboardOptions {
    /// Whether to draw in colour; `None` follows `NO_COLOR`.
    pub color: Option<bool>,
    /// Time between frames (the dashboard also draws on every key).
    pub frame_interval: Duration,
    /// The clock of the records' `*_ns` times (CLOCK_MONOTONIC), which the caller owns: the
    /// dashboard shows ages against it.
    pub clock: fn() -> u64,
}

impl DashboardOptions {
    /// Colour as `NO_COLOR` says, four frames a second.
    pub fn new(clock: fn() -> u64) -> Self {
        Self {
            color: None,
            frame_interval: Duration::from_millis(250),
            clock,
        }
    }
}

/// True unless `NO_COLOR` is set to a non-empty value (<https://no-color.org>).
pub fn color_allowed() -> bool {
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Whether `attach` should open the dashboard: not `--no-tui`, stdout not claimed by other
/// output (`-o -`, `--events` lines), and stdout a terminal.
pub fn wanted(no_tui: bool, stdout_claimed: bool) -> bool {
    !no_tui && !stdout_claimed && io::stdout().is_terminal()
}

/// The agent's end of a running dashboard. Dropping it stops the dashboard and restores the
/// terminal, as [`Dashboard::finish`] does.
pub struct Dashboard {
    tx: Option<mpsc::Sender<Msg>>,
    thread: Option<JoinHandle<io::Result<Exit>>>,
    /// Changes never; closes when the dashboard thread ends (after restoring the terminal).
    stopped: watch::Receiver<()>,
    /// The log level to put back when the dashboard stops.
    log_level: LevelFilter,
}

/// Takes the terminal (raw mode, alternate screen) and starts the dashboard on its own
/// thread. Fails, with the terminal untouched, when stdout is not a terminal.
pub fn start_dashboard(opts: DashboardOptions) -> io::Result<Dashboard> {
    let (tx, mut rx) = mpsc::channel(CHANNEL_CAPACITY);
    let keys = tx.downgrade();
    let color = opts.color.unwrap_or_else(color_allowed);
    let (done, stopped) = watch::channel(());
    let mut guard = TerminalGuard::enter()?;
    let log_level = log::max_level();
    log::set_max_level(LevelFilter::Off);
    let spawned = std::thread::Builder::new()
        .name("tls-probe-tui".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()?;
            let stop = Arc::new(AtomicBool::new(false));
            let input = spawn_input(keys, Arc::clone(&stop))?;
            let mut app = App::new(color);
            let run_opts = RunOptions {
                frame_interval: opts.frame_interval,
                clock: opts.clock,
                halt: Some(terminal::halted()),
            };
            let result = rt.block_on(run(guard.terminal(), &mut app, &mut rx, &run_opts));
            stop.store(true, Ordering::Relaxed);
            // Restore before the agent learns we are gone, so that what it prints next
            // lands on the normal screen.
            drop(guard);
            drop(done);
            drop(rx);
            let _ = input.join();
            result
        });
    let thread = match spawned {
        Ok(thread) => thread,
        // The closure, and the guard in it, were dropped: the terminal is restored.
        Err(e) => {
            log::set_max_level(log_level);
            return Err(e);
        }
    };
    Ok(Dashboard {
        tx: Some(tx),
        thread: Some(thread),
        stopped,
        log_level,
    })
}

impl Dashboard {
    /// Sends without waiting. A full queue drops the message (the UI is stuck; the next
    /// header or snapshot replaces it). False once the dashboard has stopped.
    pub fn send(&self, msg: Msg) -> bool {
        match self.tx.as_ref().map(|tx| tx.try_send(msg)) {
            Some(Ok(())) | Some(Err(TrySendError::Full(_))) => true,
            Some(Err(TrySendError::Closed(_))) | None => false,
        }
    }

    pub fn header(&self, header: HeaderInfo) -> bool {
        self.send(Msg::Header(header))
    }

    pub fn finding(&self, change: &FindingChange) -> bool {
        self.send(Msg::Finding(Box::new(change.clone())))
    }

    pub fn snapshot(&self, snapshot: Snapshot) -> bool {
        self.send(Msg::Snapshot(Box::new(snapshot)))
    }

    pub fn target_exit(&self, pid: u32) -> bool {
        self.send(Msg::TargetExit { pid })
    }

    pub fn notice(&self, text: impl Into<String>) -> bool {
        self.send(Msg::Notice(text.into()))
    }

    /// A sender for other producers; it keeps the dashboard open while it lives.
    pub fn sender(&self) -> Option<mpsc::Sender<Msg>> {
        self.tx.clone()
    }

    /// Resolves once the dashboard has stopped: the user quit, or drawing failed. The
    /// terminal is already restored then.
    pub async fn closed(&self) {
        if let Some(tx) = &self.tx {
            tx.closed().await;
        }
    }

    /// Resolves once the dashboard has stopped, like [`Dashboard::closed`], but borrows
    /// nothing and keeps nothing open: a run loop can hold it while the dashboard itself is
    /// owned elsewhere (a sink).
    pub fn stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.stopped.clone();
        async move { while rx.changed().await.is_ok() {} }
    }

    pub fn is_closed(&self) -> bool {
        self.tx.as_ref().is_none_or(|tx| tx.is_closed())
    }

    /// Stops the dashboard and waits for it; the terminal is restored when this returns.
    /// Returns how it ended, or why drawing failed.
    pub fn finish(mut self) -> io::Result<Exit> {
        self.stop()
    }

    fn stop(&mut self) -> io::Result<Exit> {
        self.tx = None;
        let Some(thread) = self.thread.take() else {
            return Ok(Exit::Closed);
        };
        let result = thread
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the dashboard thread panicked")));
        // Whatever happened on that thread, the terminal is ours again.
        let _ = terminal::restore();
        log::set_max_level(self.log_level);
        result
    }

    /// A dashboard with no terminal and no thread: what it is sent arrives on the receiver.
    #[cfg(test)]
    pub(crate) fn detached() -> (Self, mpsc::Receiver<Msg>) {
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        let (_, stopped) = watch::channel(());
        let dash = Self {
            tx: Some(tx),
            thread: None,
            stopped,
            log_level: log::max_level(),
        };
        (dash, rx)
    }
}

impl Drop for Dashboard {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// Reads keys and resizes on a thread, forwarding them into the dashboard's queue. Holds
/// only a weak sender, so that the queue closes when the agent lets go of it.
fn spawn_input(tx: WeakSender<Msg>, stop: Arc<AtomicBool>) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("tls-probe-keys".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match event::poll(INPUT_POLL) {
                    Ok(true) => {}
                    Ok(false) => continue,
                    Err(_) => break,
                }
                let msg = match event::read() {
                    Ok(Event::Key(key)) => Msg::Key(key),
                    Ok(Event::Resize(..)) => Msg::Resize,
                    Ok(_) => continue,
                    Err(_) => break,
                };
                let Some(tx) = tx.upgrade() else { break };
                if tx.blocking_send(msg).is_err() {
                    break;
                }
            }
        })
}
