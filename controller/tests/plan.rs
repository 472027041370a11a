//! The plan file: a valid plan parses, and each kind of mistake is an error
//! naming the file, the line and the key.

use std::path::Path;

use stagesync_controller::plan::{self, Plan};
use stagesync_proto::v1 as pb;

const VALID: &str = r#"
[controller]
name = "ops"
certs_dir = "certs"
parallel = 2

[agents]
prod-db = { endpoint = "db1.example.com:7443" }
staging-db = { endpoint = "staging-db1.example.com:7443", peer_endpoint = "10.0.0.7:7443" }
dev-db = { endpoint = "dev-db1.example.com:7443" }

[defaults]
mode = "stream"
exclude_table_data = ["public.django_session"]

[pairs.prod-to-stage1]
source = { agent = "prod-db", database = "production" }
dest = { agent = "staging-db", database = "stage", owner = "stage" }
post_restore_sql = "UPDATE socialaccount_socialapp SET secret = ${SOCIAL_SECRET}"
params = ["SOCIAL_SECRET"]

[pairs.stage1-to-dev]
source = { agent = "staging-db", database = "stage" }
dest = { agent = "dev-db", database = "dev", owner = "dev" }
mode = "stream"
jobs = 4
after = ["prod-to-stage1"]
"#;

fn parse(text: &str) -> Result<Plan, String> {
    plan::parse(Path::new("/etc/stagesync/stagesync.toml"), text).map_err(|e| e.to_string())
}

#[test]
fn a_valid_plan_parses_in_dag_order() {
    let p = parse(VALID).unwrap();
    assert_eq!(p.order(), vec!["prod-to-stage1", "stage1-to-dev"]);
    let dev = &p.pairs["stage1-to-dev"];
    assert_eq!(dev.mode, pb::Mode::Stream);
    assert_eq!(dev.jobs, 4);
    assert_eq!(dev.dump.exclude_table_data, vec!["public.django_session"]);
    assert_eq!(
        p.tls.cert,
        Path::new("/etc/stagesync/certs/controller-ops.crt")
    );
    let spec = p
        .pair_spec("prod-to-stage1", "stagesync", |k| {
            (k == "SOCIAL_SECRET").then(|| "s".to_string())
        })
        .unwrap();
    assert_eq!(spec.dest_peer_address.as_deref(), Some("10.0.0.7:7443"));
    assert_eq!(spec.params["SOCIAL_SECRET"], "s");
    let missing = p
        .pair_spec("prod-to-stage1", "stagesync", |_| None)
        .unwrap_err();
    assert!(missing.contains("SOCIAL_SECRET is not set"), "{missing}");
}

/// Replaces the first line containing `find` and expects an error at that
/// line (or at the line containing `at`), for `key`, mentioning `needle`.
fn bad(find: &str, replace: &str, at: &str, key: &str, needle: &str) {
    let text = VALID.replacen(find, replace, 1);
    assert_ne!(text, VALID, "{find:?} not found");
    let line = text.lines().position(|l| l.contains(at)).expect("marker") + 1;
    let err = parse(&text).expect_err("should be refused");
    let prefix = format!("/etc/stagesync/stagesync.toml:{line}: {key}: ");
    assert!(err.starts_with(&prefix), "expected {prefix:?}, got {err:?}");
    assert!(err.contains(needle), "expected {needle:?} in {err:?}");
}

#[test]
fn unknown_top_level_key() {
    bad(
        "[defaults]",
        "[defualts]",
        "[defualts]",
        "defualts",
        "unknown field `defualts`",
    );
}

#[test]
fn unknown_key_in_a_pair() {
    bad(
        "jobs = 4",
        "jobz = 4",
        "jobz",
        "pairs.stage1-to-dev.jobz",
        "unknown field",
    );
}

#[test]
fn wrong_type() {
    bad(
        "jobs = 4",
        "jobs = \"four\"",
        "jobs = \"four\"",
        "pairs.stage1-to-dev.jobs",
        "invalid type",
    );
}

