//! The core driven by simulated events and time.

use std::time::{Duration, Instant};

use super::*;

const TIMEOUT: Duration = Duration::from_secs(5);

struct Sim {
    core: Core,
    now: Instant,
    out: Vec<Command>,
}

impl Sim {
    fn new() -> Self {
        Self::with_budget(Budget {
            tasks: 1_000_000,
            bytes: 1 << 40,
        })
    }

    fn with_budget(budget: Budget) -> Self {
        Self {
            core: Core::new(CoreConfig {
                protocol_version: 1,
                heartbeat_timeout: TIMEOUT,
                forget_lost_after: Duration::from_secs(3600),
                max_crashes: 3,
                driver_grace: Duration::from_secs(5),
                budget,
            }),
            now: Instant::now(),
            out: Vec::new(),
        }
    }

    fn at(&mut self, secs: f64) -> &mut Self {
        self.now += Duration::from_secs_f64(secs);
        self
    }

    fn send(&mut self, event: Event) -> Vec<Command> {
        self.out.clear();
        self.core.handle(self.now, event, &mut self.out);
        // The counters kept as events happen always equal a count of the tasks, and so do the
        // jobs' records of items running and queued.
        assert_eq!(self.core.jobs.counts(), self.core.jobs.counts_by_scan());
        for (no, recorded, scanned) in self.core.jobs.record_by_scan() {
            assert_eq!(recorded, scanned, "job {no}: items (running, queued)");
        }
        std::mem::take(&mut self.out)
    }

    fn join(&mut self, conn: ConnId, id: &str) -> Vec<Command> {
        self.attach(conn, hello(id))
    }

    fn attach(&mut self, conn: ConnId, hello: AgentHello) -> Vec<Command> {
        self.send(Event::AgentAttached { conn, hello })
    }

    fn state(&self, id: &str) -> AgentState {
        self.core
            .agent(&AgentId(id.into()))
            .expect("agent is listed")
            .state()
    }
}

fn hello(id: &str) -> AgentHello {
    AgentHello {
        protocol_version: 1,
        agent_id: AgentId(id.into()),
        hostname: format!("host-{id}"),
        resources: Resources {
            cpus: 4,
            cpu_slots: 4,
            ..Default::default()
        },
        ..Default::default()
    }
}

#[test]
fn a_joining_agent_is_welcomed_and_alive() {
    let mut sim = Sim::new();
    assert_eq!(
        sim.join(1, "a"),
        vec![Command::Welcome {
            conn: 1,
            draining: false,
            secret: String::new()
        }]
    );
    assert_eq!(sim.state("a"), AgentState::Alive);
}

#[test]
fn heartbeats_keep_an_agent_alive_and_silence_loses_it() {
    let mut sim = Sim::new();
    sim.join(1, "a");
    for _ in 0..10 {
        sim.at(1.0);
        sim.send(Event::Heartbeat {
            conn: 1,
            load: Load::default(),
        });
        assert!(sim.send(Event::Tick).is_empty());
    }
    assert_eq!(sim.state("a"), AgentState::Alive);
    sim.at(5.5);
    let cmds = sim.send(Event::Tick);
    assert!(
        matches!(cmds.as_slice(), [Command::Disconnect { conn: 1, .. }]),
        "{cmds:?}"
    );
    assert_eq!(sim.state("a"), AgentState::Lost);
    // A heartbeat on the stream the core let go of does not revive it.
    sim.send(Event::Heartbeat {
        conn: 1,
        load: Load::default(),
    });
    assert_eq!(sim.state("a"), AgentState::Lost);
}

#[test]
fn a_closed_stream_loses_the_agent_and_a_rejoin_revives_it_under_the_same_id() {
    let mut sim = Sim::new();
    sim.join(1, "a");
    sim.join(2, "b");
    sim.send(Event::AgentDetached { conn: 1 });
    assert_eq!(sim.state("a"), AgentState::Lost);
    assert_eq!(sim.state("b"), AgentState::Alive);
    sim.at(2.0);
    sim.join(3, "a");
    assert_eq!(sim.state("a"), AgentState::Alive);
    assert_eq!(sim.core.agents().count(), 2);
}

#[test]
fn the_old_stream_closing_after_a_rejoin_does_not_lose_the_agent() {
    let mut sim = Sim::new();
    sim.join(1, "a");
    // The agent reconnects before the scheduler noticed the first stream was dead.
    let cmds = sim.join(2, "a");
    assert!(cmds.contains(&Command::Disconnect {
        conn: 1,
        reason: "replaced by a newer stream from the same agent".into()
    }));
    sim.send(Event::AgentDetached { conn: 1 });
    assert_eq!(sim.state("a"), AgentState::Alive);
    sim.send(Event::AgentDetached { conn: 2 });
    assert_eq!(sim.state("a"), AgentState::Lost);
}

#[test]
fn a_protocol_mismatch_is_refused_naming_both_versions() {
    let mut sim = Sim::new();
    let mut h = hello("a");
    h.protocol_version = 2;
    let cmds = sim.attach(1, h);
    let [Command::Refuse { reason, .. }] = cmds.as_slice() else {
        panic!("{cmds:?}")
    };
    let text = reason.to_string();
    assert!(
        text.contains("protocol 2") && text.contains("protocol 1"),
        "{text}"
    );
    assert_eq!(sim.core.agents().count(), 0);
}

#[test]
fn malformed_hellos_are_refused() {
    let mut sim = Sim::new();
    for bad in ["", "has space", "../etc"] {
        let cmds = sim.attach(1, hello(bad));
        assert!(
            matches!(
                cmds.as_slice(),
                [Command::Refuse {
                    reason: Refusal::InvalidHello(_),
                    ..
                }]
            ),
            "{bad}: {cmds:?}"
        );
    }
    let mut h = hello("a");
    h.resources.cpu_slots = 0;
    let cmds = sim.attach(1, h);
    assert!(matches!(cmds.as_slice(), [Command::Refuse { .. }]));
    assert_eq!(sim.core.agents().count(), 0);
}

#[test]
fn drain_is_told_to_the_agent_and_survives_a_reconnect() {
    let mut sim = Sim::new();
    sim.join(1, "a");
    let mut out = Vec::new();
    sim.core.set_drain("a", true, &mut out).unwrap();
    assert_eq!(
        out,
        vec![Command::NotifyDrain {
            conn: 1,
            draining: true
        }]
    );
    assert_eq!(sim.state("a"), AgentState::Draining);
    sim.send(Event::AgentDetached { conn: 1 });
    assert_eq!(sim.state("a"), AgentState::Lost);
    assert_eq!(
        sim.join(2, "a"),
        vec![Command::Welcome {
            conn: 2,
            draining: true,
            secret: String::new()
        }]
    );
    assert_eq!(sim.state("a"), AgentState::Draining);
    out.clear();
    sim.core.set_drain("a", false, &mut out).unwrap();
    assert_eq!(sim.state("a"), AgentState::Alive);
}

#[test]
fn a_scheduler_meeting_a_drained_agent_keeps_it_drained_but_one_that_undrained_it_does_not() {
    // A restarted scheduler: the agent says it was drained.
    let mut sim = Sim::new();
    let drained = AgentHello {
        draining: true,
        ..hello("a")
    };
    assert_eq!(
        sim.attach(1, drained.clone()),
        vec![Command::Welcome {
            conn: 1,
            draining: true,
            secret: String::new()
        }]
    );
    assert_eq!(sim.state("a"), AgentState::Draining);
    // Undrained here, then back on a new stream before it heard of it: this scheduler knows best.
    sim.core.set_drain("a", false, &mut Vec::new()).unwrap();
    sim.send(Event::AgentDetached { conn: 1 });
    assert_eq!(
        sim.attach(2, drained),
        vec![Command::Welcome {
            conn: 2,
            draining: false,
            secret: String::new()
        }]
    );
    assert_eq!(sim.state("a"), AgentState::Alive);
}

#[test]
fn agents_are_selected_by_id_prefix_or_hostname() {
    let mut sim = Sim::new();
    sim.join(1, "abc1");
    sim.join(2, "abc2");
    sim.join(3, "xyz");
    let mut out = Vec::new();
    assert_eq!(
        &*sim.core.set_drain("x", true, &mut out).unwrap().id().0,
        "xyz"
    );
    assert_eq!(
        sim.core
            .set_drain("host-abc2", true, &mut out)
            .unwrap()
            .id()
            .0
            .as_ref(),
        "abc2"
    );
    assert!(matches!(
        sim.core.set_drain("abc", true, &mut out),
        Err(SelectError::Ambiguous { .. })
    ));
    assert!(matches!(
        sim.core.set_drain("nope", true, &mut out),
        Err(SelectError::NotFound(_))
    ));
    assert!(matches!(
        sim.core.set_drain("", true, &mut out),
        Err(SelectError::NotFound(_))
    ));
}

#[test]
fn lost_agents_are_forgotten_after_a_while() {
    let mut sim = Sim::new();
    sim.join(1, "a");
    sim.send(Event::AgentDetached { conn: 1 });
    sim.at(3000.0);
    sim.send(Event::Tick);
    assert_eq!(sim.core.agents().count(), 1);
    sim.at(700.0);
    sim.send(Event::Tick);
    assert_eq!(sim.core.agents().count(), 0);
}

// ---- tasks ----

fn open(sim: &mut Sim, conn: ConnId) {
    let cmds = sim.send(Event::DriverOpened {
        conn,
        open: SessionOpen {
            protocol_version: 1,
            session_id: format!("s{conn}"),
            job_name: "job".into(),
            ..Default::default()
        },
    });
    assert!(
        matches!(cmds.as_slice(), [Command::SessionOpened { .. }]),
        "{cmds:?}"
    );
}

/// (sessions, queued, running).
fn counts(sim: &Sim) -> (usize, usize, usize) {
    let c = sim.core.task_counts();
    (c.sessions, c.queued, c.running)
}

fn spec(task_id: u64) -> TaskSpec {
    TaskSpec {
        task_id,
        function: "f".into(),
        items: 1,
        ..Default::default()
    }
}

fn submit(sim: &mut Sim, conn: ConnId, ids: std::ops::Range<u64>) -> Vec<Command> {
    sim.send(Event::TasksSubmitted {
        acked: 0,
        conn,
        tasks: ids.map(spec).collect(),
    })
}

/// (agent conn, task_ref, attempt) of every assignment.
fn assignments(cmds: &[Command]) -> Vec<(ConnId, TaskRef, u32)> {
    cmds.iter()
        .filter_map(|c| match c {
            Command::Assign { conn, tasks, .. } => Some(
                tasks
                    .iter()
                    .map(|t| (*conn, t.task_ref, t.attempt))
                    .collect::<Vec<_>>(),
            ),
            _ => None,
        })
        .flatten()
        .collect()
}

fn delivered(cmds: &[Command]) -> Vec<(u64, Outcome)> {
    cmds.iter()
        .filter_map(|c| match c {
            Command::Deliver { results, .. } => Some(
                results
                    .iter()
                    .map(|r| (r.task_id, r.outcome.clone()))
                    .collect::<Vec<_>>(),
            ),
            _ => None,
        })
        .flatten()
        .collect()
}

fn ok(task_ref: TaskRef, attempt: u32) -> AgentResult {
    AgentResult {
        task_ref,
        attempt,
        outcome: Outcome::Output(bytes::Bytes::from_static(b"ok")),
        run_ns: 1_000_000,
        crashed_with: 0,
        items_failed: 0,
        first_item_error: String::new(),
    }
}

