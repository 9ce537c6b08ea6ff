//! The agent's own threads give way to the tasks on its machine.
//!
//! A worker that finishes a task writes its result to the agent and goes straight on to the next
//! task it holds. Under the normal policy Linux hands the CPU to the woken agent at that very
//! moment, and the next task starts only after the agent (and whatever the agent wakes in turn)
//! has run: on a 2-core machine every task boundary lost 0.3-0.6 ms that way. Under
//! `SCHED_BATCH` the agent keeps its fair share of the CPU, but a wake-up does not preempt: it
//! runs on a free CPU at once, and on a busy one when the running task's time slice ends, in the
//! middle of a task rather than between two. Workers go back to the normal policy when they
//! start, so that an idle worker handed a task still starts it at once.

use std::{
    io,
    sync::atomic::{AtomicBool, Ordering},
};

/// Whether this process gave way (and its workers must take the normal policy back).
static YIELDING: AtomicBool = AtomicBool::new(false);

/// Puts the calling thread, and the threads and processes it starts later, under `SCHED_BATCH`
/// if it runs under the normal policy; a policy the operator chose (`chrt`, systemd's
/// `CPUSchedulingPolicy`) is left alone. Says whether it switched.
pub fn yield_to_tasks() -> io::Result<bool> {
    if current()? != Policy::Normal {
        return Ok(false);
    }
    set(Policy::Batch)?;
    YIELDING.store(true, Ordering::Relaxed);
    Ok(true)
}

/// Whether [`yield_to_tasks`] switched this process.
pub fn yielding() -> bool {
    YIELDING.load(Ordering::Relaxed)
}

/// Puts the calling thread back under the normal policy. One raw system call, so it may run in
/// a child between fork and exec.
pub fn restore_normal() -> io::Result<()> {
    set(Policy::Normal)
}

#[derive(Debug, PartialEq, Eq)]
enum Policy {
    Normal,
    Batch,
    Other,
}

#[cfg(target_os = "linux")]
fn current() -> io::Result<Policy> {
    // SAFETY: reads the calling thread's policy.
    let policy = unsafe { libc::sched_getscheduler(0) };
    if policy < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(match policy & !libc::SCHED_RESET_ON_FORK {
        libc::SCHED_OTHER => Policy::Normal,
        libc::SCHED_BATCH => Policy::Batch,
        _ => Policy::Other,
    })
}

#[cfg(target_os = "linux")]
fn set(policy: Policy) -> io::Result<()> {
    let policy = match policy {
        Policy::Normal => libc::SCHED_OTHER,
        Policy::Batch => libc::SCHED_BATCH,
        Policy::Other => return Err(io::ErrorKind::InvalidInput.into()),
    };
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: the system call itself (not the C library's wrapper, which need not be
    // async-signal-safe) on the calling thread (pid 0), with a pointer to a live value.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_sched_setscheduler,
            0 as libc::pid_t,
            policy,
            &param as *const libc::sched_param,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn current() -> io::Result<Policy> {
    Err(io::ErrorKind::Unsupported.into())
}

#[cfg(not(target_os = "linux"))]
fn set(_policy: Policy) -> io::Result<()> {
    Err(io::ErrorKind::Unsupported.into())
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn a_thread_switches_to_batch_and_back_and_its_children_inherit_it() {
        // A thread of its own, so that no other test runs under the changed policy.
        std::thread::spawn(|| {
            assert!(yield_to_tasks().unwrap());
            assert!(yielding());
            assert_eq!(current().unwrap(), Policy::Batch);
            // What the thread starts inherits it: workers must restore the normal policy.
            std::thread::spawn(|| assert_eq!(current().unwrap(), Policy::Batch))
                .join()
                .unwrap();
            // A policy other than the normal one is the operator's: left as it is.
            assert!(!yield_to_tasks().unwrap());
            restore_normal().unwrap();
            assert_eq!(current().unwrap(), Policy::Normal);
        })
        .join()
        .unwrap();
    }
}