#[test]
fn unknown_source_agent() {
    bad(
        "source = { agent = \"prod-db\"",
        "source = { agent = \"prdo-db\"",
        "prdo-db",
        "pairs.prod-to-stage1.source.agent",
        "no agent named \"prdo-db\"",
    );
}

#[test]
fn unknown_dest_agent() {
    bad(
        "dest = { agent = \"dev-db\"",
        "dest = { agent = \"qa-db\"",
        "qa-db",
        "pairs.stage1-to-dev.dest.agent",
        "no agent named \"qa-db\"",
    );
}

#[test]
fn unknown_pair_in_after() {
    bad(
        "after = [\"prod-to-stage1\"]",
        "after = [\"prod-to-stage9\"]",
        "prod-to-stage9",
        "pairs.stage1-to-dev.after",
        "no pair named",
    );
}

#[test]
fn cycle_in_after() {
    bad(
        "params = [\"SOCIAL_SECRET\"]",
        "params = [\"SOCIAL_SECRET\"]\nafter = [\"stage1-to-dev\"]",
        "after = [\"stage1-to-dev\"]",
        "pairs.prod-to-stage1.after",
        "cycle: prod-to-stage1 -> stage1-to-dev -> prod-to-stage1",
    );
}

#[test]
fn two_pairs_write_one_destination() {
    let extra = "\n[pairs.prod-to-stage2]\nsource = { agent = \"prod-db\", database = \"production\" }\ndest = { agent = \"staging-db\", database = \"stage\", owner = \"stage\" }\n";
    let text = format!("{VALID}{extra}");
    let line = text.lines().count();
    let err = parse(&text).unwrap_err();
    assert!(
        err.starts_with(&format!(
            "/etc/stagesync/stagesync.toml:{line}: pairs.prod-to-stage2.dest: "
        )),
        "{err}"
    );
    assert!(
        err.contains("both write \"stage\" on agent \"staging-db\""),
        "{err}"
    );
}

#[test]
fn pair_writes_into_its_own_source() {
    bad(
        "dest = { agent = \"dev-db\", database = \"dev\"",
        "dest = { agent = \"staging-db\", database = \"stage\"",
        "dest = { agent = \"staging-db\", database = \"stage\", owner = \"dev\"",
        "pairs.stage1-to-dev.dest",
        "the pair writes into its own source",
    );
    // And production into itself:
    let text = VALID.replacen(
        "dest = { agent = \"staging-db\", database = \"stage\", owner = \"stage\" }",
        "dest = { agent = \"prod-db\", database = \"production\", owner = \"stage\" }",
        1,
    );
    let err = parse(&text).unwrap_err();
    assert!(
        err.contains("pairs.prod-to-stage1.dest: the pair writes into its own source"),
        "{err}"
    );
}

#[test]
fn missing_owner() {
    bad(
        ", owner = \"dev\" }",
        " }",
        "dest = { agent = \"dev-db\", database = \"dev\" }",
        "pairs.stage1-to-dev.dest.owner",
        "missing",
    );
}

#[test]
fn unknown_mode() {
    bad(
        "mode = \"stream\"\njobs = 4",
        "mode = \"turbo\"\njobs = 4",
        "turbo",
        "pairs.stage1-to-dev.mode",
        "unknown mode \"turbo\"",
    );
}

/// `copy_format`: "text" sends every table as text, "auto" (the default)
/// binary where both ends allow; anything else is named.
#[test]
fn copy_format_text_auto_or_refused() {
    let p = parse(VALID).unwrap();
    assert_eq!(
        p.pairs["stage1-to-dev"].copy_format,
        stagesync_controller::refresh::CopyFormat::Auto
    );
    let text = VALID.replacen("jobs = 4", "jobs = 4\ncopy_format = \"text\"", 1);
    let p = parse(&text).unwrap();
    assert_eq!(
        p.pairs["stage1-to-dev"].copy_format,
        stagesync_controller::refresh::CopyFormat::Text
    );
    bad(
        "jobs = 4",
        "jobs = 4\ncopy_format = \"csv\"",
        "csv",
        "pairs.stage1-to-dev.copy_format",
        "unknown copy format \"csv\"",
    );
}