#[test]
fn tasks_are_spread_over_agents_up_to_slots_and_prefetch() {
    let mut sim = Sim::new();
    sim.join(1, "a");
    sim.join(2, "b");
    open(&mut sim, 10);
    let placed = assignments(&submit(&mut sim, 10, 0..100));
    // 4 slots each, plus one task per slot of prefetch before any task time is known.
    assert_eq!(placed.len(), 16, "{placed:?}");
    assert_eq!(placed.iter().filter(|p| p.0 == 1).count(), 8);
    assert_eq!(placed.iter().filter(|p| p.0 == 2).count(), 8);
    // A result of 1 ms teaches the core that 2 tasks per slot cover its 2 ms of prefetch:
    // the agent is topped up to 4 running + 8 queued, in one assignment.
    let (conn, task_ref, attempt) = placed[0];
    let cmds = sim.send(Event::AgentResults {
        conn,
        results: vec![ok(task_ref, attempt)],
    });
    assert_eq!(delivered(&cmds).len(), 1);
    let refill = assignments(&cmds);
    assert_eq!(refill.len(), 5, "{refill:?}");
    assert!(refill.iter().all(|p| p.0 == conn));
}

#[test]
fn a_lost_agents_tasks_run_elsewhere_and_its_late_results_are_dropped() {
    let mut sim = Sim::new();
    sim.join(1, "a");
    open(&mut sim, 10);
    let first = assignments(&submit(&mut sim, 10, 0..2));
    assert_eq!(first.len(), 2);
    // The agent falls silent; another joins and gets the tasks under attempt 2.
    sim.join(2, "b");
    sim.at(6.0);
    sim.send(Event::Heartbeat {
        conn: 2,
        load: Load::default(),
    });
    let cmds = sim.send(Event::Tick);
    let again = assignments(&cmds);
    assert_eq!(again.len(), 2, "{cmds:?}");
    assert!(
        again
            .iter()
            .all(|&(conn, _, attempt)| conn == 2 && attempt == 2)
    );
    // The old agent's results (old stream, old attempt) are dropped...
    let late = sim.send(Event::AgentResults {
        conn: 1,
        results: first.iter().map(|&(_, r, a)| ok(r, a)).collect(),
    });
    assert!(delivered(&late).is_empty());
    // ...even if it comes back and reports them on a new stream.
    sim.join(3, "a");
    let late = sim.send(Event::AgentResults {
        conn: 3,
        results: first.iter().map(|&(_, r, a)| ok(r, a)).collect(),
    });
    assert!(delivered(&late).is_empty(), "{late:?}");
    // The new attempts complete, once each.
    let results: Vec<_> = again.iter().map(|&(_, r, a)| ok(r, a)).collect();
    let done = sim.send(Event::AgentResults {
        conn: 2,
        results: results.clone(),
    });
    assert_eq!(delivered(&done).len(), 2);
    let twice = sim.send(Event::AgentResults { conn: 2, results });
    assert!(delivered(&twice).is_empty());
}

#[test]
fn a_result_racing_the_agents_loss_is_dropped_and_the_task_runs_again() {
    let mut sim = Sim::new();
    sim.join(1, "a");
    sim.join(2, "b");
    open(&mut sim, 10);
    let placed = assignments(&submit(&mut sim, 10, 0..1));
    let (conn, task_ref, attempt) = placed[0];
    let other = if conn == 1 { 2 } else { 1 };
    // The stream closes before its result is read.
    let cmds = sim.send(Event::AgentDetached { conn });
    let again = assignments(&cmds);
    assert_eq!(again, vec![(other, task_ref, attempt + 1)]);
    assert!(
        delivered(&sim.send(Event::AgentResults {
            conn,
            results: vec![ok(task_ref, attempt)]
        }))
        .is_empty()
    );
    let done = sim.send(Event::AgentResults {
        conn: other,
        results: vec![ok(task_ref, attempt + 1)],
    });
    assert_eq!(delivered(&done).len(), 1);
}

#[test]
fn cancelled_tasks_are_answered_at_once_and_their_results_dropped() {
    let mut sim = Sim::new();
    sim.join(1, "a");
    open(&mut sim, 10);
    let placed = assignments(&submit(&mut sim, 10, 0..20));
    let (_, running_ref, attempt) = placed[0];
    let cmds = sim.send(Event::TasksCancelled {
        conn: 10,
        task_ids: vec![0, 19],
    });
    let answered = delivered(&cmds);
    assert_eq!(answered.len(), 2);
    assert!(answered.iter().all(|(_, o)| matches!(
        o,
        Outcome::Failed {
            kind: FailureKind::Cancelled,
            ..
        }
    )));
    assert!(
        cmds.iter().any(
            |c| matches!(c, Command::CancelOnAgent { refs, .. } if refs == &vec![running_ref])
        )
    );
    let late = sim.send(Event::AgentResults {
        conn: 1,
        results: vec![ok(running_ref, attempt)],
    });
    assert!(delivered(&late).is_empty());
}

#[test]
fn a_gone_driver_ends_its_job_on_the_agents_and_frees_them() {
    let mut sim = Sim::new();
    sim.join(1, "a");
    open(&mut sim, 10);
    open(&mut sim, 11);
    submit(&mut sim, 10, 0..50);
    // The stream breaks: the job waits for its driver through the grace period, then ends.
    assert!(sim.send(Event::DriverDetached { conn: 10 }).is_empty());
    sim.at(4.0);
    sim.send(Event::Heartbeat {
        conn: 1,
        load: Load::default(),
    });
    assert!(sim.send(Event::Tick).is_empty());
    sim.at(1.5);
    sim.send(Event::Heartbeat {
        conn: 1,
        load: Load::default(),
    });
    let cmds = sim.send(Event::Tick);
    assert!(
        cmds.iter()
            .any(|c| matches!(c, Command::EndJob { conn: 1, .. })),
        "{cmds:?}"
    );
    // Another job's tasks take the room once the agent reports the dropped ones.
    let placed = assignments(&submit(&mut sim, 11, 0..5));
    assert!(
        placed.is_empty(),
        "the agent is still full of the gone job's tasks"
    );
    let refs: Vec<AgentResult> = (1..=8)
        .map(|r| AgentResult {
            task_ref: r,
            attempt: 1,
            outcome: Outcome::Failed {
                kind: FailureKind::Cancelled,
                message: String::new(),
            },
            run_ns: 0,
            crashed_with: 1,
            items_failed: 0,
            first_item_error: String::new(),
        })
        .collect();
    let cmds = sim.send(Event::AgentResults {
        conn: 1,
        results: refs,
    });
    assert!(delivered(&cmds).is_empty());
    assert_eq!(assignments(&cmds).len(), 5);
    assert_eq!(counts(&sim), (1, 0, 5));
}

#[test]
fn a_task_that_keeps_crashing_its_worker_fails_after_the_limit() {
    let mut sim = Sim::new();
    sim.join(1, "a");
    open(&mut sim, 10);
    let mut placed = assignments(&submit(&mut sim, 10, 0..1));
    for round in 1..=3 {
        let (conn, task_ref, attempt) = placed[0];
        let crash = AgentResult {
            task_ref,
            attempt,
            outcome: Outcome::Failed {
                kind: FailureKind::WorkerCrashed,
                message: "killed by signal 6 SIGABRT".into(),
            },
            run_ns: 0,
            crashed_with: 1,
            items_failed: 0,
            first_item_error: String::new(),
        };
        let cmds = sim.send(Event::AgentResults {
            conn,
            results: vec![crash],
        });
        if round < 3 {
            assert!(delivered(&cmds).is_empty());
            placed = assignments(&cmds);
            assert_eq!(placed[0].2, attempt + 1);
        } else {
            let failed = delivered(&cmds);
            let [
                (
                    0,
                    Outcome::Failed {
                        kind: FailureKind::WorkerCrashed,
                        message,
                    },
                ),
            ] = failed.as_slice()
            else {
                panic!("{failed:?}")
            };
            assert!(
                message.contains("SIGABRT")
                    && message.contains("3 times")
                    && message.contains("host-a"),
                "{message}"
            );
        }
    }
}

#[test]
fn a_task_that_crashed_a_worker_runs_again_on_another_agent_and_its_error_counts_true() {
    let mut sim = Sim::new();
    sim.join(1, "a");
    sim.join(2, "b");
    open(&mut sim, 10);
    let mut placed = assignments(&submit(&mut sim, 10, 0..1));
    let mut hosts = Vec::new();
    for round in 1..=3 {
        let (conn, task_ref, attempt) = placed[0];
        hosts.push(conn);
        let cmds = sim.send(Event::AgentResults {
            conn,
            results: vec![crash(task_ref, attempt, 1)],
        });
        if round < 3 {
            placed = assignments(&cmds);
            assert_eq!(placed.len(), 1, "{cmds:?}");
            if round == 1 {
                assert_ne!(placed[0].0, conn, "the retry goes to the other agent");
            }
        } else {
            let failed = delivered(&cmds);
            let [(0, Outcome::Failed { message, .. })] = failed.as_slice() else {
                panic!("{failed:?}")
            };
            // Three crashes, three agents named (a, b, then either).
            assert!(message.contains("3 times"), "{message}");
            let named = message.matches("host-").count();
            assert_eq!(named, 3, "{message}");
        }
    }
    assert_ne!(hosts[0], hosts[1]);
}

#[test]
fn a_task_that_crashed_an_agents_worker_waits_for_another_agent_rather_than_crash_it_again() {
    let mut sim = Sim::new();
    sim.attach(1, one_slot("a"));
    sim.attach(2, one_slot("b"));
    open(&mut sim, 10);
    // Each takes two (its slot, and one more waiting there): both full.
    let placed = assignments(&submit(&mut sim, 10, 0..4));
    assert_eq!(placed.len(), 4, "{placed:?}");
    assert_eq!(placed.iter().filter(|p| p.0 == 1).count(), 2, "{placed:?}");
    let (a_conn, task_ref, attempt) = *placed.iter().find(|p| p.0 == 1).expect("a took one");
    let (b_conn, b_ref, b_attempt) = *placed.iter().find(|p| p.0 == 2).expect("b took one");
    // a's worker crashes: a has room again, b none. The task waits for b.
    let cmds = sim.send(Event::AgentResults {
        conn: a_conn,
        results: vec![crash(task_ref, attempt, 1)],
    });
    let again = assignments(&cmds);
    assert!(
        again.iter().all(|p| p.0 != a_conn),
        "the crashed task went back to a: {again:?}"
    );
    // b finishes: the crashed task runs there.
    let cmds = sim.send(Event::AgentResults {
        conn: b_conn,
        results: vec![ok(b_ref, b_attempt)],
    });
    let moved = assignments(&cmds);
    assert!(
        moved.iter().any(|p| p.1 == task_ref && p.0 == b_conn),
        "the crashed task runs on b: {moved:?}"
    );
}

#[test]
fn sessions_share_the_cluster_in_turn() {
    let mut sim = Sim::new();
    sim.join(1, "a");
    open(&mut sim, 10);
    open(&mut sim, 11);
    // Both jobs queue before the agent has room: it joins after.
    sim.send(Event::AgentDetached { conn: 1 });
    submit(&mut sim, 10, 0..100);
    submit(&mut sim, 11, 0..100);
    let cmds = sim.join(2, "a");
    let mut per_job = std::collections::HashMap::new();
    for c in &cmds {
        if let Command::Assign { job, tasks, .. } = c {
            *per_job.entry(job.id.to_string()).or_insert(0) += tasks.len();
        }
    }
    assert_eq!(per_job.get("s10"), per_job.get("s11"), "{per_job:?}");
}

