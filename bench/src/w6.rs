//! W6: the scheduler's core alone, driven by 1,000 simulated agents of 8 slots and 1,000,000
//! queued tasks. Every simulated agent finishes what it holds, a slot's worth at a time, and the
//! core places the next tasks; the figure is placements per second of the whole loop.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    collections::VecDeque,
    sync::atomic::{AtomicIsize, Ordering},
    time::{Duration, Instant},
};

use ladle_scheduler::core::{
    AgentHello, AgentId, AgentResult, Command, ConnId, Core, CoreConfig, Event, Outcome, Resources,
    SessionOpen, TaskRef, TaskSpec,
};

/// Counts the bytes allocated now, to measure what the core keeps per queued task.
pub struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator, only counting.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

pub struct Figures {
    pub placements_per_s: f64,
    pub bytes_per_queued_task: f64,
    /// Tasks handed to agents, stolen ones counted again.
    pub placements: u64,
}

pub fn run(agents: u32, slots: u32, tasks: u64) -> Figures {
    let mut core = Core::new(CoreConfig {
        protocol_version: 1,
        heartbeat_timeout: Duration::from_secs(3600),
        forget_lost_after: Duration::from_secs(3600),
        max_crashes: 3,
        driver_grace: Duration::from_secs(5),
        budget: ladle_scheduler::core::Budget {
            tasks: u64::MAX,
            bytes: u64::MAX,
        },
    });
    let now = Instant::now();
    let mut out = Vec::new();
    for i in 0..agents {
        core.handle(
            now,
            Event::AgentAttached {
                conn: ConnId::from(i),
                hello: AgentHello {
                    protocol_version: 1,
                    agent_id: AgentId(format!("agent-{i}").into()),
                    hostname: format!("host-{i}"),
                    resources: Resources {
                        cpus: slots,
                        cpu_slots: slots,
                        ..Default::default()
                    },
                    ..Default::default()
                },
            },
            &mut out,
        );
    }
    let driver: ConnId = 1 << 40;
    core.handle(
        now,
        Event::DriverOpened {
            conn: driver,
            open: SessionOpen {
                protocol_version: 1,
                session_id: "w6".into(),
                job_name: "w6".into(),
                ..Default::default()
            },
        },
        &mut out,
    );
    out.clear();

    // Queue every task, keeping the first placements for the agents.
    let mut held: Vec<VecDeque<(TaskRef, u32)>> = vec![VecDeque::new(); agents as usize];
    let function: std::sync::Arc<str> = "w6::task".into();
    let before = LIVE.load(Ordering::Relaxed);
    let mut placements = 0u64;
    for start in (0..tasks).step_by(10_000) {
        let batch = (start..(start + 10_000).min(tasks))
            .map(|task_id| TaskSpec {
                task_id,
                function: function.clone(),
                payload: bytes::Bytes::from_static(&[0; 8]),
                items: 1,
                ..Default::default()
            })
            .collect();
        core.handle(
            now,
            Event::TasksSubmitted {
                conn: driver,
                acked: 0,
                tasks: batch,
            },
            &mut out,
        );
        placements += absorb(&mut out, &mut held, &mut 0);
    }
    let queued = tasks - placements;
    let bytes_per_queued_task =
        (LIVE.load(Ordering::Relaxed) - before) as f64 / queued.max(1) as f64;

    let started = Instant::now();
    let mut delivered = 0u64;
    while delivered < tasks {
        let mut progressed = false;
        for (i, queue) in held.iter_mut().enumerate() {
            let n = queue.len().min(slots as usize);
            if n == 0 {
                continue;
            }
            progressed = true;
            let results = queue
                .drain(..n)
                .map(|(task_ref, attempt)| AgentResult {
                    task_ref,
                    attempt,
                    outcome: Outcome::Output(bytes::Bytes::new()),
                    run_ns: 1_000_000,
                    crashed_with: 0,
                    items_failed: 0,
                    first_item_error: String::new(),
                })
                .collect();
            core.handle(
                now,
                Event::AgentResults {
                    conn: i as ConnId,
                    results,
                },
                &mut out,
            );
        }
        placements += absorb(&mut out, &mut held, &mut delivered);
        // The driver acknowledges what it received (deliveries are numbered from 1), as the
        // SDK does with its next message.
        core.handle(
            now,
            Event::DriverAcked {
                conn: driver,
                through: delivered,
            },
            &mut out,
        );
        if !progressed {
            break;
        }
    }
    let wall_s = started.elapsed().as_secs_f64();
    Figures {
        placements_per_s: (placements as f64) / wall_s,
        bytes_per_queued_task,
        placements,
    }
}

/// Files the assignments under their agents; counts placements and deliveries.
fn absorb(
    out: &mut Vec<Command>,
    held: &mut [VecDeque<(TaskRef, u32)>],
    delivered: &mut u64,
) -> u64 {
    let mut placed = 0;
    for command in out.drain(..) {
        match command {
            Command::Assign { conn, tasks, .. } => {
                placed += tasks.len() as u64;
                if let Some(queue) = held.get_mut(conn as usize) {
                    queue.extend(tasks.iter().map(|t| (t.task_ref, t.attempt)));
                }
            }
            Command::Deliver { results, .. } => *delivered += results.len() as u64,
            _ => {}
        }
    }
    placed
}
