//! The door: every call must present the cluster token when one is configured.

use ladle_common::token::Token;
use ladle_proto::TOKEN_METADATA_KEY;
use tonic::{Request, Status, service::Interceptor};
use tracing::warn;

#[derive(Clone)]
pub struct TokenCheck {
    token: Option<std::sync::Arc<Token>>,
}

impl TokenCheck {
    pub fn new(token: Option<Token>) -> Self {
        Self {
            token: token.map(std::sync::Arc::new),
        }
    }
}

impl Interceptor for TokenCheck {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(token) = &self.token else {
            return Ok(request);
        };
        let peer = request
            .remote_addr()
            .map_or_else(|| "an unknown peer".to_owned(), |a| a.to_string());
        match request.metadata().get(TOKEN_METADATA_KEY) {
            Some(presented) if token.matches(presented.as_bytes()) => Ok(request),
            Some(_) => {
                warn!("refused a call from {peer}: wrong cluster token");
                Err(Status::unauthenticated(
                    "wrong cluster token: the scheduler refused it (check LADLE_TOKEN or token_file)",
                ))
            }
            None => {
                warn!("refused a call from {peer}: no cluster token");
                Err(Status::unauthenticated(
                    "no cluster token presented: this scheduler requires one (set LADLE_TOKEN or token_file)",
                ))
            }
        }
    }
}
