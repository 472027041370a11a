//! What the demo reads from each environment, and the table it prints.

use std::collections::BTreeMap;

use anyhow::Context;

use crate::PgCluster;

/// What the demo looks at in each environment.
#[derive(Debug, PartialEq)]
pub struct Snapshot {
    pub users: i64,
    pub posts: i64,
    pub sessions: i64,
    pub client_id: String,
    /// The first user's email and username, as this environment has them.
    pub first_user: (String, String),
    /// Users whose email is still a production address (`…@example.com`).
    pub production_emails: i64,
}

pub async fn snapshot(cluster: &PgCluster, db: &str) -> anyhow::Result<Snapshot> {
    let c = cluster.client(db).await?;
    let mut counts = Vec::new();
    for table in ["auth_user", "blog_post", "django_session"] {
        let n: i64 = c
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .and_then(|r| r.try_get(0))
            .with_context(|| format!("counting {table} in {db}"))?;
        counts.push(n);
    }
    let (users, posts, sessions) = (counts[0], counts[1], counts[2]);
    let client_id = c
        .query_one(
            "SELECT client_id FROM socialaccount_socialapp WHERE provider = 'github'",
            &[],
        )
        .await
        .and_then(|r| r.try_get(0))
        .with_context(|| format!("reading the OAuth app in {db}"))?;
    let row = c
        .query_one(
            "SELECT email, username, (SELECT count(*) FROM auth_user WHERE email LIKE '%@example.com') \
             FROM auth_user ORDER BY id LIMIT 1",
            &[],
        )
        .await
        .with_context(|| format!("reading the first user in {db}"))?;
    Ok(Snapshot {
        users,
        posts,
        sessions,
        client_id,
        first_user: (row.try_get(0)?, row.try_get(1)?),
        production_emails: row.try_get(2)?,
    })
}

/// The copies of staging's database a sync kept for `stagesync rollback`.
pub async fn previous_copies(cluster: &PgCluster) -> anyhow::Result<Vec<String>> {
    let c = cluster.client("postgres").await?;
    let rows = c
        .query(
            "SELECT datname::text FROM pg_database WHERE datname LIKE 'stage%' AND datname <> 'stage' ORDER BY 1",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()?)
}

/// Prints production and staging side by side.
pub fn show(
    prod: &Snapshot,
    stage: &Snapshot,
    prod_media: &BTreeMap<String, Vec<u8>>,
    stage_media: &BTreeMap<String, Vec<u8>>,
) {
    let same = stage_media
        .iter()
        .filter(|(k, v)| prod_media.get(*k) == Some(v))
        .count();
    let mut table = comfy_table::Table::new();
    table
        .load_preset(comfy_table::presets::UTF8_BORDERS_ONLY)
        .set_header(vec!["", "production", "staging"]);
    table.add_row(vec![
        "users".to_string(),
        prod.users.to_string(),
        stage.users.to_string(),
    ]);
    table.add_row(vec![
        "posts".to_string(),
        prod.posts.to_string(),
        stage.posts.to_string(),
    ]);
    table.add_row(vec![
        "sessions".to_string(),
        prod.sessions.to_string(),
        stage.sessions.to_string(),
    ]);
    table.add_row(vec![
        "first user's email".to_string(),
        prod.first_user.0.clone(),
        stage.first_user.0.clone(),
    ]);
    table.add_row(vec![
        "first user's username".to_string(),
        prod.first_user.1.clone(),
        stage.first_user.1.clone(),
    ]);
    table.add_row(vec![
        "GitHub OAuth client_id".to_string(),
        prod.client_id.clone(),
        stage.client_id.clone(),
    ]);
    table.add_row(vec![
        "media objects".to_string(),
        prod_media.len().to_string(),
        format!("{} ({same} equal to production's)", stage_media.len()),
    ]);
    for line in table.to_string().lines() {
        println!("    {line}");
    }
}
