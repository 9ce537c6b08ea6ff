//! The admin service behind the management CLI.

use std::{collections::HashMap, sync::Arc, time::Instant};

use ladle_proto::v1::{
    CancelJobRequest, CancelJobResponse, ClusterStatusRequest, ClusterStatusResponse,
    JobLogsRequest, JobLogsResponse, ListAgentsRequest, ListAgentsResponse, ListJobsRequest,
    ListJobsResponse, ListTasksRequest, ListTasksResponse, SetDrainRequest, SetDrainResponse,
    admin_service_server,
};
use tonic::{Request, Response, Status};

use ladle_common::credentials::Permission;

use super::{
    auth, convert,
    state::{Shared, millis},
};
use crate::core::{AgentState, SelectError};

/// A job selector that matched none or several.
fn job_not_found(err: SelectError) -> Status {
    match err {
        SelectError::NotFound(_) => Status::not_found(err.to_string().replace("agent", "job")),
        SelectError::Ambiguous { .. } => {
            Status::invalid_argument(err.to_string().replace("agents", "jobs"))
        }
    }
}

pub struct AdminService {
    shared: Arc<Shared>,
}

impl AdminService {
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// `f` on the record of the job `selector` names (open or recently finished) and its
    /// listing, under the core's lock.
    fn with_job<R>(
        &self,
        selector: &str,
        f: impl FnOnce(&crate::core::record::JobRecord, ladle_proto::v1::JobInfo, Instant) -> R,
    ) -> Result<R, Status> {
        let now = Instant::now();
        self.shared.with_core(|core, _| {
            let views = core.jobs();
            let record = core.record();
            let r = record.find(selector).map_err(job_not_found)?;
            let view = views.iter().find(|v| v.job.id == r.job.id);
            Ok(f(r, convert::job_record_info(r, view, record, now), now))
        })
    }
}

#[tonic::async_trait]
impl admin_service_server::AdminService for AdminService {
    async fn list_agents(
        &self,
        _: Request<ListAgentsRequest>,
    ) -> Result<Response<ListAgentsResponse>, Status> {
        let now = Instant::now();
        let mut agents: Vec<_> = self
            .shared
            .with_core(|core, _| core.agents().map(|a| convert::agent_info(a, now)).collect());
        agents.sort_by(|a, b| (&a.hostname, &a.id).cmp(&(&b.hostname, &b.id)));
        Ok(Response::new(ListAgentsResponse { agents }))
    }

    async fn cluster_status(
        &self,
        request: Request<ClusterStatusRequest>,
    ) -> Result<Response<ClusterStatusResponse>, Status> {
        // The hashes name every job's values: a reader who could fetch blobs by hash (a driver)
        // must not learn another job's.
        let sees_blobs = auth::grant_of(&request).allows(Permission::Manage);
        let settings = &self.shared.settings;
        let mut status = ClusterStatusResponse {
            cluster: settings.cluster.clone(),
            scheduler_version: ladle_common::VERSION.into(),
            protocol_version: ladle_proto::PROTOCOL_VERSION,
            uptime_ms: millis(self.shared.started.elapsed()),
            token_required: self.shared.token_required,
            security: self.shared.security.into(),
            calls_refused: self.shared.refusals.total(),
            dashboard_url: self.shared.http_url.get().cloned().unwrap_or_default(),
            ..Default::default()
        };
        if sees_blobs {
            status.blob_fetches = self.shared.blobs.fetch_counts().into_iter().collect();
        }
        (status.job_blobs, status.job_blob_bytes) = self.shared.blobs.job_usage();
        self.shared.with_core(|core, _| {
            let counts = core.task_counts();
            status.jobs = u32::try_from(counts.sessions).unwrap_or(u32::MAX);
            status.tasks_queued = counts.queued as u64;
            status.tasks_running = counts.running as u64;
            status.gpu_tasks_queued = counts.gpu_queued as u64;
            status.session_unfinished_peak = counts.unfinished_peak;
            status.tasks_refused = counts.refused;
            status.foreign_output_lines = counts.foreign_output;
            for agent in core.agents() {
                let state = agent.state();
                match state {
                    AgentState::Alive => status.agents_alive += 1,
                    AgentState::Draining => status.agents_draining += 1,
                    AgentState::Lost => status.agents_lost += 1,
                }
                if state != AgentState::Lost {
                    let gpus = u32::try_from(agent.hello.resources.gpus.len()).unwrap_or(u32::MAX);
                    status.cpu_slots_total += agent.hello.resources.cpu_slots;
                    status.cpu_slots_busy += agent.load.busy_cpu_slots;
                    status.gpu_slots_total += gpus;
                    status.gpu_slots_busy += agent.load.busy_gpu_slots;
                }
            }
        });
        Ok(Response::new(status))
    }