/// The output forwarded to drivers, as (driver conn, agent host, texts).
fn forwarded(cmds: &[Command]) -> Vec<(ConnId, String, Vec<String>)> {
    cmds.iter()
        .filter_map(|c| match c {
            Command::ForwardOutput { conn, agent, lines } => Some((
                *conn,
                agent.to_string(),
                lines.iter().map(|l| l.text.clone()).collect(),
            )),
            _ => None,
        })
        .collect()
}

fn output(sim: &mut Sim, conn: ConnId, job_id: &str, text: &str) -> Vec<Command> {
    sim.send(Event::AgentOutput {
        conn,
        job_id: job_id.into(),
        lines: vec![OutputLine {
            stderr: false,
            text: text.into(),
        }],
    })
}

#[test]
fn output_is_taken_only_from_agents_the_job_placed_tasks_on() {
    let mut sim = Sim::new();
    sim.join(1, "a");
    open(&mut sim, 10);
    // Both of s10's tasks fit on "a"; "b" joins after, and takes s11's.
    assert!(
        assignments(&submit(&mut sim, 10, 0..2))
            .iter()
            .all(|p| p.0 == 1)
    );
    sim.join(2, "b");
    open(&mut sim, 11);
    let placed = assignments(&submit(&mut sim, 11, 0..1));
    assert_eq!(placed.iter().map(|p| p.0).collect::<Vec<_>>(), vec![2]);

    assert_eq!(
        forwarded(&output(&mut sim, 1, "s10", "from a")),
        vec![(10, "host-a".to_owned(), vec!["from a".to_owned()])]
    );
    assert_eq!(
        forwarded(&output(&mut sim, 2, "s11", "from b")),
        vec![(11, "host-b".to_owned(), vec!["from b".to_owned()])]
    );
    // Each agent claiming lines of the other's job is not believed.
    assert!(output(&mut sim, 2, "s10", "forged").is_empty());
    assert!(output(&mut sim, 1, "s11", "forged").is_empty());
    assert_eq!(sim.core.task_counts().foreign_output, 2);
    // A job that is not open has nowhere to send lines; they are no agent's forgery.
    assert!(output(&mut sim, 1, "s99", "late").is_empty());
    assert_eq!(sim.core.task_counts().foreign_output, 2);
}

#[test]
fn a_driver_that_comes_back_in_time_gets_the_results_of_its_absence() {
    let mut sim = Sim::new();
    sim.join(1, "a");
    open(&mut sim, 10);
    let placed = assignments(&submit(&mut sim, 10, 0..2));
    sim.send(Event::DriverDetached { conn: 10 });
    // Results arrive while it is away: held, not lost.
    let cmds = sim.send(Event::AgentResults {
        conn: 1,
        results: vec![ok(placed[0].1, placed[0].2)],
    });
    assert!(delivered(&cmds).is_empty());
    // It reopens the same session on a new stream and resubmits what it had no result for.
    let cmds = sim.send(Event::DriverOpened {
        conn: 11,
        open: SessionOpen {
            protocol_version: 1,
            session_id: "s10".into(),
            job_name: "job".into(),
            ..Default::default()
        },
    });
    assert!(
        matches!(cmds.first(), Some(Command::SessionOpened { conn: 11, .. })),
        "{cmds:?}"
    );
    assert_eq!(
        delivered(&cmds),
        vec![(0, Outcome::Output(bytes::Bytes::from_static(b"ok")))]
    );
    // Task 1 is still known: resubmitting it does not run it twice.
    assert!(assignments(&submit(&mut sim, 11, 1..2)).is_empty());
    let cmds = sim.send(Event::AgentResults {
        conn: 1,
        results: vec![ok(placed[1].1, placed[1].2)],
    });
    assert!(
        cmds.iter()
            .any(|c| matches!(c, Command::Deliver { conn: 11, .. })),
        "{cmds:?}"
    );
    assert_eq!(counts(&sim), (1, 0, 0));
}

#[test]
fn a_stale_attempt_on_the_same_agent_does_not_displace_the_current_one() {
    let mut sim = Sim::new();
    sim.join(1, "a");
    open(&mut sim, 10);
    let (_, task_ref, attempt) = assignments(&submit(&mut sim, 10, 0..1))[0];
    // The agent reconnects: its task is placed on it again under attempt 2.
    let again = assignments(&sim.join(2, "a"));
    assert_eq!(again, vec![(2, task_ref, attempt + 1)]);
    // A late report of attempt 1 on the new stream changes nothing...
    assert!(
        delivered(&sim.send(Event::AgentResults {
            conn: 2,
            results: vec![ok(task_ref, attempt)]
        }))
        .is_empty()
    );
    // ...and attempt 2 still completes.
    let done = sim.send(Event::AgentResults {
        conn: 2,
        results: vec![ok(task_ref, attempt + 1)],
    });
    assert_eq!(delivered(&done).len(), 1);
}

fn crash(task_ref: TaskRef, attempt: u32, crashed_with: u32) -> AgentResult {
    AgentResult {
        task_ref,
        attempt,
        outcome: Outcome::Failed {
            kind: FailureKind::WorkerCrashed,
            message: "killed by signal 6 SIGABRT".into(),
        },
        run_ns: 0,
        crashed_with,
        items_failed: 0,
        first_item_error: String::new(),
    }
}

