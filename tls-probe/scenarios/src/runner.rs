//! Runs a scenario's threads through the same three steps: set up, announce (READY),
//! wait for the start (after stdin with --wait-stdin), run to the deadline, report (DONE).
//!
//! Each thread sets up its connections, then calls [`Ctl::ready`] with its fds; that
//! blocks until every thread is ready, READY is printed and the gate opens, and returns
//! the deadline. The thread then runs its load and returns its [`Counts`].

use std::{
    io::BufRead,
    os::fd::RawFd,
    sync::{Arc, Condvar, Mutex, mpsc},
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::Context;

use super::{
    report::{self, Counts, Done, Ready, ThreadDone, ThreadInfo},
    sys,
};

/// How long threads may take to set up before the scenario gives up.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);

/// When the load starts and stops, shared by every thread once the gate opens.
#[derive(Clone, Copy, Debug)]
pub struct Window {
    pub start: Instant,
    pub deadline: Instant,
}

impl Window {
    pub fn done(&self) -> bool {
        Instant::now() >= self.deadline
    }

    /// The instant a fraction of the way through (e.g. 0.5 for the middle).
    pub fn at(&self, fraction: f64) -> Instant {
        self.start + (self.deadline - self.start).mul_f64(fraction)
    }
}

#[derive(Default)]
struct Gate {
    window: Mutex<Option<Window>>,
    opened: Condvar,
}

impl Gate {
    fn open(&self, window: Window) {
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        *w = Some(window);
        self.opened.notify_all();
    }

    fn wait(&self) -> Window {
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(window) = *w {
                return window;
            }
            w = self.opened.wait(w).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// A thread's handle on the runner.
pub struct Ctl {
    index: usize,
    role: String,
    tx: mpsc::Sender<(usize, ThreadInfo)>,
    gate: Arc<Gate>,
}

impl Ctl {
    /// Announces this thread's connections of interest and blocks until the load starts.
    pub fn ready(&self, fds: Vec<RawFd>, ssl: Vec<u64>) -> Window {
        let info = ThreadInfo {
            role: self.role.clone(),
            tid: sys::gettid(),
            fds,
            ssl,
        };
        // If the runner is gone the process is exiting; the gate wait below never returns
        // in that case, which is fine: main's exit ends this thread.
        let _ = self.tx.send((self.index, info));
        self.gate.wait()
    }
}

type Worker = JoinHandle<anyhow::Result<ThreadDone>>;

pub struct Runner {
    scenario: &'static str,
    duration: Duration,
    wait_stdin: bool,
    /// Print READY and DONE on stdout (and the summary on stderr); tests turn it off.
    print: bool,
    gate: Arc<Gate>,
    tx: mpsc::Sender<(usize, ThreadInfo)>,
    rx: mpsc::Receiver<(usize, ThreadInfo)>,
    workers: Vec<(String, Worker)>,
    /// Set inside [`Runner::group`]: spawned roles become `{group}-{role}`.
    group: Option<&'static str>,
}

impl Runner {
    pub fn new(scenario: &'static str, duration: Duration, wait_stdin: bool) -> Self {
        let (tx, rx) = mpsc::channel();
        Self {
            scenario,
            duration,
            wait_stdin,
            print: true,
            gate: Arc::default(),
            tx,
            rx,
            workers: Vec::new(),
            group: None,
        }
    }

    /// Runs without printing READY/DONE (for tests, which read the returned [`Done`]).
    pub fn quiet(mut self) -> Self {
        self.print = false;
        self
    }

    /// Sets up another scenario's threads inside this one, with each role named
    /// `{name}-{role}` (e.g. "spin-client"), so that several can share one process.
    pub fn group(
        &mut self,
        name: &'static str,
        setup: impl FnOnce(&mut Self) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        self.group = Some(name);
        let res = setup(self);
        self.group = None;
        res.with_context(|| format!("setting up the {name} part failed"))
    }

    /// Starts a thread. `body` must call [`Ctl::ready`] exactly once.
    pub fn spawn<F>(&mut self, role: &'static str, body: F) -> anyhow::Result<()>
    where
        F: FnOnce(&Ctl) -> anyhow::Result<Counts> + Send + 'static,
    {
        // The thread name is what `top -H` shows; Linux keeps its first 15 bytes.
        let (role, thread_name) = match self.group {
            Some(group) => {
                let role = format!("{group}-{role}");
                (role.clone(), role)
            }
            None => (role.to_owned(), format!("{}-{role}", self.scenario)),
        };
        let ctl = Ctl {
            index: self.workers.len(),
            role: role.clone(),
            tx: self.tx.clone(),
            gate: Arc::clone(&self.gate),
        };
        let handle = thread::Builder::new()
            .name(thread_name)
            .spawn(move || {
                let role = ctl.role.clone();
                let tid = sys::gettid();
                let counts =
                    body(&ctl).with_context(|| format!("{role} thread (tid {tid}) failed"))?;
                let cpu_ms = sys::thread_cpu().as_millis() as u64;
                Ok(ThreadDone {
                    role,
                    tid,
                    cpu_ms,
                    counts,
                })
            })
            .with_context(|| format!("spawning the {role} thread failed"))?;
        self.workers.push((role, handle));
        Ok(())
    }

    /// Waits for every thread to be ready, prints READY, waits for stdin if asked, opens
    /// the gate, joins every thread and prints DONE.
    pub fn run(mut self) -> anyhow::Result<Done> {
        let threads = self.collect_ready()?;
        let pid = std::process::id();
        let ready = Ready {
            scenario: self.scenario.to_owned(),
            pid,
            threads,
        };
        if self.print {
            report::emit(&report::ready_line(&ready))?;
        }
        if self.wait_stdin {
            let mut line = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .context("reading the start line from stdin failed")?;
        }
        let start = Instant::now();
        self.gate.open(Window {
            start,
            deadline: start + self.duration,
        });
        let mut done = Vec::with_capacity(self.workers.len());
        for (role, handle) in self.workers {
            done.push(join(&role, handle)?);
        }
        let elapsed_ms = start.elapsed().as_millis() as u64;
        let done = Done::new(self.scenario, pid, elapsed_ms, done);
        if self.print {
            report::emit(&report::done_line(&done))?;
            eprintln!("{}", done.summary());
        }
        Ok(done)
    }

    fn collect_ready(&mut self) -> anyhow::Result<Vec<ThreadInfo>> {
        let want = self.workers.len();
        let mut got: Vec<Option<ThreadInfo>> = vec![None; want];
        let mut seen = 0;
        let until = Instant::now() + SETUP_TIMEOUT;
        while seen < want {
            match self.rx.recv_timeout(Duration::from_millis(50)) {
                Ok((index, info)) => {
                    if got[index].replace(info).is_none() {
                        seen += 1;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    anyhow::bail!("scenario threads disappeared during setup")
                }
            }
            // A thread that ended before announcing itself failed its setup: report why.
            if let Some(i) =
                (0..want).find(|&i| got[i].is_none() && self.workers[i].1.is_finished())
            {
                let (role, handle) = self.workers.swap_remove(i);
                join(&role, handle)?;
                anyhow::bail!("the {role} thread ended during setup without announcing itself");
            }
            if Instant::now() > until {
                let waiting: Vec<&str> = self
                    .workers
                    .iter()
                    .zip(&got)
                    .filter(|(_, g)| g.is_none())
                    .map(|((r, _), _)| r.as_str())
                    .collect();
                anyhow::bail!(
                    "scenario setup took over {}s; still waiting for: {}",
                    SETUP_TIMEOUT.as_secs(),
                    waiting.join(", ")
                );
            }
        }
        Ok(got.into_iter().flatten().collect())
    }
}

fn join(role: &str, handle: Worker) -> anyhow::Result<ThreadDone> {
    match handle.join() {
        Ok(res) => res,
        Err(panic) => {
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_owned());
            anyhow::bail!("the {role} thread panicked: {msg}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_fractions() {
        let start = Instant::now();
        let w = Window {
            start,
            deadline: start + Duration::from_secs(10),
        };
        assert_eq!(w.at(0.5), start + Duration::from_secs(5));
        assert!(!w.done());
    }

    #[test]
    fn setup_failure_is_reported_with_the_thread_error() {
        let mut r = Runner::new("test", Duration::from_millis(10), false);
        r.spawn("server", |_ctl| anyhow::bail!("bind failed"))
            .expect("spawn");
        let err = r.run().expect_err("should fail");
        let text = format!("{err:#}");
        assert!(
            text.contains("server thread") && text.contains("bind failed"),
            "{text}"
        );
    }
}