/// Parallel mode was retired: a plan that asks for it is told what to do.
#[test]
fn parallel_mode_is_refused_with_what_to_do() {
    bad(
        "mode = \"stream\"\njobs = 4",
        "mode = \"parallel\"\njobs = 4",
        "\"parallel\"",
        "pairs.stage1-to-dev.mode",
        "parallel mode (pg_dump -Fd) was retired",
    );
}

#[test]
fn post_restore_sql_uses_an_unlisted_variable() {
    bad(
        "params = [\"SOCIAL_SECRET\"]",
        "params = []",
        "post_restore_sql",
        "pairs.prod-to-stage1.post_restore_sql",
        "${SOCIAL_SECRET}, which is not listed in params",
    );
}

#[test]
fn bad_endpoint() {
    bad(
        "endpoint = \"db1.example.com:7443\"",
        "endpoint = \"db1.example.com\"",
        "db1.example.com\"",
        "agents.prod-db.endpoint",
        "is not HOST:PORT",
    );
}

#[test]
fn bad_parallelism() {
    bad(
        "parallel = 2",
        "parallel = 0",
        "parallel = 0",
        "controller.parallel",
        "1 to 64",
    );
}

#[test]
fn missing_controller_name() {
    bad(
        "name = \"ops\"\n",
        "",
        "[controller]",
        "controller.name",
        "missing field `name`",
    );
}

#[test]
fn missing_file() {
    let err = plan::load(Path::new("/nonexistent/stagesync.toml"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("/nonexistent/stagesync.toml: cannot read the plan"),
        "{err}"
    );
}

#[test]
fn the_example_plan_parses() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/stagesync.toml");
    let p = plan::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        p.order(),
        vec!["backup-to-qa", "prod-to-stage1", "stage1-to-dev"]
    );
    assert!(p.pairs["prod-to-stage1"].preflight.git.is_some());
    assert_eq!(p.pairs["prod-to-stage1"].copies.len(), 1);
    assert!(p.backups.is_some());
    assert!(p.backup_source("backup-to-qa").is_some());
}

const BACKUPS: &str = r#"
[backups]
daily = "s3://backups/db1/daily/"
weekly = "s3://backups/db1/weekly/"
keep_daily = 7
profile = "backup"

[pairs.backup-to-qa]
source = { backup = "s3://backups/db1/daily/", database = "production" }
dest = { agent = "staging-db", database = "qa", owner = "stage" }
"#;

fn bad_backups(find: &str, replace: &str, key: &str, needle: &str) {
    let base = format!("{VALID}{BACKUPS}");
    let text = base.replacen(find, replace, 1);
    assert_ne!(text, base, "{find:?} not found");
    // The error is on the (first) replaced line.
    let line = base[..base.find(find).expect("found")].lines().count() + 1;
    let err = parse(&text).expect_err("should be refused");
    let prefix = format!("/etc/stagesync/stagesync.toml:{line}: {key}: ");
    assert!(err.starts_with(&prefix), "expected {prefix:?}, got {err:?}");
    assert!(err.contains(needle), "expected {needle:?} in {err:?}");
}

#[test]
fn backups_and_backup_sources_parse() {
    let p = parse(&format!("{VALID}{BACKUPS}")).unwrap();
    let b = p.backups.as_ref().unwrap();
    assert_eq!(b.daily.to_string(), "s3://backups/db1/daily/");
    assert_eq!(b.weekly_days, vec![1, 7, 14, 21, 28]);
    assert_eq!((b.keep_daily, b.keep_weekly), (7, 8));
    let src = p.backup_source("backup-to-qa").unwrap();
    assert_eq!(src.database, "production");
    assert_eq!(src.side.profile.as_deref(), Some("backup"));
    assert!(p.backup_source("prod-to-stage1").is_none());
    let spec = p.pair_spec("backup-to-qa", "stagesync", |_| None).unwrap();
    assert_eq!(spec.dest_db, "qa");
}