#[test]
fn a_task_that_crashed_with_others_runs_alone_before_it_is_charged() {
    let mut sim = Sim::new();
    sim.join(1, "a");
    open(&mut sim, 10);
    let (conn, task_ref, attempt) = assignments(&submit(&mut sim, 10, 0..1))[0];
    // Three tasks were in the worker when it died: not charged, placed again to run alone.
    let cmds = sim.send(Event::AgentResults {
        conn,
        results: vec![crash(task_ref, attempt, 3)],
    });
    assert!(delivered(&cmds).is_empty());
    let isolated: Vec<bool> = cmds
        .iter()
        .filter_map(|c| match c {
            Command::Assign { tasks, .. } => {
                Some(tasks.iter().map(|t| t.isolated).collect::<Vec<_>>())
            }
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(isolated, vec![true]);
    // Alone, it is charged: two more crashes (three in all) and it fails.
    let mut attempt = attempt + 1;
    for _ in 0..2 {
        let cmds = sim.send(Event::AgentResults {
            conn,
            results: vec![crash(task_ref, attempt, 1)],
        });
        assert!(delivered(&cmds).is_empty());
        attempt += 1;
    }
    let cmds = sim.send(Event::AgentResults {
        conn,
        results: vec![crash(task_ref, attempt, 1)],
    });
    let failed = delivered(&cmds);
    assert!(
        matches!(
            failed.as_slice(),
            [(
                0,
                Outcome::Failed {
                    kind: FailureKind::WorkerCrashed,
                    ..
                }
            )]
        ),
        "{failed:?}"
    );
}

#[test]
fn a_crashed_chunk_goes_back_to_its_driver_to_be_split() {
    let mut sim = Sim::new();
    sim.join(1, "a");
    open(&mut sim, 10);
    let mut chunk = spec(0);
    chunk.items = 50;
    let cmds = sim.send(Event::TasksSubmitted {
        acked: 0,
        conn: 10,
        tasks: vec![chunk],
    });
    let (conn, task_ref, attempt) = assignments(&cmds)[0];
    let cmds = sim.send(Event::AgentResults {
        conn,
        results: vec![crash(task_ref, attempt, 1)],
    });
    let failed = delivered(&cmds);
    let [
        (
            0,
            Outcome::Failed {
                kind: FailureKind::WorkerCrashed,
                message,
            },
        ),
    ] = failed.as_slice()
    else {
        panic!("{failed:?}")
    };
    assert!(message.contains("chunk of 50 items"), "{message}");
}

#[test]
fn a_cancel_racing_a_crash_requeue_is_answered_once() {
    let mut sim = Sim::new();
    sim.join(1, "a");
    open(&mut sim, 10);
    let (conn, task_ref, attempt) = assignments(&submit(&mut sim, 10, 0..1))[0];
    // The worker crashes (alone): the task is placed again under attempt 2...
    let again = assignments(&sim.send(Event::AgentResults {
        conn,
        results: vec![crash(task_ref, attempt, 1)],
    }));
    assert_eq!(again, vec![(conn, task_ref, attempt + 1)]);
    // ...and the driver cancels it: answered at once, stopped on the agent.
    let cmds = sim.send(Event::TasksCancelled {
        conn: 10,
        task_ids: vec![0],
    });
    assert!(matches!(
        delivered(&cmds).as_slice(),
        [(
            0,
            Outcome::Failed {
                kind: FailureKind::Cancelled,
                ..
            }
        )]
    ));
    assert!(
        cmds.iter()
            .any(|c| matches!(c, Command::CancelOnAgent { refs, .. } if refs == &vec![task_ref]))
    );
    // Whatever either attempt reports later is dropped.
    for a in [attempt, attempt + 1] {
        assert!(
            delivered(&sim.send(Event::AgentResults {
                conn,
                results: vec![ok(task_ref, a)]
            }))
            .is_empty()
        );
    }
    assert_eq!(counts(&sim), (1, 0, 0));
}

// ---- GPUs ----

fn gpu_hello(id: &str, gpus: usize, cpu_slots: u32) -> AgentHello {
    let mut h = hello(id);
    h.resources.cpu_slots = cpu_slots;
    h.resources.gpus = (0..gpus)
        .map(|i| GpuInfo {
            ordinal: i as u32,
            name: "declared".into(),
            declared: true,
            ..Default::default()
        })
        .collect();
    h
}

fn submit_gpu(sim: &mut Sim, conn: ConnId, ids: std::ops::Range<u64>, gpu: GpuUse) -> Vec<Command> {
    sim.send(Event::TasksSubmitted {
        acked: 0,
        conn,
        tasks: ids.map(|id| TaskSpec { gpu, ..spec(id) }).collect(),
    })
}

/// (agent conn, task_ref, attempt, on a GPU slot) of every assignment.
fn gpu_assignments(cmds: &[Command]) -> Vec<(ConnId, TaskRef, u32, bool)> {
    cmds.iter()
        .filter_map(|c| match c {
            Command::Assign { conn, tasks, .. } => Some(
                tasks
                    .iter()
                    .map(|t| (*conn, t.task_ref, t.attempt, t.gpu))
                    .collect::<Vec<_>>(),
            ),
            _ => None,
        })
        .flatten()
        .collect()
}

fn notices(cmds: &[Command]) -> Vec<String> {
    cmds.iter()
        .filter_map(|c| match c {
            Command::Notice { text, .. } => Some(text.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn gpu_tasks_take_only_free_gpu_slots_and_cpu_tasks_go_to_agents_without_gpus_first() {
    let mut sim = Sim::new();
    sim.attach(1, gpu_hello("g", 2, 4));
    sim.join(2, "c");
    open(&mut sim, 10);
    let cmds = submit_gpu(&mut sim, 10, 0..5, GpuUse::Required);
    let placed = gpu_assignments(&cmds);
    assert_eq!(
        placed.len(),
        2,
        "one task per GPU slot, none ahead: {placed:?}"
    );
    assert!(placed.iter().all(|p| p.0 == 1 && p.3), "{placed:?}");
    assert!(notices(&cmds).is_empty());
    assert_eq!(sim.core.task_counts().gpu_queued, 3);

    // CPU tasks of the same job fill the agent without GPUs first.
    let cpu = gpu_assignments(&submit_gpu(&mut sim, 10, 5..9, GpuUse::None));
    assert_eq!(cpu.len(), 4, "{cpu:?}");
    assert!(cpu.iter().all(|p| p.0 == 2 && !p.3), "{cpu:?}");

    // A finished GPU task frees its slot for the next one, on the GPU.
    let (conn, task_ref, attempt, _) = placed[0];
    let next = gpu_assignments(&sim.send(Event::AgentResults {
        conn,
        results: vec![ok(task_ref, attempt)],
    }));
    assert_eq!(next.iter().filter(|p| p.3).count(), 1, "{next:?}");
    assert!(next.iter().filter(|p| p.3).all(|p| p.0 == 1));
}

#[test]
fn cpu_tasks_fill_the_gpu_agents_cpu_slots_only_when_the_others_are_full() {
    let mut sim = Sim::new();
    sim.attach(1, gpu_hello("g", 1, 4));
    sim.join(2, "c");
    open(&mut sim, 10);
    let placed = gpu_assignments(&submit_gpu(&mut sim, 10, 0..6, GpuUse::None));
    let on_c = placed.iter().filter(|p| p.0 == 2).count();
    let on_g = placed.iter().filter(|p| p.0 == 1).count();
    assert_eq!((on_c, on_g), (4, 2), "{placed:?}");
}

#[test]
fn gpu_tasks_wait_for_a_gpu_agent_and_the_driver_is_told_once() {
    let mut sim = Sim::new();
    sim.join(2, "c");
    open(&mut sim, 10);
    let cmds = submit_gpu(&mut sim, 10, 0..3, GpuUse::Required);
    assert!(gpu_assignments(&cmds).is_empty(), "{cmds:?}");
    let told = notices(&cmds);
    assert_eq!(told.len(), 1, "{cmds:?}");
    assert!(
        told[0].contains("no agent in the cluster has a GPU"),
        "{told:?}"
    );
    assert!(told[0].contains("3 GPU task"), "{told:?}");
    assert!(notices(&submit_gpu(&mut sim, 10, 3..4, GpuUse::Required)).is_empty());

    let cmds = sim.attach(3, gpu_hello("g", 2, 0));
    let placed = gpu_assignments(&cmds);
    assert_eq!(placed.len(), 2, "{cmds:?}");
    assert!(placed.iter().all(|p| p.0 == 3 && p.3));
}

#[test]
fn a_gpu_agent_that_joins_drained_leaves_the_driver_told_that_no_gpu_takes_work() {
    let mut sim = Sim::new();
    sim.join(2, "c");
    open(&mut sim, 10);
    assert_eq!(
        notices(&submit_gpu(&mut sim, 10, 0..3, GpuUse::Required)).len(),
        1
    );
    // Drained before a scheduler restart, say: its GPUs take nothing, and the driver hears it
    // again (the GPUs' arrival had set it free to be told).
    let drained = AgentHello {
        draining: true,
        ..gpu_hello("g", 2, 0)
    };
    let cmds = sim.attach(3, drained);
    assert!(gpu_assignments(&cmds).is_empty(), "{cmds:?}");
    assert_eq!(notices(&cmds).len(), 1, "{cmds:?}");
}

#[test]
fn a_lost_gpu_agents_tasks_wait_and_run_on_the_next_gpu_agent() {
    let mut sim = Sim::new();
    sim.attach(1, gpu_hello("g1", 2, 0));
    sim.join(2, "c");
    open(&mut sim, 10);
    let first = gpu_assignments(&submit_gpu(&mut sim, 10, 0..4, GpuUse::Required));
    assert_eq!(first.len(), 2);
    let cmds = sim.send(Event::AgentDetached { conn: 1 });
    assert!(
        gpu_assignments(&cmds).is_empty(),
        "the CPU agent takes none: {cmds:?}"
    );
    assert_eq!(notices(&cmds).len(), 1, "{cmds:?}");
    assert_eq!(sim.core.task_counts().gpu_queued, 4);

    let cmds = sim.attach(3, gpu_hello("g2", 2, 0));
    let again = gpu_assignments(&cmds);
    assert_eq!(again.len(), 2);
    // The tasks that were running go first, under a new attempt.
    let mut refs: Vec<_> = again.iter().map(|p| (p.1, p.2)).collect();
    refs.sort();
    let mut was: Vec<_> = first.iter().map(|p| (p.1, p.2 + 1)).collect();
    was.sort();
    assert_eq!(refs, was);
}

#[test]
fn gpu_preferring_tasks_take_free_gpus_then_run_on_cpus() {
    let mut sim = Sim::new();
    sim.attach(1, gpu_hello("g", 1, 0));
    sim.join(2, "c");
    open(&mut sim, 10);
    let placed = gpu_assignments(&submit_gpu(&mut sim, 10, 0..6, GpuUse::Preferred));
    assert_eq!(
        placed.iter().filter(|p| p.0 == 1 && p.3).count(),
        1,
        "{placed:?}"
    );
    assert_eq!(
        placed.iter().filter(|p| p.0 == 2 && !p.3).count(),
        5,
        "{placed:?}"
    );

    // With no GPU anywhere, preferring tasks run on CPUs and nobody is told anything.
    let mut sim = Sim::new();
    sim.join(2, "c");
    open(&mut sim, 10);
    let cmds = submit_gpu(&mut sim, 10, 0..3, GpuUse::Preferred);
    assert_eq!(gpu_assignments(&cmds).len(), 3);
    assert!(notices(&cmds).is_empty());
}

#[test]
fn gpu_results_say_they_ran_on_a_gpu() {
    let mut sim = Sim::new();
    sim.attach(1, gpu_hello("g", 1, 1));
    open(&mut sim, 10);
    let placed = gpu_assignments(&submit_gpu(&mut sim, 10, 0..2, GpuUse::Preferred));
    assert_eq!(placed.len(), 2, "{placed:?}");
    let results: Vec<AgentResult> = placed.iter().map(|p| ok(p.1, p.2)).collect();
    let cmds = sim.send(Event::AgentResults { conn: 1, results });
    let mut flags: Vec<bool> = cmds
        .iter()
        .filter_map(|c| match c {
            Command::Deliver { results, .. } => {
                Some(results.iter().map(|r| r.gpu).collect::<Vec<_>>())
            }
            _ => None,
        })
        .flatten()
        .collect();
    flags.sort();
    assert_eq!(flags, vec![false, true]);
}

// ---- work stealing ----

fn revokes(cmds: &[Command]) -> Vec<(ConnId, Vec<TaskRef>)> {
    cmds.iter()
        .filter_map(|c| match c {
            Command::Revoke { conn, tasks } => {
                Some((*conn, tasks.iter().map(|(r, _)| *r).collect()))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn an_idle_agent_steals_unstarted_tasks_only_once_their_agent_gave_them_back() {
    let mut sim = Sim::new();
    sim.join(1, "a");
    open(&mut sim, 10);
    // Agent a takes all 8: 4 running, 4 waiting there.
    let placed = assignments(&submit(&mut sim, 10, 0..8));
    assert_eq!(placed.len(), 8);
    sim.join(2, "b");

    // b runs dry with nothing queued: a is asked for half of its backlog, the newest tasks.
    let cmds = sim.send(Event::Tick);
    let asked = revokes(&cmds);
    assert_eq!(asked.len(), 1, "{cmds:?}");
    let (conn, refs) = asked[0].clone();
    assert_eq!(conn, 1);
    assert_eq!(refs.len(), 2);
    assert!(
        refs.iter().all(|r| *r > placed[3].1),
        "the newest: {refs:?}"
    );
    // Nothing moves before the answer, and no second revoke goes out meanwhile.
    assert!(assignments(&cmds).is_empty());
    assert!(revokes(&sim.send(Event::Tick)).is_empty());

    // a had started one of them; the other is given back, and runs on b under a new attempt.
    let cmds = sim.send(Event::AgentRevoked {
        conn: 1,
        released: vec![(refs[0], 1)],
        kept: vec![(refs[1], 1)],
    });
    let moved = assignments(&cmds);
    assert_eq!(moved, vec![(2, refs[0], 2)], "{cmds:?}");

    // A result of the old attempt from a is dropped; b's counts, once, and the driver is told
    // it is the first run (the placement given back never started).
    let late = sim.send(Event::AgentResults {
        conn: 1,
        results: vec![ok(refs[0], 1)],
    });
    assert!(delivered(&late).is_empty(), "{late:?}");
    let done = sim.send(Event::AgentResults {
        conn: 2,
        results: vec![ok(refs[0], 2)],
    });
    assert_eq!(delivered(&done).len(), 1);
    let runs: Vec<u32> = done
        .iter()
        .filter_map(|c| match c {
            Command::Deliver { results, .. } => Some(results.iter().map(|r| r.attempt)),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(runs, vec![1], "{done:?}");
    // The kept one still completes where it was.
    let kept = sim.send(Event::AgentResults {
        conn: 1,
        results: vec![ok(refs[1], 1)],
    });
    assert_eq!(delivered(&kept).len(), 1);
}

#[test]
fn nothing_is_stolen_while_tasks_wait_in_the_queue() {
    let mut sim = Sim::new();
    sim.join(1, "a");
    open(&mut sim, 10);
    submit(&mut sim, 10, 0..100);
    let cmds = sim.join(2, "b");
    assert_eq!(
        assignments(&cmds).len(),
        8,
        "b takes from the queue: {cmds:?}"
    );
    assert!(revokes(&sim.send(Event::Tick)).is_empty());
}

#[test]
fn a_revoke_answer_that_crossed_a_reconnection_does_not_move_the_newer_attempt() {
    let mut sim = Sim::new();
    sim.join(1, "a");
    open(&mut sim, 10);
    assignments(&submit(&mut sim, 10, 0..8));
    sim.join(2, "b");
    let (_, refs) = revokes(&sim.send(Event::Tick))[0].clone();
    // Agent a reconnects: everything it held is placed again, under attempt 2.
    sim.send(Event::AgentDetached { conn: 1 });
    sim.join(3, "a");
    // The old stream's answer, giving back attempt 1, arrives on the new one.
    let cmds = sim.send(Event::AgentRevoked {
        conn: 3,
        released: vec![(refs[0], 1)],
        kept: vec![],
    });
    assert!(
        assignments(&cmds).iter().all(|p| p.1 != refs[0]),
        "attempt 2 must stay where it runs: {cmds:?}"
    );
}

#[test]
fn an_agent_whose_tasks_had_all_started_is_not_asked_again() {
    let mut sim = Sim::new();
    sim.join(1, "a");
    open(&mut sim, 10);
    assignments(&submit(&mut sim, 10, 0..8));
    sim.join(2, "b");
    let (_, refs) = revokes(&sim.send(Event::Tick))[0].clone();
    sim.send(Event::AgentRevoked {
        conn: 1,
        released: vec![],
        kept: refs.iter().map(|r| (*r, 1)).collect(),
    });
    assert!(revokes(&sim.send(Event::Tick)).is_empty());
}

#[test]
fn a_one_slot_agent_is_refilled_as_soon_as_its_prefetched_task_starts() {
    let mut sim = Sim::new();
    let mut one = hello("a");
    one.resources.cpu_slots = 1;
    sim.attach(1, one);
    open(&mut sim, 10);
    let placed = assignments(&submit(&mut sim, 10, 0..10));
    assert_eq!(
        placed.len(),
        2,
        "one running, one waiting there: {placed:?}"
    );
    // Its first result means the waiting one runs now: another goes to wait behind it, rather
    // than the agent running dry before it is refilled.
    let (conn, task_ref, attempt) = placed[0];
    let cmds = sim.send(Event::AgentResults {
        conn,
        results: vec![AgentResult {
            run_ns: 10_000_000,
            ..ok(task_ref, attempt)
        }],
    });
    assert_eq!(assignments(&cmds).len(), 1, "{cmds:?}");
}

#[test]
fn a_driver_sending_past_its_budget_has_the_excess_refused_and_the_scheduler_does_not_grow() {
    let mut sim = Sim::with_budget(Budget {
        tasks: 3,
        bytes: 250,
    });
    sim.join(1, "a");
    open(&mut sim, 10);
    let sized = |id: u64, bytes: usize| TaskSpec {
        payload: vec![0u8; bytes].into(),
        ..spec(id)
    };
    // Two fit the bytes (200 of 250); the third would pass them; the fourth and fifth fit
    // neither (the count is reached by then: three held).
    let cmds = sim.send(Event::TasksSubmitted {
        acked: 0,
        conn: 10,
        tasks: vec![
            sized(1, 100),
            sized(2, 100),
            sized(3, 100),
            sized(4, 10),
            sized(5, 10),
        ],
    });
    let refused: Vec<u64> = delivered(&cmds)
        .into_iter()
        .filter(|(_, o)| {
            matches!(
                o,
                Outcome::Failed {
                    kind: FailureKind::Refused,
                    ..
                }
            )
        })
        .map(|(id, _)| id)
        .collect();
    assert_eq!(refused, vec![3, 5], "{cmds:?}");
    let counts = sim.core.task_counts();
    assert_eq!(
        (
            counts.queued + counts.running,
            counts.unfinished_peak,
            counts.refused
        ),
        (3, 3, 2)
    );
    // A result is held for the session until acknowledged: it still counts...
    let placed = assignments(&cmds);
    let done = sim.send(Event::AgentResults {
        conn: 1,
        results: vec![ok(placed[0].1, placed[0].2)],
    });
    let seq = done
        .iter()
        .find_map(|c| match c {
            Command::Deliver { results, .. } => results.first().map(|r| r.seq),
            _ => None,
        })
        .expect("the result is delivered");
    assert_eq!(seq, 1, "deliveries count from 1, refusals take no number");
    let cmds = submit(&mut sim, 10, 6..7);
    assert_eq!(delivered(&cmds).len(), 1, "refused: {cmds:?}");
    // ...and its acknowledgement, with the next tasks, gives its share back.
    let cmds = sim.send(Event::TasksSubmitted {
        acked: seq,
        conn: 10,
        tasks: vec![spec(7)],
    });
    assert!(delivered(&cmds).is_empty(), "{cmds:?}");
    assert_eq!(sim.core.task_counts().unfinished_peak, 3);
}

#[test]
fn a_driver_whose_tasks_no_agent_can_take_is_told_once() {
    let mut sim = Sim::new();
    open(&mut sim, 10);
    // No agent yet: the driver hears why its tasks wait, once.
    let said = notices(&submit(&mut sim, 10, 0..2));
    assert_eq!(said.len(), 1, "{said:?}");
    assert!(said[0].contains("no agent has joined"), "{said:?}");
    assert!(notices(&submit(&mut sim, 10, 2..3)).is_empty(), "once");
    // An agent joins and takes them; drained, with more submitted, the driver hears it again.
    sim.join(1, "a");
    let mut out = Vec::new();
    sim.core.set_drain("a", true, &mut out).expect("the agent");
    let said = notices(&submit(&mut sim, 10, 10..30));
    assert_eq!(said.len(), 1, "{said:?}");
    assert!(said[0].contains("1 drained"), "{said:?}");
}

// ---- identities bound to their secrets ----

/// The core's whole answer to a claim without the secret: refuse that stream, nothing else.
fn assert_impersonation_refused(commands: &[Command], conn: ConnId) {
    assert!(
        matches!(
            commands,
            [Command::Refuse { conn: c, reason: crate::core::Refusal::Impersonation { .. } }] if *c == conn
        ),
        "{commands:?}"
    );
}

fn claim(presented: &str, issued: &str) -> crate::core::SecretClaim {
    crate::core::SecretClaim {
        presented_digest: if presented.is_empty() {
            String::new()
        } else {
            format!("digest-of-{presented}")
        },
        issued: issued.into(),
        issued_digest: format!("digest-of-{issued}"),
    }
}

#[test]
fn an_agent_id_claimed_without_its_secret_is_refused_and_the_agent_keeps_its_place() {
    let mut sim = Sim::new();
    let welcomed = sim.send(Event::AgentAttached {
        conn: 1,
        hello: AgentHello {
            secret: claim("", "first"),
            ..hello("a")
        },
    });
    assert!(
        matches!(welcomed.as_slice(), [Command::Welcome { secret, .. }] if secret == "first"),
        "{welcomed:?}"
    );
    // Another connection claims the id with no secret, then with a wrong one.
    for presented in ["", "guess"] {
        let refused = sim.send(Event::AgentAttached {
            conn: 2,
            hello: AgentHello {
                secret: claim(presented, "other"),
                ..hello("a")
            },
        });
        assert_impersonation_refused(&refused, 2);
    }
    // The real agent's stream is untouched, and it comes back with its secret on a new one.
    assert_eq!(sim.state("a"), AgentState::Alive);
    let back = sim.send(Event::AgentAttached {
        conn: 3,
        hello: AgentHello {
            secret: claim("first", "unused"),
            ..hello("a")
        },
    });
    assert!(
        back.iter()
            .any(|c| matches!(c, Command::Welcome { conn: 3, secret, .. } if secret.is_empty())),
        "{back:?}"
    );
}

#[test]
fn a_session_claimed_without_its_secret_is_refused_and_its_driver_can_still_resume() {
    let mut sim = Sim::new();
    let session = |presented: &str| SessionOpen {
        protocol_version: 1,
        session_id: "s1".into(),
        job_name: "job".into(),
        secret: claim(presented, "issued"),
        ..Default::default()
    };
    let opened = sim.send(Event::DriverOpened {
        conn: 1,
        open: session(""),
    });
    assert!(
        matches!(opened.as_slice(), [Command::SessionOpened { secret, resumed: false, .. }] if secret == "issued"),
        "{opened:?}"
    );
    for presented in ["", "guess"] {
        let refused = sim.send(Event::DriverOpened {
            conn: 2,
            open: session(presented),
        });
        assert_impersonation_refused(&refused, 2);
    }
    let resumed = sim.send(Event::DriverOpened {
        conn: 3,
        open: session("issued"),
    });
    assert!(
        resumed.iter().any(|c| matches!(
            c,
            Command::SessionOpened {
                conn: 3,
                resumed: true,
                ..
            }
        )),
        "{resumed:?}"
    );
}

#[test]
fn a_hostname_or_label_with_control_characters_is_refused() {
    let mut sim = Sim::new();
    let mut evil = hello("a");
    evil.hostname = "node\u{1b}[2J".into();
    let refused = sim.attach(1, evil);
    assert!(
        matches!(refused.as_slice(), [Command::Refuse { reason: crate::core::Refusal::InvalidHello(why), .. }] if why.contains("control")),
        "{refused:?}"
    );
    let mut evil = hello("b");
    evil.labels.insert("zone".into(), "a\rb".into());
    let refused = sim.attach(2, evil);
    assert!(
        matches!(refused.as_slice(), [Command::Refuse { .. }]),
        "{refused:?}"
    );
    assert_eq!(sim.core.agents().count(), 0);
}

#[test]
fn a_refused_claim_leaves_the_real_agents_tasks_where_they_run() {
    let mut sim = Sim::new();
    sim.send(Event::AgentAttached {
        conn: 1,
        hello: AgentHello {
            secret: claim("", "first"),
            ..hello("a")
        },
    });
    open(&mut sim, 10);
    sim.send(Event::TasksSubmitted {
        conn: 10,
        acked: 0,
        tasks: vec![spec(1)],
    });
    assert_eq!(counts(&sim), (1, 0, 1));
    let refused = sim.send(Event::AgentAttached {
        conn: 2,
        hello: AgentHello {
            secret: claim("", "other"),
            ..hello("a")
        },
    });
    assert_impersonation_refused(&refused, 2);
    // Still running on the real agent: not requeued, not placed again.
    assert_eq!(counts(&sim), (1, 0, 1));
}

// ---- nested tasks ----

/// A child at `ordinal` described by `digest` (what it is, as the parent's worker saw it).
fn child(ordinal: u32, digest: u64) -> ChildSpec {
    ChildSpec {
        ordinal,
        digest,
        spec: spec(0),
    }
}

/// The task `parent` (at `attempt`), running on the agent of `conn`, submits `children`.
fn spawn(
    sim: &mut Sim,
    conn: ConnId,
    parent: TaskRef,
    attempt: u32,
    children: Vec<ChildSpec>,
) -> Vec<Command> {
    sim.send(Event::ChildrenSubmitted {
        conn,
        parent,
        attempt,
        children,
    })
}

fn wait(
    sim: &mut Sim,
    conn: ConnId,
    task_ref: TaskRef,
    attempt: u32,
    waiting: bool,
) -> Vec<Command> {
    sim.send(Event::TaskWaiting {
        conn,
        task_ref,
        attempt,
        waiting,
    })
}

/// (agent conn, parent, parent's attempt, ordinal, outcome) of every child result sent to a
/// parent's worker.
fn child_results(cmds: &[Command]) -> Vec<(ConnId, TaskRef, u32, u64, Outcome)> {
    cmds.iter()
        .filter_map(|c| match c {
            Command::ChildResults {
                conn,
                parent,
                attempt,
                results,
            } => Some(
                results
                    .iter()
                    .map(|r| (*conn, *parent, *attempt, r.task_id, r.outcome.clone()))
                    .collect::<Vec<_>>(),
            ),
            _ => None,
        })
        .flatten()
        .collect()
}

/// (agent conn, task) of every cancel sent to agents, sorted.
fn cancelled_on_agents(cmds: &[Command]) -> Vec<(ConnId, TaskRef)> {
    let mut all: Vec<(ConnId, TaskRef)> = cmds
        .iter()
        .filter_map(|c| match c {
            Command::CancelOnAgent { conn, refs } => {
                Some(refs.iter().map(|r| (*conn, *r)).collect::<Vec<_>>())
            }
            _ => None,
        })
        .flatten()
        .collect();
    all.sort_unstable();
    all
}

/// (agent conn, task_ref, attempt) of every nested task assigned (its id is the scheduler's).
fn assigned_children(cmds: &[Command]) -> Vec<(ConnId, TaskRef, u32)> {
    cmds.iter()
        .filter_map(|c| match c {
            Command::Assign { conn, tasks, .. } => Some(
                tasks
                    .iter()
                    .filter(|t| t.spec.task_id & jobs::CHILD_ID != 0)
                    .map(|t| (*conn, t.task_ref, t.attempt))
                    .collect::<Vec<_>>(),
            ),
            _ => None,
        })
        .flatten()
        .collect()
}

fn output_ok() -> Outcome {
    Outcome::Output(bytes::Bytes::from_static(b"ok"))
}

fn one_slot(id: &str) -> AgentHello {
    let mut h = hello(id);
    h.resources.cpu_slots = 1;
    h
}

fn cancelled_result(task_ref: TaskRef, attempt: u32) -> AgentResult {
    AgentResult {
        outcome: Outcome::Failed {
            kind: FailureKind::Cancelled,
            message: "cancelled".into(),
        },
        run_ns: 0,
        ..ok(task_ref, attempt)
    }
}

#[test]
fn childrens_results_go_to_their_parents_agent_and_never_to_the_driver() {
    let mut sim = Sim::new();
    sim.join(1, "a");
    open(&mut sim, 10);
    let [(_, p, 1)] = assignments(&submit(&mut sim, 10, 0..1))[..] else {
        panic!("the parent is placed")
    };
    let cmds = spawn(&mut sim, 1, p, 1, vec![child(0, 100), child(1, 101)]);
    let kids = assigned_children(&cmds);
    assert_eq!(kids.len(), 2, "{cmds:?}");
    assert_eq!(assignments(&cmds), kids, "only the children are placed");
    assert!(delivered(&cmds).is_empty() && child_results(&cmds).is_empty());
    assert_eq!(counts(&sim), (1, 0, 3));
    // Their results go to the parent's worker, by ordinal, and to the driver never.
    for (i, &(conn, c, attempt)) in kids.iter().enumerate() {
        let cmds = sim.send(Event::AgentResults {
            conn,
            results: vec![ok(c, attempt)],
        });
        assert!(delivered(&cmds).is_empty(), "{cmds:?}");
        assert_eq!(
            child_results(&cmds),
            vec![(1, p, 1, i as u64, output_ok())],
            "{cmds:?}"
        );
    }
    assert_eq!(counts(&sim), (1, 0, 1));
    // The parent's own result goes to the driver, and takes its children's results with it.
    let cmds = sim.send(Event::AgentResults {
        conn: 1,
        results: vec![ok(p, 1)],
    });
    assert_eq!(delivered(&cmds), vec![(0, output_ok())]);
    assert!(child_results(&cmds).is_empty() && cancelled_on_agents(&cmds).is_empty());
    assert_eq!(counts(&sim), (1, 0, 0));
    let [view] = &sim.core.jobs()[..] else {
        panic!("one job")
    };
    assert_eq!((view.unfinished, view.delivered), (0, 1));
}

#[test]
fn a_waiting_parent_lends_its_slot_to_its_child_on_a_one_slot_agent() {
    let mut sim = Sim::new();
    sim.attach(1, one_slot("a"));
    open(&mut sim, 10);
    // The parent runs and another task waits there (the agent's prefetch): the agent is full.
    let placed = assignments(&submit(&mut sim, 10, 0..2));
    assert_eq!(placed.len(), 2, "{placed:?}");
    let (_, p, _) = placed[0];
    let free = |sim: &Sim| sim.core.agent(&AgentId("a".into())).unwrap().free_cpus();
    assert_eq!(free(&sim), -1);
    let cmds = spawn(&mut sim, 1, p, 1, vec![child(0, 7)]);
    assert!(assignments(&cmds).is_empty(), "no room: {cmds:?}");
    assert_eq!(counts(&sim), (1, 1, 2));
    // A wait of another attempt, or from another stream, frees nothing.
    assert!(assignments(&wait(&mut sim, 1, p, 2, true)).is_empty());
    assert!(assignments(&wait(&mut sim, 9, p, 1, true)).is_empty());
    assert_eq!(free(&sim), -1);
    // The parent waits for its child: its slot takes the child, there.
    let cmds = wait(&mut sim, 1, p, 1, true);
    let kids = assigned_children(&cmds);
    assert_eq!(assignments(&cmds), kids);
    let [(1, c, 1)] = kids[..] else {
        panic!("the child goes to the parent's slot: {cmds:?}")
    };
    assert_eq!(counts(&sim), (1, 0, 3));
    assert_eq!(free(&sim), -1, "the child holds the slot the parent lent");
    // Saying it again changes nothing.
    assert!(wait(&mut sim, 1, p, 1, true).is_empty());
    assert_eq!(free(&sim), -1);
    // The child's result goes to the waiting parent, which resumes and takes its slot back.
    let cmds = sim.send(Event::AgentResults {
        conn: 1,
        results: vec![ok(c, 1)],
    });
    assert_eq!(child_results(&cmds), vec![(1, p, 1, 0, output_ok())]);
    assert_eq!(free(&sim), 0, "the parent still lends its slot");
    assert!(wait(&mut sim, 1, p, 1, false).is_empty());
    assert_eq!(free(&sim), -1);
    let cmds = sim.send(Event::AgentResults {
        conn: 1,
        results: vec![ok(p, 1)],
    });
    assert_eq!(delivered(&cmds), vec![(0, output_ok())]);
    assert_eq!(free(&sim), 0);
}

#[test]
fn a_waiting_parents_result_ends_its_wait() {
    let mut sim = Sim::new();
    sim.attach(1, one_slot("a"));
    open(&mut sim, 10);
    let placed = assignments(&submit(&mut sim, 10, 0..2));
    let (_, p, _) = placed[0];
    wait(&mut sim, 1, p, 1, true);
    let free = |sim: &Sim| sim.core.agent(&AgentId("a".into())).unwrap().free_cpus();
    assert_eq!(free(&sim), 0);
    // The parent ends while it waits (its worker crashed, say): it runs again, and its new
    // attempt holds a slot like any task.
    let cmds = sim.send(Event::AgentResults {
        conn: 1,
        results: vec![crash(p, 1, 1)],
    });
    assert_eq!(assignments(&cmds), vec![(1, p, 2)]);
    assert_eq!(free(&sim), -1);
    // The old attempt's resumption, late, changes nothing.
    wait(&mut sim, 1, p, 1, false);
    wait(&mut sim, 1, p, 1, true);
    assert_eq!(free(&sim), -1);
}

#[test]
fn a_rerun_parent_gets_its_finished_childrens_results_at_once_and_no_child_runs_twice() {
    let mut sim = Sim::new();
    let mut assigned: Vec<(ConnId, TaskRef, u32)> = Vec::new();
    let mut track = |cmds: &[Command]| assigned.extend(assignments(cmds));
    sim.attach(1, one_slot("a"));
    open(&mut sim, 10);
    let cmds = submit(&mut sim, 10, 0..1);
    track(&cmds);
    let [(1, p, 1)] = assignments(&cmds)[..] else {
        panic!("{cmds:?}")
    };
    sim.join(2, "b");
    let cmds = spawn(&mut sim, 1, p, 1, vec![child(0, 10), child(1, 11)]);
    track(&cmds);
    let [(2, c0, 1), (2, c1, 1)] = assigned_children(&cmds)[..] else {
        panic!("both children go to the agent with room: {cmds:?}")
    };
    // c0 finishes: its result goes to the parent's first run.
    let cmds = sim.send(Event::AgentResults {
        conn: 2,
        results: vec![ok(c0, 1)],
    });
    track(&cmds);
    assert_eq!(child_results(&cmds), vec![(1, p, 1, 0, output_ok())]);
    // The parent's agent is lost: the parent runs again on b; its children go on.
    let cmds = sim.send(Event::AgentDetached { conn: 1 });
    track(&cmds);
    assert_eq!(assignments(&cmds), vec![(2, p, 2)], "{cmds:?}");
    assert!(cancelled_on_agents(&cmds).is_empty(), "{cmds:?}");
    assert_eq!(counts(&sim), (1, 0, 2));
    // The re-run submits the same children: c0's result comes back at once, c1 is not
    // created again.
    let cmds = spawn(&mut sim, 2, p, 2, vec![child(0, 10), child(1, 11)]);
    track(&cmds);
    assert_eq!(child_results(&cmds), vec![(2, p, 2, 0, output_ok())]);
    assert!(assignments(&cmds).is_empty(), "{cmds:?}");
    assert_eq!(counts(&sim), (1, 0, 2));
    // c1's result goes to the new run.
    let cmds = sim.send(Event::AgentResults {
        conn: 2,
        results: vec![ok(c1, 1)],
    });
    track(&cmds);
    assert_eq!(child_results(&cmds), vec![(2, p, 2, 1, output_ok())]);
    assert!(delivered(&cmds).is_empty());
    let cmds = sim.send(Event::AgentResults {
        conn: 2,
        results: vec![ok(p, 2)],
    });
    track(&cmds);
    assert_eq!(delivered(&cmds), vec![(0, output_ok())]);
    assert_eq!(counts(&sim), (1, 0, 0));
    // Every child was placed once; only the parent twice (its agent was lost).
    assert_eq!(assigned, vec![(1, p, 1), (2, c0, 1), (2, c1, 1), (2, p, 2)]);
}

#[test]
fn a_child_finishing_while_its_parent_waits_to_run_again_is_kept_for_the_rerun() {
    let mut sim = Sim::new();
    sim.attach(1, one_slot("a"));
    open(&mut sim, 10);
    let [(1, p, 1)] = assignments(&submit(&mut sim, 10, 0..1))[..] else {
        panic!()
    };
    sim.join(2, "b");
    let cmds = spawn(&mut sim, 1, p, 1, vec![child(0, 10), child(1, 11)]);
    let kids = assigned_children(&cmds);
    assert!(kids.len() == 2 && kids.iter().all(|k| k.0 == 2), "{kids:?}");
    // b is drained (its children run on) and a is lost: the parent waits in the queue.
    sim.core.set_drain("b", true, &mut Vec::new()).unwrap();
    let cmds = sim.send(Event::AgentDetached { conn: 1 });
    assert!(assignments(&cmds).is_empty(), "{cmds:?}");
    assert_eq!(counts(&sim), (1, 1, 2));
    // Both children finish meanwhile: their results are kept, sent to no worker (the first run
    // is gone, the second has not asked).
    let cmds = sim.send(Event::AgentResults {
        conn: 2,
        results: kids.iter().map(|&(_, c, at)| ok(c, at)).collect(),
    });
    assert!(
        child_results(&cmds).is_empty() && delivered(&cmds).is_empty(),
        "{cmds:?}"
    );
    // The parent runs again on a new agent and submits them again: both results at once,
    // nothing placed.
    let cmds = sim.join(3, "c");
    assert_eq!(assignments(&cmds), vec![(3, p, 2)], "{cmds:?}");
    let cmds = spawn(&mut sim, 3, p, 2, vec![child(0, 10), child(1, 11)]);
    let mut got = child_results(&cmds);
    got.sort_by_key(|r| r.3);
    assert_eq!(
        got,
        vec![(3, p, 2, 0, output_ok()), (3, p, 2, 1, output_ok())]
    );
    assert!(assignments(&cmds).is_empty());
}

#[test]
fn a_lost_childs_next_run_reports_to_the_same_parent_run() {
    let mut sim = Sim::new();
    sim.attach(1, one_slot("a"));
    open(&mut sim, 10);
    let [(1, p, 1)] = assignments(&submit(&mut sim, 10, 0..1))[..] else {
        panic!()
    };
    sim.join(2, "b");
    let [(2, c, 1)] = assigned_children(&spawn(&mut sim, 1, p, 1, vec![child(0, 5)]))[..] else {
        panic!()
    };
    // The child's agent is lost: the child runs again (the parent's agent has room for it
    // as prefetch), the parent is not disturbed.
    let cmds = sim.send(Event::AgentDetached { conn: 2 });
    assert_eq!(assignments(&cmds), vec![(1, c, 2)], "{cmds:?}");
    // The lost run's late result is dropped; the new one goes to the parent's run, once.
    assert!(
        child_results(&sim.send(Event::AgentResults {
            conn: 2,
            results: vec![ok(c, 1)],
        }))
        .is_empty()
    );
    let cmds = sim.send(Event::AgentResults {
        conn: 1,
        results: vec![ok(c, 2)],
    });
    assert_eq!(child_results(&cmds), vec![(1, p, 1, 0, output_ok())]);
    let twice = sim.send(Event::AgentResults {
        conn: 1,
        results: vec![ok(c, 2)],
    });
    assert!(child_results(&twice).is_empty());
}

#[test]
fn another_digest_at_a_known_ordinal_cancels_the_old_child_and_runs_the_new_one() {
    let mut sim = Sim::new();
    sim.attach(1, one_slot("a"));
    open(&mut sim, 10);
    let [(1, p, 1)] = assignments(&submit(&mut sim, 10, 0..1))[..] else {
        panic!()
    };
    sim.join(2, "b");
    let cmds = spawn(
        &mut sim,
        1,
        p,
        1,
        vec![child(0, 10), child(1, 11), child(2, 12)],
    );
    let [(2, c0, 1), (2, c1, 1), (2, c2, 1)] = assigned_children(&cmds)[..] else {
        panic!("{cmds:?}")
    };
    // c0 finishes; then the parent's agent is lost and it runs again on b.
    sim.send(Event::AgentResults {
        conn: 2,
        results: vec![ok(c0, 1)],
    });
    assert_eq!(
        assignments(&sim.send(Event::AgentDetached { conn: 1 })),
        vec![(2, p, 2)]
    );
    // This run went another way: other children at ordinals 0 and 1 (the finished c0's
    // result is released, the running c1 cancelled), the same at 2.
    let cmds = spawn(
        &mut sim,
        2,
        p,
        2,
        vec![child(0, 20), child(1, 21), child(2, 12)],
    );
    assert!(child_results(&cmds).is_empty(), "{cmds:?}");
    assert_eq!(cancelled_on_agents(&cmds), vec![(2, c1)], "{cmds:?}");
    let new = assigned_children(&cmds);
    assert_eq!(new.len(), 2, "{cmds:?}");
    assert!(new.iter().all(|&(_, r, _)| ![c0, c1, c2].contains(&r)));
    assert_eq!(counts(&sim), (1, 0, 4), "p, c2 and the two new ones");
    // The cancelled child's result, whatever it is, reaches nobody.
    let cmds = sim.send(Event::AgentResults {
        conn: 2,
        results: vec![ok(c1, 1)],
    });
    assert!(child_results(&cmds).is_empty() && delivered(&cmds).is_empty());
    // The new children and c2 report to the new run, each under its ordinal.
    let cmds = sim.send(Event::AgentResults {
        conn: 2,
        results: new
            .iter()
            .chain(&[(2, c2, 1)])
            .map(|&(_, r, at)| ok(r, at))
            .collect(),
    });
    let mut got: Vec<u64> = child_results(&cmds)
        .into_iter()
        .map(|(conn, parent, attempt, ordinal, _)| {
            assert_eq!((conn, parent, attempt), (2, p, 2));
            ordinal
        })
        .collect();
    got.sort_unstable();
    assert_eq!(got, vec![0, 1, 2]);
}

#[test]
fn a_parent_that_finishes_cancels_its_unfinished_children_and_grandchildren() {
    let mut sim = Sim::new();
    sim.join(1, "a");
    open(&mut sim, 10);
    let [(1, p, 1)] = assignments(&submit(&mut sim, 10, 0..1))[..] else {
        panic!()
    };
    let cmds = spawn(&mut sim, 1, p, 1, vec![child(0, 10), child(1, 11)]);
    let [(1, c0, 1), (1, c1, 1)] = assigned_children(&cmds)[..] else {
        panic!("{cmds:?}")
    };
    // c0 submits ten: five fit on the agent (4 slots and 4 of prefetch), five wait.
    let cmds = spawn(
        &mut sim,
        1,
        c0,
        1,
        (0..10).map(|i| child(i, 100 + u64::from(i))).collect(),
    );
    let grandchildren = assigned_children(&cmds);
    assert_eq!(grandchildren.len(), 5, "{cmds:?}");
    assert_eq!(counts(&sim), (1, 5, 8));
    // One grandchild finishes: its result is kept in c0 for c0's run.
    let (_, g0, _) = grandchildren[0];
    let cmds = sim.send(Event::AgentResults {
        conn: 1,
        results: vec![ok(g0, 1)],
    });
    assert_eq!(child_results(&cmds).len(), 1);
    let placed_after_g0 = assigned_children(&cmds);
    // The parent has its result: every unfinished descendant is cancelled, the running ones on
    // the agent, and nothing of theirs is placed.
    let cmds = sim.send(Event::AgentResults {
        conn: 1,
        results: vec![ok(p, 1)],
    });
    assert_eq!(delivered(&cmds), vec![(0, output_ok())]);
    assert!(assignments(&cmds).is_empty(), "{cmds:?}");
    let mut running: Vec<(ConnId, TaskRef)> = [(1, c0, 1), (1, c1, 1)]
        .iter()
        .chain(&grandchildren[1..])
        .chain(&placed_after_g0)
        .map(|&(conn, r, _)| (conn, r))
        .collect();
    running.sort_unstable();
    assert_eq!(cancelled_on_agents(&cmds), running);
    assert_eq!(counts(&sim), (1, 0, 0));
    // Their ends (a cancel, a result that crossed it) reach nobody and place nothing.
    let cmds = sim.send(Event::AgentResults {
        conn: 1,
        results: running
            .iter()
            .enumerate()
            .map(|(i, &(_, r))| {
                if i % 2 == 0 {
                    cancelled_result(r, 1)
                } else {
                    ok(r, 1)
                }
            })
            .collect(),
    });
    assert!(cmds.is_empty(), "{cmds:?}");
    // A late submission by a cancelled child creates nothing.
    assert!(spawn(&mut sim, 1, c0, 1, vec![child(10, 1)]).is_empty());
    assert_eq!(counts(&sim), (1, 0, 0));
    // The agent is all free again.
    assert_eq!(assignments(&submit(&mut sim, 10, 1..9)).len(), 8);
}

#[test]
fn a_driver_cancelling_a_parent_cancels_its_descendants_without_results_for_them() {
    let mut sim = Sim::new();
    sim.join(1, "a");
    open(&mut sim, 10);
    let [(1, p, 1)] = assignments(&submit(&mut sim, 10, 0..1))[..] else {
        panic!()
    };
    let [(1, c, 1)] = assigned_children(&spawn(&mut sim, 1, p, 1, vec![child(0, 1)]))[..] else {
        panic!()
    };
    let [(1, g, 1)] = assigned_children(&spawn(&mut sim, 1, c, 1, vec![child(0, 2)]))[..] else {
        panic!()
    };
    // The driver cannot cancel the scheduler's own ids; it cancels its task.
    let cmds = sim.send(Event::TasksCancelled {
        conn: 10,
        task_ids: vec![jobs::CHILD_ID | c],
    });
    assert!(cmds.is_empty(), "{cmds:?}");
    let cmds = sim.send(Event::TasksCancelled {
        conn: 10,
        task_ids: vec![0],
    });
    assert!(matches!(
        delivered(&cmds)[..],
        [(
            0,
            Outcome::Failed {
                kind: FailureKind::Cancelled,
                ..
            }
        )]
    ));
    assert_eq!(cancelled_on_agents(&cmds), vec![(1, p), (1, c), (1, g)]);
    assert_waits_released(&cmds);
    // The parent and the child each waited for a child of theirs: both waits end.
    let mut released: Vec<TaskRef> = child_results(&cmds).iter().map(|r| r.1).collect();
    released.sort_unstable();
    assert_eq!(released, vec![p, c], "{cmds:?}");
    assert_eq!(counts(&sim), (1, 0, 0));
}

/// The only results of children among `cmds` release waits: each tells a task cancelled on
/// its agent that a child it waits for is cancelled too (so that its worker's wait ends).
fn assert_waits_released(cmds: &[Command]) {
    let cancelled = cancelled_on_agents(cmds);
    for (conn, parent, _, _, outcome) in child_results(cmds) {
        assert!(
            matches!(
                outcome,
                Outcome::Failed {
                    kind: FailureKind::Cancelled,
                    ..
                }
            ),
            "{outcome:?}"
        );
        assert!(
            cancelled.contains(&(conn, parent)),
            "a wait released for {parent}, which was not cancelled: {cmds:?}"
        );
    }
}

#[test]
fn an_operator_cancel_mid_recursion_leaves_nothing_and_answers_only_the_drivers_tasks() {
    let mut sim = Sim::new();
    sim.join(1, "a");
    sim.join(2, "b");
    open(&mut sim, 10);
    let placed = assignments(&submit(&mut sim, 10, 0..3));
    assert_eq!(placed.len(), 3);
    // Task 0 recurses three levels deep, wide enough that some of it waits in the queue.
    let (conn, p, _) = placed[0];
    let mut level = vec![(conn, p)];
    let mut all_placed: Vec<(ConnId, TaskRef)> = placed.iter().map(|&(c, r, _)| (c, r)).collect();
    for depth in 0..3 {
        let mut next = Vec::new();
        for &(conn, parent) in &level {
            let cmds = spawn(
                &mut sim,
                conn,
                parent,
                1,
                (0..2)
                    .map(|i| child(i, depth * 10 + u64::from(i)))
                    .collect(),
            );
            let kids = assigned_children(&cmds);
            all_placed.extend(kids.iter().map(|&(c, r, _)| (c, r)));
            next.extend(kids.iter().map(|&(c, r, _)| (c, r)));
        }
        level = next;
    }
    assert!(
        !level.is_empty(),
        "three levels below the driver's task run"
    );
    let (_, queued, running) = counts(&sim);
    assert_eq!(running, all_placed.len());
    assert!(queued > 0, "some of the recursion waits");
    let mut out = Vec::new();
    let (view, items) = sim.core.cancel_job("s10", &mut out).unwrap();
    assert_eq!(sim.core.jobs.counts(), sim.core.jobs.counts_by_scan());
    assert_eq!((view.unfinished, items), (0, 3));
    // The driver hears of its three tasks, once each, and of nothing else.
    let mut answered: Vec<u64> = delivered(&out)
        .into_iter()
        .map(|(id, o)| {
            assert!(matches!(
                o,
                Outcome::Failed {
                    kind: FailureKind::Cancelled,
                    ..
                }
            ));
            id
        })
        .collect();
    answered.sort_unstable();
    assert_eq!(answered, vec![0, 1, 2]);
    assert!(assignments(&out).is_empty());
    assert_waits_released(&out);
    // Every placed task is stopped on its agent; nothing is queued or running.
    all_placed.sort_unstable();
    assert_eq!(cancelled_on_agents(&out), all_placed);
    assert_eq!(counts(&sim), (1, 0, 0));
    // The agents' reports and late submissions of the cancelled tasks reach nobody.
    for agent in [1, 2] {
        let cmds = sim.send(Event::AgentResults {
            conn: agent,
            results: all_placed
                .iter()
                .filter(|p| p.0 == agent)
                .map(|&(_, r)| cancelled_result(r, 1))
                .collect(),
        });
        assert!(cmds.is_empty(), "{cmds:?}");
    }
    assert!(spawn(&mut sim, conn, p, 1, vec![child(9, 9)]).is_empty());
    assert_eq!(counts(&sim), (1, 0, 0));
    // What the driver sends now fails at once.
    let cmds = submit(&mut sim, 10, 3..4);
    assert!(matches!(
        delivered(&cmds)[..],
        [(
            3,
            Outcome::Failed {
                kind: FailureKind::Cancelled,
                ..
            }
        )]
    ));
}

#[test]
fn children_submitted_by_a_stale_attempt_are_dropped() {
    let mut sim = Sim::new();
    sim.attach(1, one_slot("a"));
    open(&mut sim, 10);
    let [(1, p, 1)] = assignments(&submit(&mut sim, 10, 0..1))[..] else {
        panic!()
    };
    // Its worker crashes: attempt 2 runs on the same agent.
    let cmds = sim.send(Event::AgentResults {
        conn: 1,
        results: vec![crash(p, 1, 1)],
    });
    assert_eq!(assignments(&cmds), vec![(1, p, 2)]);
    // What attempt 1 submitted on its way down is dropped.
    assert!(spawn(&mut sim, 1, p, 1, vec![child(0, 1)]).is_empty());
    assert_eq!(counts(&sim), (1, 0, 1));
    // The agent is lost; the parent runs on b under attempt 3.
    sim.join(2, "b");
    let cmds = sim.send(Event::AgentDetached { conn: 1 });
    assert_eq!(assignments(&cmds), vec![(2, p, 3)]);
    // Attempt 2, on the lost stream, and on a new stream of the same agent: dropped.
    assert!(spawn(&mut sim, 1, p, 2, vec![child(0, 1)]).is_empty());
    sim.attach(3, one_slot("a"));
    assert!(spawn(&mut sim, 3, p, 2, vec![child(0, 1)]).is_empty());
    // The right attempt from another agent's stream: dropped too.
    assert!(spawn(&mut sim, 3, p, 3, vec![child(0, 1)]).is_empty());
    assert_eq!(counts(&sim), (1, 0, 1));
    // Attempt 3, where it runs, is heard.
    let cmds = spawn(&mut sim, 2, p, 3, vec![child(0, 1)]);
    assert_eq!(assigned_children(&cmds).len(), 1, "{cmds:?}");
    assert_eq!(counts(&sim), (1, 0, 2));
}

#[test]
fn nested_tasks_past_their_budget_are_refused_to_the_parent_and_leave_the_drivers_budget_alone() {
    let mut sim = Sim::with_budget(Budget {
        tasks: 3,
        bytes: 1 << 20,
    });
    sim.join(1, "a");
    sim.join(2, "b");
    open(&mut sim, 10);
    let [(pc, p, 1)] = assignments(&submit(&mut sim, 10, 0..1))[..] else {
        panic!()
    };
    // Five children: three fit the nested budget, the last two are refused to the parent.
    let cmds = spawn(
        &mut sim,
        pc,
        p,
        1,
        (0..5).map(|i| child(i, u64::from(i))).collect(),
    );
    let kids = assigned_children(&cmds);
    assert_eq!(kids.len(), 3, "{cmds:?}");
    let refused = child_results(&cmds);
    assert_eq!(
        refused
            .iter()
            .map(|r| (r.0, r.1, r.2, r.3))
            .collect::<Vec<_>>(),
        vec![(pc, p, 1, 3), (pc, p, 1, 4)]
    );
    for (.., outcome) in &refused {
        let Outcome::Failed {
            kind: FailureKind::Refused,
            message,
        } = outcome
        else {
            panic!("{outcome:?}")
        };
        assert!(message.contains("nested"), "{message}");
    }
    assert!(delivered(&cmds).is_empty());
    // The driver's own budget is its own: two more of its tasks are admitted (three held)...
    let cmds = submit(&mut sim, 10, 1..3);
    assert!(delivered(&cmds).is_empty(), "{cmds:?}");
    let others = assignments(&cmds);
    assert_eq!(others.len(), 2);
    // ...and the fourth is refused by it, to the driver.
    let cmds = submit(&mut sim, 10, 3..4);
    assert!(matches!(
        delivered(&cmds)[..],
        [(
            3,
            Outcome::Failed {
                kind: FailureKind::Refused,
                ..
            }
        )]
    ));
    // A child's result kept for its parent still counts: another child is refused...
    let (kc, k0, _) = kids[0];
    let cmds = sim.send(Event::AgentResults {
        conn: kc,
        results: vec![ok(k0, 1)],
    });
    assert_eq!(child_results(&cmds).len(), 1);
    let cmds = spawn(&mut sim, pc, p, 1, vec![child(5, 5)]);
    assert!(matches!(
        child_results(&cmds)[..],
        [(
            _,
            _,
            1,
            5,
            Outcome::Failed {
                kind: FailureKind::Refused,
                ..
            }
        )]
    ));
    // ...until the parent has its result: then its children's share is free again, for the
    // children of the driver's other tasks.
    let cmds = sim.send(Event::AgentResults {
        conn: pc,
        results: vec![ok(p, 1)],
    });
    assert_eq!(delivered(&cmds), vec![(0, output_ok())]);
    let (qc, q, _) = others[0];
    let cmds = spawn(&mut sim, qc, q, 1, (0..3).map(|i| child(i, 1)).collect());
    assert!(child_results(&cmds).is_empty(), "{cmds:?}");
    assert_eq!(assigned_children(&cmds).len(), 3);
}

/// A session with a budget of 100 tasks and 250 bytes, and its one task placed on agent 1.
fn a_parent_with_a_budget_of_250_bytes() -> (Sim, TaskRef) {
    let mut sim = Sim::with_budget(Budget {
        tasks: 100,
        bytes: 250,
    });
    sim.join(1, "a");
    open(&mut sim, 10);
    let [(1, p, 1)] = assignments(&submit(&mut sim, 10, 0..1))[..] else {
        panic!("the parent is placed on agent 1")
    };
    (sim, p)
}

/// A child at `ordinal` whose argument is `bytes` long.
fn child_of_bytes(ordinal: u32, bytes: usize) -> ChildSpec {
    ChildSpec {
        spec: TaskSpec {
            payload: vec![0u8; bytes].into(),
            ..spec(0)
        },
        ..child(ordinal, u64::from(ordinal))
    }
}

#[test]
fn childrens_arguments_do_not_take_the_drivers_byte_budget() {
    let (mut sim, p) = a_parent_with_a_budget_of_250_bytes();
    // The parent's children carry 240 bytes of arguments between them (their own budget holds
    // 250).
    let big = |ordinal| child_of_bytes(ordinal, 80);
    let cmds = spawn(&mut sim, 1, p, 1, (0..3).map(big).collect());
    assert_eq!(assigned_children(&cmds).len(), 3, "{cmds:?}");
    // The driver's own task fits the bytes it was granted: it is admitted.
    let cmds = sim.send(Event::TasksSubmitted {
        conn: 10,
        acked: 0,
        tasks: vec![TaskSpec {
            payload: vec![0u8; 200].into(),
            ..spec(1)
        }],
    });
    assert!(delivered(&cmds).is_empty(), "{cmds:?}");
    // Past them it is refused, and the refusal counts only the driver's bytes.
    let cmds = sim.send(Event::TasksSubmitted {
        conn: 10,
        acked: 0,
        tasks: vec![TaskSpec {
            payload: vec![0u8; 100].into(),
            ..spec(2)
        }],
    });
    let [
        (
            2,
            Outcome::Failed {
                kind: FailureKind::Refused,
                message,
            },
        ),
    ] = &delivered(&cmds)[..]
    else {
        panic!("{cmds:?}")
    };
    assert!(message.contains("2 tasks and 200 bytes"), "{message}");
}

#[test]
fn a_lent_slot_goes_to_the_child_before_the_drivers_older_tasks() {
    let mut sim = Sim::new();
    sim.attach(1, one_slot("a"));
    open(&mut sim, 10);
    // The parent runs, task 1 waits on the agent, tasks 2 and 3 in the queue.
    let placed = assignments(&submit(&mut sim, 10, 0..4));
    assert_eq!(placed.len(), 2);
    let (_, p, _) = placed[0];
    assert!(spawn(&mut sim, 1, p, 1, vec![child(0, 1)]).is_empty());
    assert_eq!(counts(&sim), (1, 3, 2));
    // Deeper first: the slot the parent lends goes to its child, not to task 2.
    let cmds = wait(&mut sim, 1, p, 1, true);
    assert_eq!(assignments(&cmds).len(), 1, "{cmds:?}");
    assert_eq!(assigned_children(&cmds).len(), 1, "{cmds:?}");
}

#[test]
fn a_parent_dropping_a_childs_future_cancels_it_and_is_answered_once() {
    let mut sim = Sim::new();
    sim.join(1, "a");
    open(&mut sim, 10);
    let [(1, p, 1)] = assignments(&submit(&mut sim, 10, 0..1))[..] else {
        panic!()
    };
    let cmds = spawn(&mut sim, 1, p, 1, vec![child(0, 1), child(1, 2)]);
    let [(1, c0, 1), (1, c1, 1)] = assigned_children(&cmds)[..] else {
        panic!("{cmds:?}")
    };
    sim.send(Event::AgentResults {
        conn: 1,
        results: vec![ok(c0, 1)],
    });
    // Dropping both: the finished one stays as it is, the running one is stopped and answered
    // as cancelled. Another attempt's or stream's drop changes nothing.
    let drop_them = |sim: &mut Sim, conn, attempt| {
        sim.send(Event::ChildrenCancelled {
            conn,
            parent: p,
            attempt,
            ordinals: vec![0, 1],
        })
    };
    assert!(drop_them(&mut sim, 1, 2).is_empty());
    assert!(drop_them(&mut sim, 7, 1).is_empty());
    let cmds = drop_them(&mut sim, 1, 1);
    assert_eq!(cancelled_on_agents(&cmds), vec![(1, c1)]);
    let answered = child_results(&cmds);
    assert!(
        matches!(
            answered[..],
            [(
                1,
                _,
                1,
                1,
                Outcome::Failed {
                    kind: FailureKind::Cancelled,
                    ..
                }
            )]
        ),
        "{answered:?}"
    );
    assert!(delivered(&cmds).is_empty());
    assert_eq!(counts(&sim), (1, 0, 1));
    // Dropped again, or its late result: nobody hears of it.
    assert!(drop_them(&mut sim, 1, 1).is_empty());
    let cmds = sim.send(Event::AgentResults {
        conn: 1,
        results: vec![ok(c1, 1)],
    });
    assert!(child_results(&cmds).is_empty() && delivered(&cmds).is_empty());
}

#[test]
fn nested_tasks_past_their_byte_budget_are_refused_to_the_parent_and_not_remembered() {
    let (mut sim, p) = a_parent_with_a_budget_of_250_bytes();
    let big = |ordinal| child_of_bytes(ordinal, 100);
    let cmds = spawn(&mut sim, 1, p, 1, (0..3).map(big).collect());
    assert_eq!(assigned_children(&cmds).len(), 2, "{cmds:?}");
    let refused = child_results(&cmds);
    assert!(
        matches!(&refused[..], [(1, parent, 1, 2, Outcome::Failed { kind: FailureKind::Refused, message })]
            if *parent == p && message.contains("session_max_bytes")),
        "{refused:?}"
    );
    // Not remembered: submitted again once there is room, it runs.
    let cmds = sim.send(Event::ChildrenCancelled {
        conn: 1,
        parent: p,
        attempt: 1,
        ordinals: vec![0],
    });
    assert_eq!(child_results(&cmds).len(), 1, "{cmds:?}");
    let cmds = spawn(&mut sim, 1, p, 1, vec![big(2)]);
    assert_eq!(assigned_children(&cmds).len(), 1, "{cmds:?}");
    assert!(child_results(&cmds).is_empty(), "{cmds:?}");
}
