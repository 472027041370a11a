//! Who may call what: every RPC is authorized by the identity in the
//! caller's certificate against the agent's own policy.

use stagesync_certs::{Identity, Kind};

use crate::config::AgentConfig;
use crate::error::AgentError;
use crate::transport::PeerInfo;

/// Who an RPC is meant for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Caller {
    /// Listed in `policy.controllers`.
    Controller,
    /// Listed in `policy.peers` (agents streaming a dump in).
    Peer,
}

/// Checks the caller of `rpc` against the policy and returns its identity.
pub fn authorize(
    config: &AgentConfig,
    peer: Option<&PeerInfo>,
    wanted: Caller,
    rpc: &str,
) -> Result<Identity, AgentError> {
    let agent = config.name.clone();
    let peer = peer.ok_or_else(|| AgentError::Unauthenticated {
        agent: agent.clone(),
        reason: format!("{rpc} refused: the connection carries no TLS identity"),
    })?;
    let identity = peer.identity.clone().map_err(|reason| AgentError::Unauthenticated {
        agent: agent.clone(),
        reason: format!(
            "{rpc} refused: the client certificate from {} has no usable stagesync identity ({reason})",
            peer.remote
        ),
    })?;
    if identity.trust_domain != config.identity.trust_domain {
        return Err(AgentError::PermissionDenied {
            agent,
            reason: format!(
                "{rpc} refused: {identity} is from trust domain {:?}, this agent trusts {:?}",
                identity.trust_domain, config.identity.trust_domain
            ),
        });
    }
    let (kind, allowed, key) = match wanted {
        Caller::Controller => (
            Kind::Controller,
            &config.policy.controllers,
            "policy.controllers",
        ),
        Caller::Peer => (Kind::Agent, &config.policy.peers, "policy.peers"),
    };
    if identity.kind != kind {
        return Err(AgentError::PermissionDenied {
            agent,
            reason: format!("{rpc} refused: it is for {kind}s, and the caller is {identity}"),
        });
    }
    if !allowed.contains(&identity) {
        return Err(AgentError::PermissionDenied {
            agent,
            reason: format!(
                "{rpc} refused: {identity} is not allowed here; add {:?} to {key} in {}",
                identity.name,
                config.source.display()
            ),
        });
    }
    Ok(identity)
}