#[test]
fn backup_mistakes_are_located() {
    bad_backups(
        "keep_daily = 7",
        "keep_daily = 0",
        "backups.keep_daily",
        "the newest good backup is always kept",
    );
    bad_backups(
        "weekly = \"s3://backups/db1/weekly/\"",
        "weekly = \"s3://backups/db1/daily/\"",
        "backups.weekly",
        "must not be backups.daily or lie inside it",
    );
    bad_backups(
        "daily = \"s3://backups/db1/daily/\"",
        "daily = \"backups/db1\"",
        "backups.daily",
        "not an s3:// URL",
    );
    bad_backups(
        "source = { backup = \"s3://backups/db1/daily/\", database = \"production\" }",
        "source = { backup = \"s3://backups/db1/daily/\", agent = \"prod-db\", database = \"production\" }",
        "pairs.backup-to-qa.source.backup",
        "either an agent or a backup",
    );
    bad_backups(
        "dest = { agent = \"staging-db\", database = \"qa\", owner = \"stage\" }",
        "mode = \"parallel\"\ndest = { agent = \"staging-db\", database = \"qa\", owner = \"stage\" }",
        "pairs.backup-to-qa.mode",
        "parallel mode (pg_dump -Fd) was retired",
    );
    bad_backups(
        "dest = { agent = \"staging-db\", database = \"qa\", owner = \"stage\" }",
        "unmasked = true\ndest = { agent = \"staging-db\", database = \"qa\", owner = \"stage\" }",
        "pairs.backup-to-qa.unmasked",
        "a backup is restored as it was taken",
    );
}

const COPY: &str = r#"
[[pairs.prod-to-stage1.copies]]
name = "media"
source = "s3://media-prod/"
dest = "s3://media-stage/"
listing = "tree"
"#;

#[test]
fn copy_listing_is_parsed_and_checked() {
    let p = parse(&format!("{VALID}{COPY}")).unwrap();
    let copy = &p.pairs["prod-to-stage1"].copies[0];
    assert_eq!(copy.listing, stagesync_s3::ListingMode::Tree);
    let text = format!("{VALID}{}", COPY.replace("\"tree\"", "\"deep\""));
    let line = text.lines().position(|l| l.contains("\"deep\"")).unwrap() + 1;
    let err = parse(&text).unwrap_err();
    let prefix =
        format!("/etc/stagesync/stagesync.toml:{line}: pairs.prod-to-stage1.copies[0].listing: ");
    assert!(err.starts_with(&prefix), "{err}");
    assert!(err.contains("\"flat\" or \"tree\""), "{err}");
    let default = COPY.replace("listing = \"tree\"\n", "");
    let p = parse(&format!("{VALID}{default}")).unwrap();
    assert_eq!(
        p.pairs["prod-to-stage1"].copies[0].listing,
        stagesync_s3::ListingMode::Flat
    );
}

/// Bucket names are global on AWS: one bucket reached through two profiles
/// is still one bucket, and a mirror into an overlapping prefix of it would
/// copy into its own source and delete from it.
#[test]
fn one_bucket_through_two_profiles_with_overlapping_prefixes_is_refused() {
    let copy = r#"
[[pairs.prod-to-stage1.copies]]
name = "media"
source = "s3://media/uploads/"
dest = "s3://media/"
source_profile = "prod"
dest_profile = "staging"
"#;
    let text = format!("{VALID}{copy}");
    let line = text
        .lines()
        .position(|l| l == "dest = \"s3://media/\"")
        .unwrap()
        + 1;
    let err = parse(&text).unwrap_err();
    let prefix =
        format!("/etc/stagesync/stagesync.toml:{line}: pairs.prod-to-stage1.copies[0].dest: ");
    assert!(err.starts_with(&prefix), "{err}");
    for part in [
        "s3://media/uploads/",
        "profile prod",
        "profile staging",
        "same bucket",
    ] {
        assert!(err.contains(part), "{part:?} in {err}");
    }
    // Side by side in that bucket, the two prefixes are fine.
    let apart = copy.replace("dest = \"s3://media/\"", "dest = \"s3://media/staging/\"");
    parse(&format!("{VALID}{apart}")).unwrap();
}

