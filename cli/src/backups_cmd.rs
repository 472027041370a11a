//! `stagesync backups list|verify`: the backups in the plan's [backups]
//! place, read from here (the controller's own AWS chain).

use anyhow::Context;
use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};
use stagesync_controller::plan::BackupPlan;
use stagesync_s3::backups::{Found as Listing, Listed, Store};

use crate::Exit;
use crate::backup_cmd::backups_of;
use crate::output::mib;
use crate::sync_cmd::{PlanArg, load_plan};

#[derive(clap::Subcommand)]
pub enum BackupsCommand {
    /// List complete backups (and uploads that never completed).
    List(ListArgs),
    /// Re-read backups and check them against their manifests' SHA-256.
    Verify(VerifyArgs),
}

#[derive(clap::Args)]
pub struct ListArgs {
    /// Only this database.
    database: Option<String>,
    #[command(flatten)]
    plan: PlanArg,
}

#[derive(clap::Args)]
pub struct VerifyArgs {
    /// Only this database.
    database: Option<String>,
    /// Every backup, not only the newest of each database.
    #[arg(long)]
    every: bool,
    #[command(flatten)]
    plan: PlanArg,
}

/// The plan's backup stores: daily, then weekly.
async fn stores(b: &BackupPlan) -> anyhow::Result<Vec<(&'static str, Store)>> {
    let pool = stagesync_s3::ClientPool::new();
    let files = stagesync_s3::ProfileFilePaths::default();
    let mut out = vec![(
        "daily",
        Store::open(&pool, b.daily.clone(), b.side.clone(), &files).await?,
    )];
    if let Some(w) = &b.weekly {
        out.push((
            "weekly",
            Store::open(&pool, w.clone(), b.side.clone(), &files).await?,
        ));
    }
    Ok(out)
}

/// Backups found: the kind of place, its store, the database, the listing.
type Found<'a> = Vec<(&'static str, &'a Store, String, Listing)>;

pub fn run(cmd: BackupsCommand) -> anyhow::Result<Exit> {
    let (plan_arg, database) = match &cmd {
        BackupsCommand::List(a) => (&a.plan, a.database.clone()),
        BackupsCommand::Verify(a) => (&a.plan, a.database.clone()),
    };
    let plan = match load_plan(&plan_arg.plan) {
        Ok(p) => p,
        Err(exit) => return Ok(exit),
    };
    let b = match backups_of(&plan) {
        Ok(b) => b.clone(),
        Err(exit) => return Ok(exit),
    };
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async {
        let stores = stores(&b).await?;
        let found = find(&stores, database.as_deref()).await?;
        match cmd {
            BackupsCommand::List(_) => Ok(list(&b, &found)),
            BackupsCommand::Verify(a) => Ok(verify(&b, &found, a.every).await),
        }
    })
}

/// Every database's backups in every store (or only `database`'s).
async fn find<'a>(
    stores: &'a [(&'static str, Store)],
    database: Option<&str>,
) -> anyhow::Result<Found<'a>> {
    let mut found = Vec::new();
    for (kind, store) in stores {
        let dbs = match database {
            Some(d) => vec![d.to_string()],
            None => store.databases().await?,
        };
        for db in dbs {
            let f = store.list(&db).await?;
            found.push((*kind, store, db, f));
        }
    }
    Ok(found)
}

/// `backups list`: the complete backups as a table; incomplete uploads and
/// unusable manifests as notes.
fn list(b: &BackupPlan, found: &Found<'_>) -> Exit {
    let mut table = Table::new();
    table.load_preset(UTF8_BORDERS_ONLY).set_header(vec![
        "DATABASE", "KIND", "TAKEN", "HOST", "SIZE", "SHA-256", "OBJECT",
    ]);
    let mut notes = Vec::new();
    for (kind, store, db, f) in found {
        let bucket = &store.location.bucket;
        for l in &f.complete {
            table.add_row(vec![
                db.clone(),
                kind.to_string(),
                l.manifest.taken.clone(),
                l.manifest.host.clone(),
                mib(l.manifest.size),
                l.manifest.sha256.chars().take(12).collect(),
                format!("s3://{bucket}/{}", l.dump_key),
            ]);
        }
        for key in &f.incomplete {
            notes.push(format!(
                "incomplete (no manifest, never restored from): s3://{bucket}/{key}"
            ));
        }
        for (key, why) in &f.unreadable {
            notes.push(format!("unusable manifest s3://{bucket}/{key}: {why}"));
        }
    }
    if found.iter().all(|(_, _, _, f)| f.complete.is_empty()) {
        println!("no complete backups under {}", b.daily);
    } else {
        println!("{table}");
    }
    for n in notes {
        eprintln!("stagesync: {n}");
    }
    Exit::Ok
}

/// `backups verify`: re-reads the newest backup of each database (or
/// every one) and checks it against its manifest.
async fn verify(b: &BackupPlan, found: &Found<'_>, every: bool) -> Exit {
    let (mut bad, mut checked) = (0, 0);
    for (kind, store, db, f) in found {
        let chosen: Vec<&Listed> = if every {
            f.complete.iter().collect()
        } else {
            f.complete.last().into_iter().collect()
        };
        for l in chosen {
            checked += 1;
            if !verify_one(store, kind, db, l).await {
                bad += 1;
            }
        }
    }
    if checked == 0 {
        eprintln!("stagesync: no complete backups to verify under {}", b.daily);
        return Exit::Failed;
    }
    if bad > 0 {
        eprintln!(
            "stagesync: {bad} of {checked} backups do not match their manifests: do not restore from them; take a new backup"
        );
        return Exit::Failed;
    }
    Exit::Ok
}

/// Verifies one backup and prints its verdict; true when it matches.
async fn verify_one(store: &Store, kind: &str, db: &str, l: &Listed) -> bool {
    let verdict = match store.verify(l).await {
        Ok(v) => v,
        Err(e) => Some(format!("could not be read: {e}")),
    };
    let m = &l.manifest;
    match verdict {
        None => {
            println!(
                "ok       {db} {kind} {} ({}, sha256 {})",
                m.taken,
                mib(m.size),
                &m.sha256[..12.min(m.sha256.len())]
            );
            true
        }
        Some(why) => {
            println!(
                "MISMATCH {db} {kind} {}: s3://{}/{}: {why}",
                m.taken, store.location.bucket, l.dump_key
            );
            false
        }
    }
}
