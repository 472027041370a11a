//! The agent's errors, mapped once to gRPC status codes.

use tonic::{Code, Status};

use crate::backup::BackupFailure;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The caller presented no usable identity.
    #[error("agent {agent}: {reason}")]
    Unauthenticated { agent: String, reason: String },
    /// The caller is known but may not do this (policy, direction guard, ticket).
    #[error("agent {agent}: {reason}")]
    PermissionDenied { agent: String, reason: String },
    /// The request itself is malformed.
    #[error("agent {agent}: {reason}")]
    InvalidArgument { agent: String, reason: String },
    /// No such job.
    #[error("agent {agent}: {reason}")]
    NotFound { agent: String, reason: String },
    /// The request is fine but the state does not allow it (a refresh of the
    /// same database running, a missing role, a job not ready to commit).
    #[error("agent {agent}: {reason}")]
    FailedPrecondition { agent: String, reason: String },
    /// Something on this host failed (PostgreSQL, disk).
    #[error("agent {agent}: {reason}")]
    Internal { agent: String, reason: String },
    /// A backup failed at one of its steps (S3, PostgreSQL, `pg_dump`).
    #[error("agent {agent}: backup of {database:?}: {failure}")]
    Backup {
        agent: String,
        database: String,
        #[source]
        failure: BackupFailure,
    },
}

impl AgentError {
    pub fn denied(agent: &str, reason: impl Into<String>) -> Self {
        AgentError::PermissionDenied {
            agent: agent.to_string(),
            reason: reason.into(),
        }
    }

    pub fn invalid(agent: &str, reason: impl Into<String>) -> Self {
        AgentError::InvalidArgument {
            agent: agent.to_string(),
            reason: reason.into(),
        }
    }

    pub fn not_found(agent: &str, reason: impl Into<String>) -> Self {
        AgentError::NotFound {
            agent: agent.to_string(),
            reason: reason.into(),
        }
    }

    pub fn precondition(agent: &str, reason: impl Into<String>) -> Self {
        AgentError::FailedPrecondition {
            agent: agent.to_string(),
            reason: reason.into(),
        }
    }

    pub fn internal(agent: &str, reason: impl Into<String>) -> Self {
        AgentError::Internal {
            agent: agent.to_string(),
            reason: reason.into(),
        }
    }

    pub fn backup(agent: &str, database: &str, failure: BackupFailure) -> Self {
        AgentError::Backup {
            agent: agent.to_string(),
            database: database.to_string(),
            failure,
        }
    }
}

impl From<AgentError> for Status {
    fn from(e: AgentError) -> Status {
        let (code, kind) = match &e {
            AgentError::Unauthenticated { .. } => (Code::Unauthenticated, "unauthenticated"),
            AgentError::PermissionDenied { .. } => (Code::PermissionDenied, "permission-denied"),
            AgentError::InvalidArgument { .. } => (Code::InvalidArgument, "invalid-argument"),
            AgentError::NotFound { .. } => (Code::NotFound, "not-found"),
            AgentError::FailedPrecondition { .. } => {
                (Code::FailedPrecondition, "failed-precondition")
            }
            AgentError::Internal { .. } | AgentError::Backup { .. } => (Code::Internal, "internal"),
        };
        let mut status = Status::new(code, e.to_string());
        status.metadata_mut().insert(
            stagesync_proto::AGENT_ERROR_KEY,
            tonic::metadata::MetadataValue::from_static(kind),
        );
        status
    }
}
