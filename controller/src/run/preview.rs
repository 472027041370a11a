//! What a run would do for one pair, changing nothing: the pair's checks
//! and preflight, and its copies listed and compared (`stagesync plan`).

use std::sync::Arc;

use stagesync_certs::ReloadingClientConfig;

use super::Observer;
use super::copies::{self, CopiesDone};
use crate::plan::Plan;
use crate::refresh::{self, CheckedSource};

/// What the pair's source was found to be.
pub enum SourceFound {
    Database { size: u64 },
    Backup { taken: String, size: u64 },
}

/// One pair, previewed.
pub struct Preview {
    /// The source, or why the pair would be refused.
    pub preflight: Result<SourceFound, String>,
    pub copies: CopiesDone,
}

/// Previews pair `name` of `plan`.
pub async fn preview(
    plan: &Plan,
    name: &str,
    tls: Arc<ReloadingClientConfig>,
    observer: &Observer,
) -> Preview {
    let preflight = check(plan, name, tls).await;
    let copies = copies::run(&plan.pairs[name].copies, name, true, observer).await;
    Preview { preflight, copies }
}

async fn check(
    plan: &Plan,
    name: &str,
    tls: Arc<ReloadingClientConfig>,
) -> Result<SourceFound, String> {
    let td = tls.identity().trust_domain;
    let spec = plan.pair_spec(name, &td, |k| std::env::var(k).ok())?;
    crate::checks::run(&plan.pairs[name].preflight, &[]).await?;
    let ready = refresh::preflight(tls, &spec)
        .await
        .map_err(|e| e.to_string())?;
    Ok(match &ready.source {
        CheckedSource::Backup(b) => SourceFound::Backup {
            taken: b.manifest.taken.clone(),
            size: b.manifest.size,
        },
        CheckedSource::Agent(_) => SourceFound::Database {
            size: ready.source_size(&spec),
        },
    })
}
