//! Where queued tasks go: placement on agents with room (GPU slots first, then CPU slots by
//! free room, away from agents a task crashed on), and work stealing between agents.

use super::*;

/// Where an agent stands in line for CPU tasks: a free slot now, no GPU, free slots, tie-break.
type RoomKey = (bool, bool, i64, Reverse<usize>);

impl Jobs {
    /// Work stealing: when agents have idle CPU slots and nothing is queued, asks the agents
    /// with the longest backlog (tasks beyond their slots) to give back half of it. The tasks
    /// move only once their agent confirms they had not started ([`Jobs::revoked`]), so a
    /// stolen task never also runs where it was.
    /// Returns whether it asked any agent for tasks.
    pub(in crate::core) fn steal(&mut self, members: &Membership, out: &mut Vec<Command>) -> bool {
        let before = out.len();
        self.steal_into(members, out);
        out.len() > before
    }

    fn steal_into(&mut self, members: &Membership, out: &mut Vec<Command>) {
        if !self.nothing_queued() {
            return;
        }
        let mut idle: i64 = members
            .agents()
            .filter(|a| a.accepts_work())
            .map(|a| a.free_cpus().max(0))
            .sum();
        if idle == 0 {
            return;
        }
        let mut victims: Vec<(i64, &crate::core::Agent)> = members
            .agents()
            .filter(|a| a.conn.is_some() && !a.revoke_futile)
            .map(|a| (-a.free_cpus(), a))
            .filter(|(backlog, _)| *backlog >= 2)
            .collect();
        victims.sort_by_key(|v| std::cmp::Reverse(v.0));
        for (backlog, victim) in victims {
            if idle <= 0 {
                break;
            }
            let Some(conn) = victim.conn else { continue };
            // One revoke at a time per agent: its answer changes what is worth taking.
            if victim
                .assigned
                .iter()
                .any(|r| self.tasks.get(r).is_some_and(|t| t.revoking))
            {
                continue;
            }
            // The newest assignments: those furthest back in the agent's queue.
            let mut candidates: Vec<(u64, TaskRef)> = victim
                .assigned
                .iter()
                .filter_map(|r| {
                    let t = self.tasks.get(r)?;
                    (!t.on_gpu).then_some((t.seq, *r))
                })
                .collect();
            let take = usize::try_from((backlog / 2).min(idle)).unwrap_or(0);
            if candidates.len() < take || take == 0 {
                continue;
            }
            candidates.sort_unstable_by(|a, b| b.cmp(a));
            let mut tasks = Vec::with_capacity(take);
            for (_, r) in candidates.into_iter().take(take) {
                if let Some(t) = self.tasks.get_mut(&r) {
                    t.revoking = true;
                    tasks.push((r, t.attempt));
                }
            }
            debug!(agent = %victim.id(), tasks = tasks.len(), "revoking queued tasks for idle agents");
            idle -= tasks.len() as i64;
            out.push(Command::Revoke { conn, tasks });
        }
    }

    /// An agent's answer to a revoke: what it gave back is queued again (under a new attempt),
    /// and goes to whoever has room. Only the attempt that was asked for counts: an answer that
    /// crossed a reconnection says nothing of the task's newer attempt.
    pub(in crate::core) fn revoked(
        &mut self,
        conn: ConnId,
        released: &[(TaskRef, u32)],
        kept: &[(TaskRef, u32)],
        members: &mut Membership,
    ) {
        let Some(agent) = members.current(conn) else {
            return; // a stream the core let go of: its tasks were requeued already
        };
        let agent_id = agent.id().clone();
        for (task_ref, attempt) in kept {
            if let Some(t) = self.tasks.get_mut(task_ref)
                && t.attempt == *attempt
            {
                t.revoking = false;
            }
        }
        if released.is_empty() && !kept.is_empty() {
            // Everything asked for had started: do not ask this agent again until it gets more.
            agent.revoke_futile = true;
        }
        let mut moved = 0;
        for &(task_ref, attempt) in released {
            match self.tasks.get_mut(&task_ref) {
                Some(t) if t.attempt == attempt && t.runs_on(&agent_id) => {
                    agent.assigned.remove(&task_ref);
                    agent.gpu_assigned.remove(&task_ref);
                    agent.waiting.remove(&task_ref);
                    moved += 1;
                    // It never started there: not a run the driver is told of.
                    t.given_back += 1;
                    self.queue_again(task_ref);
                }
                Some(_) => {} // another attempt: not what the agent gave back
                None => {
                    // Cancelled since: whatever the agent gave back holds no slot there.
                    agent.assigned.remove(&task_ref);
                    agent.gpu_assigned.remove(&task_ref);
                    agent.waiting.remove(&task_ref);
                }
            }
        }
        self.record.stolen(moved as u64);
        if moved > 0 {
            debug!(agent = %agent_id, tasks = moved, "stolen tasks queued again");
        }
    }

