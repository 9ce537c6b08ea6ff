//! The worker's threads: at most `limit` tasks run at once, and a task that waits for its
//! children ([`Pool::blocked`]) does not count, so that another thread takes the next task
//! meanwhile. A recursion deeper than the slots then never deadlocks, where a fixed pool (every
//! thread held by a waiting parent, the children queued behind them) would.

use std::{
    collections::VecDeque,
    sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError},
};

type Job = Box<dyn FnOnce() + Send>;

/// Idle threads kept at least, for the tasks that follow.
const KEEP_IDLE: usize = 16;

pub(crate) struct Pool {
    state: Mutex<State>,
    work: Condvar,
    /// Signalled when a task ends.
    done: Condvar,
    /// Tasks that may run at once (the worker's slots).
    limit: usize,
}

#[derive(Default)]
struct State {
    /// Tasks to run, each with the name of its function.
    queue: VecDeque<(Arc<str>, Job)>,
    /// Threads alive, those asleep waiting for work, and threads woken or started that have not
    /// yet looked for a task.
    threads: usize,
    idle: usize,
    woken: usize,
    starting: usize,
    /// Tasks running and not waiting for children.
    active: usize,
    /// No more tasks come: idle threads end.
    closed: bool,
}

impl Pool {
    pub(crate) fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::default(),
            work: Condvar::new(),
            done: Condvar::new(),
            limit: limit.max(1),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `job` (a task of `function`) once a slot is free.
    pub(crate) fn push(self: &Arc<Self>, function: Arc<str>, job: Job) {
        let mut state = self.lock();
        state.queue.push_back((function, job));
        self.start_one(&mut state);
    }

    /// Whether the next task to run is one of `function` and may start as soon as the calling
    /// thread's task (still counted) has ended.
    pub(crate) fn next_is(&self, function: &str) -> bool {
        let state = self.lock();
        state.active <= self.limit
            && state
                .queue
                .front()
                .is_some_and(|(next, _)| &**next == function)
    }

    /// Returns once no task is queued or running (tasks waiting for children are not waited
    /// for: what they wait for will not come).
    pub(crate) fn wait_idle(&self) {
        let mut state = self.lock();
        while !state.queue.is_empty() || state.active > 0 {
            state = self
                .done
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Ends the idle threads, and the others once they are done.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.work.notify_all();
    }

    /// The task on this thread waits for its children: its slot takes the next task.
    pub(crate) fn blocked(self: &Arc<Self>) {
        let mut state = self.lock();
        state.active = state.active.saturating_sub(1);
        self.done.notify_all();
        self.start_one(&mut state);
    }

    /// The waiting task resumed: it runs again at once (for a moment the slots may be
    /// exceeded, rather than a parent that has its children's results wait behind new work).
    pub(crate) fn resumed(&self) {
        self.lock().active += 1;
    }

    /// Wakes or starts a thread for the next queued task, if a slot is free.
    fn start_one(self: &Arc<Self>, state: &mut State) {
        if state.queue.is_empty() || state.active + state.woken + state.starting >= self.limit {
            return;
        }
        if state.idle > state.woken {
            state.woken += 1;
            self.work.notify_one();
            return;
        }
        let pool = self.clone();
        let spawned = std::thread::Builder::new()
            .name("ladle-task".into())
            .spawn(move || pool.serve());
        match spawned {
            Ok(_) => {
                state.threads += 1;
                state.starting += 1;
            }
            // The task waits for a thread that ends, or for the next task's push to try again.
            Err(e) => tracing::warn!("cannot start a thread for a task: {e}"),
        }
    }

    fn serve(self: Arc<Self>) {
        let mut state = self.lock();
        state.starting = state.starting.saturating_sub(1);
        loop {
            if state.active < self.limit
                && let Some((_, job)) = state.queue.pop_front()
            {
                state.active += 1;
                // Another slot may be free for the task behind it.
                self.start_one(&mut state);
                drop(state);
                job();
                state = self.lock();
                state.active = state.active.saturating_sub(1);
                self.done.notify_all();
                continue;
            }
            // Threads beyond what the slots need (started for tasks that then waited) end, but
            // a few are kept: a recursion's waits come and go, and a thread costs a start.
            if state.idle >= self.limit.max(KEEP_IDLE) || state.closed {
                state.threads -= 1;
                return;
            }
            state.idle += 1;
            state = self
                .work
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
            state.idle -= 1;
            state.woken = state.woken.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;

    #[test]
    fn no_more_than_the_limit_run_at_once_but_a_waiting_task_lets_another_run() {
        let pool = Pool::new(1);
        let (started_tx, started) = mpsc::channel::<u32>();
        let (go_tx, go) = mpsc::channel::<()>();
        // The first task waits (as a parent would) until the second one has run.
        let first_pool = pool.clone();
        let tx = started_tx.clone();
        pool.push(
            "t".into(),
            Box::new(move || {
                tx.send(1).ok();
                first_pool.blocked();
                go.recv().ok();
                first_pool.resumed();
            }),
        );
        assert_eq!(started.recv().ok(), Some(1));
        let tx = started_tx.clone();
        pool.push(
            "t".into(),
            Box::new(move || {
                tx.send(2).ok();
                go_tx.send(()).ok();
            }),
        );
        assert_eq!(
            started.recv().ok(),
            Some(2),
            "the second task ran while the first waited"
        );
        // With one slot and nothing waiting, tasks run one after the other.
        let running = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let most = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (done_tx, done) = mpsc::channel::<()>();
        for _ in 0..20 {
            let (running, most, done_tx) = (running.clone(), most.clone(), done_tx.clone());
            pool.push(
                "t".into(),
                Box::new(move || {
                    use std::sync::atomic::Ordering::SeqCst;
                    let now = running.fetch_add(1, SeqCst) + 1;
                    most.fetch_max(now, SeqCst);
                    std::thread::yield_now();
                    running.fetch_sub(1, SeqCst);
                    done_tx.send(()).ok();
                }),
            );
        }
        for _ in 0..20 {
            done.recv().ok();
        }
        assert_eq!(most.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}
