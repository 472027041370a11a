//! Revocation: a certificate named in the fleet's `crl.pem` is refused on
//! the next connection, without restarting the agent; its replacement
//! works; re-issuing a certificate revokes the one it replaces.

use std::sync::Arc;

use stagesync_certs::pki::{self, LeafRequest};
use stagesync_certs::{Kind, ReloadingClientConfig, TlsFiles, revoke};
use stagesync_controller::status;
use stagesync_harness::{Fleet, FleetAgent};

/// `Info` on `agent` with the controller certificate in `files`, on a new
/// connection.
async fn info(files: &TlsFiles, agent: &FleetAgent) -> Result<String, String> {
    let tls = Arc::new(ReloadingClientConfig::load(files.clone()).map_err(|e| e.to_string())?);
    status::info(tls, &agent.target())
        .await
        .map(|i| i.name)
        .map_err(|e| e.to_string())
}

/// Whether `err` is the agent refusing a revoked certificate. Under TLS
/// 1.3 the client may finish its side of the handshake before the agent's
/// alert arrives: it then sees the connection closed, or reset ("dropped"),
/// instead of the alert. The agent answers the next call each time, so
/// it was not a crash.
fn refused_as_revoked(err: &str) -> bool {
    err.contains("revoked") || err.contains("connection closed") || err.contains("dropped")
}

/// A copy of a controller's certificate and key under other file names,
/// so it can still be presented after its files are replaced.
fn keep_copy(files: &TlsFiles, stem: &str) -> TlsFiles {
    let copy = |p: &std::path::Path, ext: &str| {
        let to = p.with_file_name(format!("{stem}.{ext}"));
        std::fs::copy(p, &to).unwrap();
        to
    };
    TlsFiles {
        ca: files.ca.clone(),
        cert: copy(&files.cert, "crt"),
        key: copy(&files.key, "key"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revoked_certificates_are_refused_without_a_restart() {
    let f = Fleet::builder()
        .staging(|s| s.controllers.push("ci".into()))
        .build()
        .await;
    let (pki, agent) = (f.pki(), f.staging());
    let ops = pki.controller("ops").unwrap();
    assert_eq!(info(&ops, agent).await.unwrap(), "staging-db");

    // Revoked: the agent, still running, refuses it on the next connection.
    let (_, count) = revoke::revoke_leaf(&pki.dir(), Kind::Controller, "ops").unwrap();
    assert_eq!(count, 1);
    let refused = info(&ops, agent).await.unwrap_err();
    assert!(refused_as_revoked(&refused), "{refused}");
    // Its replacement (a new serial) works.
    let ops = pki.controller("ops").unwrap();
    assert_eq!(info(&ops, agent).await.unwrap(), "staging-db");

    // `certs issue --force` revokes the certificate it replaces.
    let req = LeafRequest::new(Kind::Controller, "ci", 30);
    let ci = pki::issue_into(&pki.dir(), &pki.ca, &req, false).unwrap();
    let files = TlsFiles {
        ca: pki.ca_path(),
        cert: ci.0,
        key: ci.1,
    };
    let old = keep_copy(&files, "controller-ci-old");
    assert_eq!(info(&old, agent).await.unwrap(), "staging-db");
    pki::issue_into(&pki.dir(), &pki.ca, &req, true).unwrap();
    let refused = info(&old, agent).await.unwrap_err();
    assert!(refused_as_revoked(&refused), "{refused}");
    assert_eq!(info(&files, agent).await.unwrap(), "staging-db");
    // The earlier revocation is still in the list.
    let list = revoke::revoked_serials(&revoke::crl_path(&pki.ca_path())).unwrap();
    assert_eq!(list.len(), 2);
}
