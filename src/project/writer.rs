//! Writes a project's state on a thread of its own, so that the editor's frame never waits on
//! the disk: each change hands over a snapshot, the writer keeps only the latest one not yet
//! written (earlier ones are superseded, never half-written), and dropping the writer finishes
//! the last write before it returns. A write that fails is reported at the next change.

use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use super::State;

#[derive(Default)]
struct Shared {
    /// The latest snapshot not yet written.
    pending: Option<State>,
    /// Snapshots handed over / written or superseded so far.
    submitted: u64,
    settled: u64,
    /// The last write's failure, until it is reported.
    error: Option<String>,
    closing: bool,
}

/// The state writer of one project.
pub struct Writer {
    shared: Arc<(Mutex<Shared>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Writer")
    }
}

impl Writer {
    /// Starts a writer of the state file `path`.
    pub fn start(path: PathBuf) -> Self {
        let shared = Arc::new((Mutex::new(Shared::default()), Condvar::new()));
        let theirs = shared.clone();
        let thread = std::thread::Builder::new()
            .name("project-state".into())
            .spawn(move || run(&path, &theirs))
            .expect("starting the project state writer");
        Self {
            shared,
            thread: Some(thread),
        }
    }

    /// Hands over a snapshot to write; returns the failure of an earlier write, if one
    /// failed since the last call (the snapshot is taken all the same, so a later write can
    /// still succeed once there is room).
    pub fn submit(&self, state: State) -> anyhow::Result<()> {
        let (lock, wake) = &*self.shared;
        let mut s = lock.lock().unwrap();
        s.pending = Some(state);
        s.submitted += 1;
        let error = s.error.take();
        drop(s);
        wake.notify_all();
        match error {
            Some(e) => anyhow::bail!("{e}"),
            None => Ok(()),
        }
    }

    /// Waits until every snapshot handed over is written (or superseded), and returns the
    /// failure of the last write, if it failed.
    pub fn flush(&self) -> anyhow::Result<()> {
        let (lock, wake) = &*self.shared;
        let mut s = lock.lock().unwrap();
        while s.settled < s.submitted {
            s = wake.wait(s).unwrap();
        }
        match s.error.take() {
            Some(e) => anyhow::bail!("{e}"),
            None => Ok(()),
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let (lock, wake) = &*self.shared;
        lock.lock().unwrap().closing = true;
        wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(path: &std::path::Path, shared: &(Mutex<Shared>, Condvar)) {
    let (lock, wake) = shared;
    loop {
        let (state, upto) = {
            let mut s = lock.lock().unwrap();
            while s.pending.is_none() && !s.closing {
                s = wake.wait(s).unwrap();
            }
            match s.pending.take() {
                Some(state) => (state, s.submitted),
                None => return,
            }
        };
        let written = serde_json::to_string(&state)
            .map_err(anyhow::Error::from)
            .and_then(|text| Ok(crate::imageio::write_atomic(path, text.as_bytes())?));
        let mut s = lock.lock().unwrap();
        s.settled = upto;
        if let Err(e) = written {
            s.error = Some(format!(
                "the project state could not be saved to '{}': {e:#}",
                path.display()
            ));
        }
        drop(s);
        wake.notify_all();
    }
}
