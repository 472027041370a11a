//! The agent's errors, mapped once to gRPC status codes.

use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The caller presented no usable identity.
    #[error("agent {agent}: {reason}")]
    Unauthenticated { agent: String, reason: String },
    /// The caller is known but may not do this.
    #[error("agent {agent}: {reason}")]
    PermissionDenied { agent: String, reason: String },
}

impl From<AgentError> for Status {
    fn from(e: AgentError) -> Status {
        let code = match &e {
            AgentError::Unauthenticated { .. } => Code::Unauthenticated,
            AgentError::PermissionDenied { .. } => Code::PermissionDenied,
        };
        Status::new(code, e.to_string())
    }
}