    /// Hands queued tasks to agents with room, sessions in turn. GPU slots first, one task
    /// each and none queued ahead (a GPU task should not wait behind another on one agent while
    /// a GPU is free on another). Then CPU slots: one task at a time to the agent with the most
    /// free slots, agents without GPUs before those with (the GPU machines stay free for GPU
    /// work), until every agent holds its slots plus its prefetch queue.
    pub(in crate::core) fn place(&mut self, members: &mut Membership, out: &mut Vec<Command>) {
        self.place_among(members, None, out);
    }

    /// As [`Jobs::place`], looking only at `agent`: after its results, the only agent whose
    /// room changed (every other agent was filled, or nothing is queued).
    pub(in crate::core) fn place_on(
        &mut self,
        members: &mut Membership,
        agent: &AgentId,
        out: &mut Vec<Command>,
    ) {
        self.place_among(members, Some(agent), out);
    }

    fn place_among(
        &mut self,
        members: &mut Membership,
        only: Option<&AgentId>,
        out: &mut Vec<Command>,
    ) {
        if self.ready.iter().all(VecDeque::is_empty) {
            return;
        }
        let agents: Vec<&crate::core::Agent> = match only {
            Some(id) => members.get(id).into_iter().collect(),
            None => members.agents().collect(),
        };
        let mut gpu_room: Vec<(usize, AgentId)> = Vec::new();
        if !self.ready[GPU].is_empty() {
            gpu_room = agents
                .iter()
                .filter(|a| a.accepts_work())
                .map(|a| (a.free_gpus(), a.id().clone()))
                .filter(|(free, _)| *free > 0)
                .collect();
            gpu_room.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        }
        // (a free slot now, no GPU, free slots, tie-break, agent); free may go below zero
        // down to -prefetch.
        let mut room: BinaryHeap<(bool, bool, i64, Reverse<usize>, AgentId)> = BinaryHeap::new();
        let mut floors: HashMap<AgentId, i64> = HashMap::default();
        if !self.ready[CPU].is_empty() {
            let mut candidates: Vec<(RoomKey, usize, i64)> = Vec::new();
            for (i, agent) in agents.iter().enumerate() {
                if !agent.accepts_work() || agent.hello.resources.cpu_slots == 0 {
                    continue;
                }
                let free = agent.free_cpus();
                let floor = -agent.prefetch();
                // Refill only once half the prefetch is used, then fully: tasks then travel
                // many to a message instead of one per finished task.
                if 2 * free > floor {
                    let no_gpu = agent.gpu_slots() == 0;
                    candidates.push(((free > 0, no_gpu, free, Reverse(i)), i, floor));
                }
            }
            // k queued tasks go to at most the k agents first in line (each step takes the
            // best, and lowers only it): with a thousand agents and a few tasks, the rest need
            // no place in the heap. Twice k, so that a task that crashed a worker on one of
            // them finds another.
            let queued = self.totals.queued.max(1).saturating_mul(2);
            if candidates.len() > queued {
                candidates.select_nth_unstable_by(queued - 1, |a, b| b.0.cmp(&a.0));
                candidates.truncate(queued);
            }
            for ((now, no_gpu, free, tie), i, floor) in candidates {
                let id = agents[i].id().clone();
                floors.insert(id.clone(), floor);
                room.push((now, no_gpu, free, tie, id));
            }
        }
        drop(agents);
        let mut batches: HashMap<(AgentId, u64), Vec<Assigned>> = HashMap::default();
        if !gpu_room.is_empty() {
            'agents: for (free, agent_id) in gpu_room {
                for _ in 0..free {
                    let Some(task_ref) = self.next_queued(GPU) else {
                        break 'agents;
                    };
                    self.assign(task_ref, &agent_id, true, members, &mut batches);
                }
            }
        }
        {
            // Tasks that wait for an agent they have not crashed on: back in their queues once
            // this round is over (not before, or the round would take them again).
            let mut deferred = Vec::new();
            while let Some(first) = room.pop() {
                let Some(task_ref) = self.next_queued(CPU) else {
                    break;
                };
                // A task that crashed a worker on this agent goes to the next agent in line it
                // has not crashed on, if any has room; this one stays in line.
                let mut target = first;
                if self.crashed_on(task_ref, &target.4) {
                    let mut passed = Vec::new();
                    while let Some(next) = room.pop() {
                        if self.crashed_on(task_ref, &next.4) {
                            passed.push(next);
                        } else {
                            passed.push(std::mem::replace(&mut target, next));
                            break;
                        }
                    }
                    room.extend(passed);
                    // None has room now, but one it has not crashed on will: it waits for that
                    // one rather than crash the same agent's worker again.
                    if self.crashed_on(task_ref, &target.4)
                        && self.healthy_elsewhere(task_ref, members)
                    {
                        deferred.push(task_ref);
                        room.push(target);
                        continue;
                    }
                }
                let (_, no_gpu, free, tie, agent_id) = target;
                self.assign(task_ref, &agent_id, false, members, &mut batches);
                if free - 1 > floors.get(&agent_id).copied().unwrap_or(0) {
                    room.push((free - 1 > 0, no_gpu, free - 1, tie, agent_id));
                }
            }
            for task_ref in deferred {
                self.back_in_line(task_ref);
            }
        }
        for ((agent_id, no), tasks) in batches {
            let Some(conn) = members.get(&agent_id).and_then(|a| a.conn) else {
                continue;
            };
            let Some(session) = self.sessions.get_mut(&no) else {
                continue;
            };
            session.agents.insert(agent_id);
            out.push(Command::Assign {
                conn,
                job: session.job.clone(),
                tasks,
            });
        }
    }

    /// Whether an agent with CPU slots that takes work, and that the task has not crashed a
    /// worker on, exists.
    fn healthy_elsewhere(&self, task_ref: TaskRef, members: &Membership) -> bool {
        self.tasks.get(&task_ref).is_some_and(|t| {
            members.agents().any(|a| {
                a.accepts_work()
                    && a.hello.resources.cpu_slots > 0
                    && !t.crashed_agents.contains(a.id())
            })
        })
    }

    /// A task taken from its queue and not placed goes back, in its place, attempt unchanged.
    fn back_in_line(&mut self, task_ref: TaskRef) {
        let Some(task) = self.tasks.get(&task_ref) else {
            return;
        };
        if let Some(session) = self.sessions.get_mut(&task.session) {
            session.queues[lane(task.spec.gpu)].push(queue_key(task_ref, task));
            list(&mut self.ready, task.session, session, task.spec.gpu);
        }
    }

    /// Whether the task crashed a worker on this agent before.
    fn crashed_on(&self, task_ref: TaskRef, agent: &AgentId) -> bool {
        self.tasks
            .get(&task_ref)
            .is_some_and(|t| t.crashed_agents.contains(agent))
    }

    /// Marks a queued task as running on `agent_id` (on one of its GPU slots when `gpu`).
    fn assign(
        &mut self,
        task_ref: TaskRef,
        agent_id: &AgentId,
        gpu: bool,
        members: &mut Membership,
        batches: &mut HashMap<(AgentId, u64), Vec<Assigned>>,
    ) {
        self.set_state(task_ref, TaskState::Running(agent_id.clone()));
        self.record.placed(1);
        let Some(task) = self.tasks.get_mut(&task_ref) else {
            return;
        };
        task.on_gpu = gpu;
        if let Some(agent) = members.get_mut(agent_id) {
            agent.assigned.insert(task_ref);
            agent.revoke_futile = false;
            if gpu {
                agent.gpu_assigned.insert(task_ref);
            }
        }
        batches
            .entry((agent_id.clone(), task.session))
            .or_default()
            .push(Assigned {
                task_ref,
                attempt: task.attempt,
                spec: task.spec.clone(),
                isolated: task.isolated,
                gpu,
            });
    }

    /// The next task a slot of kind `slot` (CPU or GPU) may take, sessions in turn.
    fn next_queued(&mut self, slot: usize) -> Option<TaskRef> {
        while let Some(no) = self.ready[slot].pop_front() {
            let Some(session) = self.sessions.get_mut(&no) else {
                continue;
            };
            session.listed[slot] = false;
            let found = pop_queued(&self.tasks, session, slot);
            if LANES_FOR_SLOT[slot]
                .iter()
                .any(|&l| !session.queues[l].is_empty())
            {
                session.listed[slot] = true;
                self.ready[slot].push_back(no);
            }
            if found.is_some() {
                return found;
            }
        }
        None
    }
}

/// The session's next queued task for a slot of kind `slot`: for a CPU slot the first by
/// priority and age of the CPU and GPU-preferring tasks; for a GPU slot a GPU-requiring task
/// before a preferring one.
pub(super) fn pop_queued(
    tasks: &TaskMap<Task>,
    session: &mut Session,
    slot: usize,
) -> Option<TaskRef> {
    loop {
        let lanes = LANES_FOR_SLOT[slot];
        let pick = if slot == CPU {
            lanes
                .iter()
                .copied()
                .filter_map(|l| session.queues[l].peek().map(|top| (*top, l)))
                .max()
                .map(|(_, l)| l)
        } else {
            lanes
                .iter()
                .copied()
                .find(|&l| !session.queues[l].is_empty())
        }?;
        let (_, _, _, task_ref) = session.queues[pick].pop()?;
        if tasks
            .get(&task_ref)
            .is_some_and(|t| t.state == TaskState::Queued)
        {
            return Some(task_ref);
        }
    }
}