    async fn list_jobs(
        &self,
        request: Request<ListJobsRequest>,
    ) -> Result<Response<ListJobsResponse>, Status> {
        let all = request.into_inner().all;
        let now = Instant::now();
        let jobs = self.shared.with_core(|core, _| {
            let views: HashMap<_, _> = core
                .jobs()
                .into_iter()
                .map(|v| (v.job.id.clone(), v))
                .collect();
            let record = core.record();
            let mut open: Vec<_> = record
                .open_jobs()
                .map(|r| convert::job_record_info(r, views.get(&r.job.id), record, now))
                .collect();
            open.sort_by(|a, b| (&a.name, &a.id).cmp(&(&b.name, &b.id)));
            if all {
                // The history after the open jobs, newest first.
                open.extend(
                    record
                        .jobs()
                        .filter(|r| r.ended.is_some())
                        .map(|r| convert::job_record_info(r, None, record, now)),
                );
            }
            open
        });
        Ok(Response::new(ListJobsResponse { jobs }))
    }

    async fn list_tasks(
        &self,
        request: Request<ListTasksRequest>,
    ) -> Result<Response<ListTasksResponse>, Status> {
        let selector = request.into_inner().job;
        self.with_job(&selector, |r, job, now| {
            let tasks =
                |list: &std::collections::VecDeque<crate::core::record::TaskRecord>| -> Vec<_> {
                    list.iter()
                        .rev()
                        .map(|t| convert::task_info(t, now))
                        .collect()
                };
            ListTasksResponse {
                job: Some(job),
                recent: tasks(&r.recent),
                failed: tasks(&r.failures),
            }
        })
        .map(Response::new)
    }

    async fn job_logs(
        &self,
        request: Request<JobLogsRequest>,
    ) -> Result<Response<JobLogsResponse>, Status> {
        let selector = request.into_inner().job;
        self.with_job(&selector, |r, job, _| JobLogsResponse {
            job: Some(job),
            lines: r
                .output
                .iter()
                .map(|l| ladle_proto::v1::LogLine {
                    host: l.host.to_string(),
                    stderr: l.stderr,
                    text: l.line.clone(),
                })
                .collect(),
            dropped: r.output_dropped,
        })
        .map(Response::new)
    }

    async fn cancel_job(
        &self,
        request: Request<CancelJobRequest>,
    ) -> Result<Response<CancelJobResponse>, Status> {
        auth::require(
            &request,
            Permission::Manage,
            &self.shared.refusals,
            "cancel jobs",
        )?;
        let selector = request.into_inner().job;
        let (job, cancelled) = self
            .shared
            .with_core(|core, out| core.cancel_job(&selector, out))
            .map_err(job_not_found)?;
        Ok(Response::new(CancelJobResponse {
            job: Some(convert::job_info(&job)),
            cancelled,
        }))
    }

    async fn set_drain(
        &self,
        request: Request<SetDrainRequest>,
    ) -> Result<Response<SetDrainResponse>, Status> {
        auth::require(
            &request,
            Permission::Manage,
            &self.shared.refusals,
            "drain or undrain agents",
        )?;
        let SetDrainRequest { agent, draining } = request.into_inner();
        let now = Instant::now();
        let info = self
            .shared
            .with_core(|core, out| {
                core.set_drain(&agent, draining, out)
                    .map(|a| convert::agent_info(a, now))
            })
            .map_err(|err| match err {
                SelectError::NotFound(_) => Status::not_found(err.to_string()),
                SelectError::Ambiguous { .. } => Status::invalid_argument(err.to_string()),
            })?;
        Ok(Response::new(SetDrainResponse { agent: Some(info) }))
    }
}