#[test]
fn keep_truncate_and_notify_parse() {
    let text = format!(
        "{VALID}\n[notify]\nwebhook_env = \"STAGESYNC_WEBHOOK\"\non = \"failure\"\ntextfile = \"metrics/stagesync.prom\"\n"
    )
    .replacen(
        "params = [\"SOCIAL_SECRET\"]",
        "params = [\"SOCIAL_SECRET\"]\nkeep = [{ table = \"public.django_site\" }, { table = \"Public.\\\"Auth User\\\"\", where = \"is_staff\" }]\ntruncate_after = [\"public.outbox\"]\ntruncate_cascade = true",
        1,
    );
    let p = parse(&text).unwrap();
    let s = &p.pairs["prod-to-stage1"].staging;
    assert_eq!(s.keep.len(), 2);
    let user = s.keep[1].table.as_ref().unwrap();
    assert_eq!(
        (user.schema.as_str(), user.table.as_str()),
        ("public", "Auth User")
    );
    assert_eq!(s.keep[1].r#where, "is_staff");
    assert_eq!(s.truncate[0].table, "outbox");
    assert!(s.truncate_cascade);
    let n = p.notify.as_ref().unwrap();
    let hook = n.webhook.as_ref().unwrap();
    assert_eq!(hook.env, "STAGESYNC_WEBHOOK");
    assert_eq!(hook.when, stagesync_controller::notify::When::Failure);
    assert_eq!(
        n.textfile.as_deref(),
        Some(Path::new("/etc/stagesync/metrics/stagesync.prom"))
    );
    let spec = p
        .pair_spec("prod-to-stage1", "stagesync", |_| Some("s".into()))
        .unwrap();
    assert_eq!(&spec.staging, s);
}

#[test]
fn keep_and_notify_mistakes_are_located() {
    let pair_line = "params = [\"SOCIAL_SECRET\"]";
    for (added, key, needle) in [
        (
            "keep = [{ table = \"django_site\" }]",
            "keep.table",
            "is not schema.table",
        ),
        (
            "keep = [{ table = \"public.t\", where = \" \" }]",
            "keep.where",
            "leave it out to keep every row",
        ),
        (
            "keep = [{ table = \"public.t\" }]\ntruncate_after = [\"public.t\"]",
            "truncate_after",
            "also kept",
        ),
        (
            "keep = [{ table = \"public.t\", filter = \"x\" }]",
            "keep",
            "unknown field",
        ),
    ] {
        let text = VALID.replacen(pair_line, &format!("{pair_line}\n{added}"), 1);
        let err = parse(&text).expect_err(added);
        assert!(err.contains(key) && err.contains(needle), "{added}: {err}");
    }
    for (table, key, needle) in [
        (
            "webhook_env = \"https://hooks.example.com/x\"",
            "notify.webhook_env",
            "not an environment variable name",
        ),
        (
            "webhook_env = \"H\"\non = \"sometimes\"",
            "notify.on",
            "\"always\" or \"failure\"",
        ),
        ("retries = 3", "notify", "nothing to report to"),
        (
            "webhook_env = \"H\"\ntimeout_secs = 0",
            "notify.timeout_secs",
            "1 to 300",
        ),
    ] {
        let text = format!("{VALID}\n[notify]\n{table}\n");
        let err = parse(&text).expect_err(table);
        assert!(err.contains(key) && err.contains(needle), "{table}: {err}");
    }
}
