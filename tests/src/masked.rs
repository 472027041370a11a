//! The masking suites' fixture: a production database with sentinel values
//! in its personal columns, rules for every column of it, and a fleet whose
//! production agent masks it (a process, so it can be restarted with other
//! rules or another key).

use std::path::Path;

use stagesync_controller::refresh::PairSpec;

use crate::{AgentRun, Fleet, FleetAgent, PgCluster};

/// In every personal value of [`SOURCE`]: found nowhere once masked.
pub const SENTINEL: &str = "sntnl";

/// Production: users with personal columns of many types, and orders
/// whose foreign key points at the (masked) email.
pub const SOURCE: &str = "
CREATE TABLE users (
    id bigint PRIMARY KEY,
    email text NOT NULL UNIQUE,
    first_name text,
    last_name varchar(40),
    phone text,
    last_ip inet,
    created date NOT NULL,
    born date,
    profile jsonb,
    avatar bytea
);
CREATE TABLE orders (
    id bigint PRIMARY KEY,
    user_email text NOT NULL REFERENCES users (email),
    total numeric(10, 2),
    note text
);
INSERT INTO users SELECT g, 'sntnl-mail-' || g || '@corp.test', 'SntnlFirst' || g, 'SntnlLast', '+1 555 0100 ' || g,
    ('203.0.113.' || (g % 250))::inet, date '2020-01-01' + g, date '1980-06-15' + g,
    jsonb_build_object('email', 'sntnl-json-' || g || '@corp.test', 'plan', 'pro', 'tags', jsonb_build_array('a')),
    convert_to('sntnl-avatar-' || g, 'UTF8') FROM generate_series(1, 500) g;
INSERT INTO orders SELECT g, 'sntnl-mail-' || (g % 500 + 1) || '@corp.test', g, 'fine' FROM generate_series(1, 2000) g;
";

/// Rules classifying every column of [`SOURCE`].
pub const RULES: &str = r#"
[[databases]]
names = ["production"]

[databases.tables."public.users"]
id = "keep"
email = { email = "example.com" }
first_name = "first_name"
last_name = "last_name"
phone = "phone"
last_ip = "ip"
created = "keep"
born = { date = 30 }
profile = { json = ["email"] }
avatar = "null"

[databases.tables."public.orders"]
id = "keep"
user_email = { email = "example.com" }
total = "keep"
note = "keep"
"#;

pub fn write_secret(path: &Path, bytes: &[u8]) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, bytes).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// A fleet whose production agent (a process, so it can be restarted with
/// another key) masks `production` by [`RULES`].
pub async fn masked_fleet(dir: &Path) -> Fleet {
    masked_fleet_with(dir, AgentRun::InProcess).await
}

/// [`masked_fleet`], its staging agent run as `staging`.
pub async fn masked_fleet_with(dir: &Path, staging: AgentRun) -> Fleet {
    let rules = dir.join("masking.toml");
    std::fs::write(&rules, RULES).unwrap();
    write_secret(&dir.join("masking.key"), &[0x5a; 32]);
    let extra = format!(
        "\n[masking]\nrules = {rules:?}\nkey_file = {:?}\n",
        dir.join("masking.key")
    );
    Fleet::builder()
        .backups()
        .source_sql(SOURCE)
        .prod_runs(AgentRun::Process)
        .prod(move |p| p.extra_toml = extra)
        .staging_runs(staging)
        .build()
        .await
}

pub fn spec(f: &Fleet) -> PairSpec {
    let mut spec = f.pair();
    spec.jobs = 2;
    spec
}

pub async fn strings(c: &PgCluster, db: &str, sql: &str) -> Vec<String> {
    c.strings(db, sql).await.unwrap()
}

/// Edits a process agent's config and restarts it with the new one.
pub async fn reconfigure(agent: &mut FleetAgent, edit: impl FnOnce(String) -> String) {
    let path = agent.config_path().to_path_buf();
    let text = std::fs::read_to_string(&path).unwrap();
    let changed = edit(text.clone());
    assert_ne!(changed, text, "the edit changed nothing");
    std::fs::write(&path, changed).unwrap();
    restart(agent).await;
}

/// Kills a process agent and starts it again (it reads its files anew).
pub async fn restart(agent: &mut FleetAgent) {
    agent.process().kill().unwrap();
    agent.process().start().await.unwrap();
}
