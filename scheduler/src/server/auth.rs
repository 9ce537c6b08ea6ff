//! The door: every call presents a credential, which grants a role; each service admits the roles
//! that may use it, and handlers that change the cluster check for more.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use ladle_common::credentials::{Accepted, Grant, Permission};
use ladle_proto::TOKEN_METADATA_KEY;
use tonic::{Request, Status, service::Interceptor};
use tracing::warn;

/// Refused calls are logged at most this often, with a count: an unauthenticated flood must not
/// become a flood of log lines.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct AuthCheck {
    accepted: Arc<Accepted>,
    needs: Permission,
    refusals: Arc<RefusalLog>,
}

impl AuthCheck {
    pub fn new(accepted: Arc<Accepted>, refusals: Arc<RefusalLog>, needs: Permission) -> Self {
        Self {
            accepted,
            needs,
            refusals,
        }
    }
}

/// What the caller of this request may do (put there by `AuthCheck`).
pub fn grant_of<T>(request: &Request<T>) -> Grant {
    // Every service sits behind AuthCheck, which always inserts one; nothing is granted if not.
    request
        .extensions()
        .get::<Grant>()
        .copied()
        .unwrap_or(Grant::Role(ladle_common::credentials::Role::View))
}

/// Refuses a call its caller's role does not allow, naming both.
pub fn require<T>(
    request: &Request<T>,
    permission: Permission,
    refusals: &RefusalLog,
    what: &str,
) -> Result<(), Status> {
    let grant = grant_of(request);
    if grant.allows(permission) {
        return Ok(());
    }
    refusals.note(&peer(request), &format!("{} may not {what}", holder(grant)));
    Err(Status::permission_denied(format!(
        "{} may not {what}: use an admin's (admin.cluster, or the scheduler's own file)",
        holder(grant)
    )))
}

/// "an agent credential", "a driver credential".
fn holder(grant: Grant) -> String {
    let name = grant.name();
    let article = if name.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    };
    format!("{article} {name} credential")
}

fn peer<T>(request: &Request<T>) -> String {
    request
        .remote_addr()
        .map_or_else(|| "an unknown peer".to_owned(), |a| a.to_string())
}

impl Interceptor for AuthCheck {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if self.accepted.is_open() {
            // No credentials configured: the scheduler listens on loopback only.
            request.extensions_mut().insert(Grant::Everything);
            return Ok(request);
        }
        let grant = match request.metadata().get(TOKEN_METADATA_KEY) {
            Some(presented) => match self.accepted.grant_of(presented.as_bytes()) {
                Some(grant) => grant,
                None => {
                    self.refusals.note(&peer(&request), "an unknown credential");
                    return Err(Status::unauthenticated(
                        "the scheduler does not know this credential (check LADLE_CLUSTER_FILE, or LADLE_TOKEN / token_file)",
                    ));
                }
            },
            None => {
                self.refusals.note(&peer(&request), "no credential");
                return Err(Status::unauthenticated(
                    "no credential presented: this scheduler requires one (give the client the cluster file, LADLE_CLUSTER_FILE)",
                ));
            }
        };
        if !grant.allows(self.needs) {
            let what = match self.needs {
                Permission::Attach => "join as an agent",
                Permission::Submit => "run jobs",
                Permission::Blobs => "store or fetch values",
                Permission::Read => "read the cluster's status",
                Permission::Manage => "manage the cluster",
            };
            self.refusals.note(
                &peer(&request),
                &format!("{} may not {what}", holder(grant)),
            );
            return Err(Status::permission_denied(format!(
                "{} may not {what}",
                holder(grant)
            )));
        }
        request.extensions_mut().insert(grant);
        Ok(request)
    }
}

/// Counts refused calls and logs them at a bounded rate.
#[derive(Default)]
pub struct RefusalLog {
    state: Mutex<RefusalState>,
}

#[derive(Default)]
struct RefusalState {
    last_logged: Option<Instant>,
    unlogged: u64,
    total: u64,
}

impl RefusalLog {
    pub fn note(&self, peer: &str, why: &str) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        state.total += 1;
        let now = Instant::now();
        let due = state
            .last_logged
            .is_none_or(|at| now.duration_since(at) >= REFUSAL_LOG_EVERY);
        if due {
            let also = std::mem::take(&mut state.unlogged);
            state.last_logged = Some(now);
            if also == 0 {
                warn!("refused a call from {peer}: {why}");
            } else {
                warn!(
                    "refused a call from {peer}: {why} (and {also} other refused calls since the last such line)"
                );
            }
        } else {
            state.unlogged += 1;
        }
    }

    /// Refused calls since the scheduler started.
    pub fn total(&self) -> u64 {
        self.state.lock().map_or(0, |s| s.total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_counted_and_logged_at_a_bounded_rate() {
        let log = RefusalLog::default();
        for _ in 0..1000 {
            log.note("1.2.3.4:5", "no credential");
        }
        let state = log.state.lock().unwrap();
        assert_eq!(state.total, 1000);
        // One line logged; the rest wait to be summed up in the next one.
        assert_eq!(state.unlogged, 999);
    }
}
