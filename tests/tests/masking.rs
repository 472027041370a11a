//! The privacy guard: the production agent masks personal data on the copy
//! lanes before it leaves the host, by its own rules and key. Sentinel
//! values in production's masked columns must appear nowhere on staging:
//! not in a table, not in the cluster's files, not in either agent's work
//! directory or the source agent's log.

use std::path::{Path, PathBuf};

use stagesync_controller::backup;
use stagesync_controller::plan::BackupPlan;
use stagesync_controller::refresh::{BackupSource, PairSource, PairSpec, refresh};
use stagesync_harness::fleet::{BACKUP_BUCKET, S3_PROFILE};
use stagesync_harness::{AgentRun, Fleet, PgCluster};
use stagesync_s3::{ProfileFilePaths, S3Location, SideConfig};

const SENTINEL: &str = "sntnl";

const SOURCE: &str = "
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

const RULES: &str = r#"
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

fn write_secret(path: &Path, bytes: &[u8]) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, bytes).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// A fleet whose production agent (a process, so it can be restarted with
/// another key) masks `production` by [`RULES`].
async fn masked_fleet(dir: &Path) -> Fleet {
    masked_fleet_with(dir, AgentRun::InProcess).await
}

/// [`masked_fleet`], its staging agent run as `staging`.
async fn masked_fleet_with(dir: &Path, staging: AgentRun) -> Fleet {
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

fn spec(f: &Fleet) -> PairSpec {
    let mut spec = f.pair();
    spec.jobs = 2;
    spec
}

async fn strings(c: &PgCluster, db: &str, sql: &str) -> Vec<String> {
    c.strings(db, sql).await.unwrap()
}

/// Every file under `dir` that holds `needle`.
fn files_holding(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if std::fs::read(&p).is_ok_and(|b| {
                b.windows(needle.len())
                    .any(|w| w.eq_ignore_ascii_case(needle))
            }) {
                found.push(p);
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn masked_data_never_reaches_staging_and_joins_survive() {
    let dir = tempfile::tempdir().unwrap();
    let mut f = masked_fleet(dir.path()).await;
    let (src, dst) = (f.src(), f.dst());
    let report = refresh(f.tls(), &spec(&f), |_| {})
        .await
        .expect("a masked refresh");
    assert!(report.tables_copied >= 2, "{report:?}");
    // Nothing of the rows in what the controller reports.
    assert!(!format!("{report:?}").to_lowercase().contains(SENTINEL));

    // No sentinel in any row of any table.
    for table in ["users", "orders"] {
        let leaked = strings(
            dst,
            "stage",
            &format!("SELECT t::text FROM {table} t WHERE t::text ILIKE '%{SENTINEL}%'"),
        )
        .await;
        assert!(leaked.is_empty(), "{table}: {leaked:?}");
    }
    // Nor in the destination cluster's files (tables, WAL), once written.
    dst.exec("postgres", "CHECKPOINT").await.unwrap();
    let in_files = files_holding(&dst.data_dir, SENTINEL.as_bytes());
    assert!(in_files.is_empty(), "{in_files:?}");
    // Nor in the agents' work directories or the source agent's log.
    for agent in [f.prod(), f.staging()] {
        let held = files_holding(&agent.work_dir(), SENTINEL.as_bytes());
        assert!(held.is_empty(), "{held:?}");
    }
    assert!(!f.prod().log_text().to_lowercase().contains(SENTINEL));
    // The check can see a sentinel: production's files hold them.
    src.exec("postgres", "CHECKPOINT").await.unwrap();
    assert!(!files_holding(&src.data_dir.join("base"), SENTINEL.as_bytes()).is_empty());

    // Unmasked columns are identical; masked ones differ in every row.
    let kept = "SELECT md5(string_agg(id || ':' || created, ',' ORDER BY id)) FROM users";
    assert_eq!(
        strings(src, "production", kept).await,
        strings(dst, "stage", kept).await
    );
    let kept = "SELECT md5(string_agg(id || ':' || total || note, ',' ORDER BY id)) FROM orders";
    assert_eq!(
        strings(src, "production", kept).await,
        strings(dst, "stage", kept).await
    );
    let emails = "SELECT email FROM users ORDER BY id";
    let masked = strings(dst, "stage", emails).await;
    let raw = strings(src, "production", emails).await;
    assert_eq!(masked.len(), raw.len());
    assert!(
        masked
            .iter()
            .zip(&raw)
            .all(|(m, r)| m != r && m.ends_with("@example.com"))
    );
    // Birth dates moved by at most 30 days; the JSON document keeps its
    // other keys; the bytea column is gone.
    let born = "SELECT born::text FROM users ORDER BY id";
    let moved = strings(dst, "stage", born).await;
    let was = strings(src, "production", born).await;
    let day = |s: &str| {
        time::Date::parse(s, time::macros::format_description!("[year]-[month]-[day]")).unwrap()
    };
    assert!(
        moved
            .iter()
            .zip(&was)
            .all(|(m, w)| (day(m) - day(w)).whole_days().abs() <= 30)
    );
    assert_ne!(moved, was);
    let plans = "SELECT count(*)::text FROM users WHERE profile->>'plan' = 'pro' AND profile->'tags' = '[\"a\"]' AND avatar IS NULL";
    assert_eq!(strings(dst, "stage", plans).await, vec!["500".to_string()]);
    // A join on the masked email finds the same rows; the unique index and
    // the foreign key into the masked column were built by the restore.
    let join = "SELECT count(*)::text FROM orders o JOIN users u ON u.email = o.user_email";
    assert_eq!(strings(dst, "stage", join).await, vec!["2000".to_string()]);
    let constraints = "SELECT count(*)::text FROM pg_constraint WHERE conrelid IN ('users'::regclass, 'orders'::regclass) AND contype IN ('u', 'f') AND convalidated";
    assert_eq!(
        strings(dst, "stage", constraints).await,
        vec!["2".to_string()]
    );

    // The same key gives the same values again.
    refresh(f.tls(), &spec(&f), |_| {})
        .await
        .expect("a second masked refresh");
    assert_eq!(strings(dst, "stage", emails).await, masked);

    // Another key, others.
    write_secret(&dir.path().join("masking.key"), &[0x77; 40]);
    f.prod_mut().process().kill().unwrap();
    f.prod_mut().process().start().await.unwrap();
    refresh(f.tls(), &spec(&f), |_| {})
        .await
        .expect("a refresh under another key");
    let rekeyed = strings(f.dst(), "stage", emails).await;
    assert!(rekeyed.iter().zip(&masked).all(|(a, b)| a != b));
}

/// Strict mode: a column nobody classified stops the refresh, named, with
/// nothing changed on staging; so does a refresh that would not use the
/// copy lanes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unclassified_column_stops_the_refresh() {
    let dir = tempfile::tempdir().unwrap();
    let mut f = masked_fleet(dir.path()).await;
    f.src()
        .exec(
            "production",
            "ALTER TABLE users ADD COLUMN bio text DEFAULT 'sntnl bio'",
        )
        .await
        .unwrap();
    let e = refresh(f.tls(), &spec(&f), |_| {})
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("public.users.bio: not classified"), "{e}");
    assert!(e.contains("masking.toml"), "{e}");
    f.assert_untouched().await;
    // Classified as `keep`, it passes the next refresh.
    std::fs::write(
        dir.path().join("masking.toml"),
        RULES.replace("avatar = \"null\"\n", "avatar = \"null\"\nbio = \"keep\"\n"),
    )
    .unwrap();
    f.prod_mut().process().kill().unwrap();
    f.prod_mut().process().start().await.unwrap();
    refresh(f.tls(), &spec(&f), |_| {})
        .await
        .expect("a refresh with the new column classified");
    assert_eq!(
        strings(f.dst(), "stage", "SELECT DISTINCT bio FROM users").await,
        vec!["sntnl bio".to_string()]
    );
    f.remember_stage().await;
    std::fs::write(dir.path().join("masking.toml"), RULES).unwrap();
    f.prod_mut().process().kill().unwrap();
    f.prod_mut().process().start().await.unwrap();
    // One worker: pg_dump's one stream, which cannot mask: refused.
    f.src()
        .exec("production", "ALTER TABLE users DROP COLUMN bio")
        .await
        .unwrap();
    let mut one = spec(&f);
    one.jobs = 1;
    let e = refresh(f.tls(), &one, |_| {})
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("may leave only on copy lanes"), "{e}");
    f.assert_untouched().await;
    // A backup would hold the database unmasked: refused by the agent,
    // whatever the places its policy allows.
    let plan = BackupPlan {
        daily: S3Location::new(BACKUP_BUCKET, "daily/"),
        weekly: None,
        weekly_days: Vec::new(),
        keep_daily: 1,
        keep_weekly: 0,
        side: SideConfig {
            profile: Some(S3_PROFILE.into()),
            region: None,
            endpoint: Some(f.s3().endpoint()),
        },
    };
    let e = backup::run(
        f.tls(),
        &f.prod().target(),
        backup::request(&plan, "production"),
        |_| {},
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("privacy guard") && e.contains("masking rules"),
        "{e}"
    );
    assert!(f.s3().objects(BACKUP_BUCKET).is_empty());
}

const CLI: &str = env!("CARGO_BIN_EXE_stagesync-demo");

/// `stagesync args…` against the fleet's plan.
async fn stagesync(f: &Fleet, args: &[&str]) -> (Option<i32>, String, String) {
    let out = f
        .command(CLI)
        .env(stagesync_harness::demo::AS_CLI_ENV, "1")
        .args(args)
        .output()
        .await
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The masking tools run on the source agent: `check` sets its rules
/// against the live schema, `suggest` writes rules for every column,
/// `preview` shows rows masked there (no raw value reaches the CLI).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mask_check_suggest_and_preview() {
    let dir = tempfile::tempdir().unwrap();
    let f = masked_fleet(dir.path()).await;
    let plan = f.write_plan(
        "[pairs.p]\nsource = { agent = \"prod-db\", database = \"production\" }\n\
         dest = { agent = \"staging-db\", database = \"stage\", owner = \"stage\" }\n",
    );
    let plan = plan.to_str().unwrap();
    let (code, out, err) = stagesync(&f, &["mask", "check", "p", "--plan", plan]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("every copied column is classified"), "{out}");

    let (code, out, err) = stagesync(
        &f,
        &[
            "mask",
            "preview",
            "p",
            "--plan",
            plan,
            "--table",
            "public.users",
            "--rows",
            "5",
        ],
    )
    .await;
    assert_eq!(code, Some(0), "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 6, "{out}");
    assert!(lines[0].starts_with("id\temail\tfirst_name"), "{out}");
    assert!(lines[1].contains("@example.com"), "{out}");
    assert!(!out.to_lowercase().contains(SENTINEL), "{out}");

    let (code, out, _) = stagesync(&f, &["mask", "suggest", "p", "--plan", plan]).await;
    assert_eq!(code, Some(0));
    assert!(out.contains("[databases.tables.'public.users']"), "{out}");
    assert!(
        out.contains("email = \"email\"") && out.contains("phone = \"phone\""),
        "{out}"
    );
    assert!(
        out.contains("born = \"keep\"  # review") || out.contains("born = { date"),
        "{out}"
    );

    f.src()
        .exec("production", "ALTER TABLE orders ADD COLUMN coupon text")
        .await
        .unwrap();
    let (code, _, err) = stagesync(&f, &["mask", "check", "p", "--plan", plan]).await;
    assert_eq!(code, Some(4), "{err}");
    assert!(
        err.contains("public.orders.coupon: not classified"),
        "{err}"
    );
}

/// Edits a process agent's config and restarts it with the new one.
async fn reconfigure(
    agent: &mut stagesync_harness::fleet::FleetAgent,
    edit: impl FnOnce(String) -> String,
) {
    let path = agent.config_path().to_path_buf();
    let text = std::fs::read_to_string(&path).unwrap();
    let changed = edit(text.clone());
    assert_ne!(changed, text, "the edit changed nothing");
    std::fs::write(&path, changed).unwrap();
    agent.process().kill().unwrap();
    agent.process().start().await.unwrap();
}

/// Unmasked rows leave production only to a peer and a backup place the
/// production agent lists, and land only where the receiving agent's
/// policy takes them; a backup says in its manifest that it is unmasked.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unmasked_only_to_listed_peers_and_places() {
    let dir = tempfile::tempdir().unwrap();
    let mut f = masked_fleet_with(dir.path(), AgentRun::Process).await;
    let mut unmasked = spec(&f);
    unmasked.unmasked = true;
    let receive = |on: bool| {
        move |t: String| match t.contains("may_receive_unmasked") {
            false => t.replacen("\npeers = ", "\nmay_receive_unmasked = true\npeers = ", 1),
            true => t.replace(
                &format!("may_receive_unmasked = {}", !on),
                &format!("may_receive_unmasked = {on}"),
            ),
        }
    };
    // Staging would take it; the production agent lists no such peer.
    reconfigure(f.staging_mut(), receive(true)).await;
    let e = refresh(f.tls(), &unmasked, |_| {})
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("privacy guard") && e.contains("masking.unmasked_peers = []"),
        "{e}"
    );
    f.assert_untouched().await;

    // Production lists staging as a peer and one backup place.
    reconfigure(f.prod_mut(), |t| {
        t.replace(
            "\n[masking]\n",
            "\n[masking]\nunmasked_peers = [\"staging-db\"]\nunmasked_backup_to = [\"http://127.0.0.1:*/backups/dr/\"]\n",
        )
    })
    .await;
    // A backup goes only to the listed place, and its manifest says so.
    let side = SideConfig {
        profile: Some(S3_PROFILE.into()),
        region: None,
        endpoint: Some(f.s3().endpoint()),
    };
    let plan = |prefix: &str| BackupPlan {
        daily: S3Location::new(BACKUP_BUCKET, prefix),
        weekly: None,
        weekly_days: Vec::new(),
        keep_daily: 1,
        keep_weekly: 0,
        side: side.clone(),
    };
    let take = |prefix: &'static str| {
        let target = f.prod().target();
        let tls = f.tls();
        let req = backup::request(&plan(prefix), "production");
        async move { backup::run(tls, &target, req, |_| {}).await }
    };
    let e = take("daily/").await.unwrap_err().to_string();
    assert!(e.contains("masking.unmasked_backup_to"), "{e}");
    take("dr/").await.expect("a backup to the listed place");
    let objects = f.s3().objects(BACKUP_BUCKET);
    let manifest = objects
        .iter()
        .find(|(k, _)| k.ends_with(".manifest.json"))
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        .expect("a manifest");
    assert!(
        manifest.contains("\"unmasked_personal_data\": true"),
        "{manifest}"
    );
    let (config, credentials) = f.aws_files();
    let from_backup = PairSpec::with_source(
        PairSource::Backup(BackupSource {
            place: S3Location::new(BACKUP_BUCKET, "dr/"),
            side: side.clone(),
            files: ProfileFilePaths {
                config: Some(config),
                credentials: Some(credentials),
            },
            database: "production".into(),
            taken: None,
        }),
        f.staging().target(),
        "stage",
        "stage",
    );

    // Staging's policy does not take unmasked data: neither the stream nor
    // the backup lands.
    reconfigure(f.staging_mut(), receive(false)).await;
    for (what, spec) in [("stream", &unmasked), ("backup", &from_backup)] {
        let e = refresh(f.tls(), spec, |_| {})
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("privacy guard") && e.contains("policy.may_receive_unmasked is off"),
            "{what}: {e}"
        );
        f.assert_untouched().await;
    }

    // A replica that may receive it gets the rows as they are, live and
    // from the backup.
    reconfigure(f.staging_mut(), receive(true)).await;
    refresh(f.tls(), &unmasked, |_| {})
        .await
        .expect("an unmasked refresh to a listed replica");
    let emails = "SELECT email FROM users ORDER BY id";
    let raw = strings(f.src(), "production", emails).await;
    assert!(raw[0].contains(SENTINEL));
    assert_eq!(strings(f.dst(), "stage", emails).await, raw);
    f.dst()
        .exec("stage", "UPDATE users SET last_name = 'changed'")
        .await
        .unwrap();
    refresh(f.tls(), &from_backup, |_| {})
        .await
        .expect("a restore of the unmasked backup");
    let names = "SELECT DISTINCT last_name FROM users";
    assert_eq!(
        strings(f.dst(), "stage", names).await,
        vec!["SntnlLast".to_string()]
    );
    assert_eq!(strings(f.dst(), "stage", emails).await, raw);
}

/// A transform whose output cannot fit its column is refused before
/// anything changes, by file, line and column: an email into `varchar(5)`,
/// a scramble into a domain with a CHECK, a range into a column a table
/// CHECK reads. Numeric noise keeps its column's scale.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rules_that_cannot_fit_their_columns_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut f = masked_fleet(dir.path()).await;
    f.src()
        .exec(
            "production",
            "CREATE DOMAIN handle AS text CHECK (VALUE ~ '^[a-z]+$'); \
             ALTER TABLE users ADD COLUMN code varchar(5) DEFAULT 'ab', \
                 ADD COLUMN nick handle DEFAULT 'sntnl', \
                 ADD COLUMN score int DEFAULT 7 CHECK (score >= 0), \
                 ADD COLUMN salary numeric(8, 2); \
             UPDATE users SET salary = 1000 + id * 3.25",
        )
        .await
        .unwrap();
    let rules_file = dir.path().join("masking.toml");
    let with = |code: &str, nick: &str, score: &str| {
        RULES.replace(
            "avatar = \"null\"\n",
            &format!(
                "avatar = \"null\"\ncode = {code}\nnick = {nick}\nscore = {score}\nsalary = {{ noise = 0.1 }}\n"
            ),
        )
    };
    let line_of = |text: &str, key: &str| {
        text.lines()
            .position(|l| l.starts_with(key))
            .map(|n| n + 1)
            .unwrap()
    };
    let bad = with("\"email\"", "\"text\"", "{ int = [0, 100] }");
    std::fs::write(&rules_file, &bad).unwrap();
    f.prod_mut().process().kill().unwrap();
    f.prod_mut().process().start().await.unwrap();
    let e = refresh(f.tls(), &spec(&f), |_| {})
        .await
        .unwrap_err()
        .to_string();
    let at = |key: &str| format!("masking.toml:{}: public.users.{key}:", line_of(&bad, key));
    assert!(
        e.contains(&format!("{} \"email\" may write", at("code")))
            && e.contains("the column takes 5"),
        "{e}"
    );
    assert!(
        e.contains(&format!(
            "{} \"text\" cannot be shown to pass the CHECK",
            at("nick")
        )) && e.contains("of domain handle"),
        "{e}"
    );
    assert!(
        e.contains(&format!(
            "{} \"int\" cannot be shown to pass the CHECK",
            at("score")
        )) && e.contains("of the table"),
        "{e}"
    );
    f.assert_untouched().await;

    std::fs::write(
        &rules_file,
        with("{ value = \"x\" }", "\"keep\"", "\"keep\""),
    )
    .unwrap();
    f.prod_mut().process().kill().unwrap();
    f.prod_mut().process().start().await.unwrap();
    refresh(f.tls(), &spec(&f), |_| {})
        .await
        .expect("a refresh whose rules fit");
    let salaries = "SELECT salary::text FROM users ORDER BY id";
    let raw = strings(f.src(), "production", salaries).await;
    let masked = strings(f.dst(), "stage", salaries).await;
    assert_eq!(raw.len(), masked.len());
    let mut moved = 0;
    for (r, m) in raw.iter().zip(&masked) {
        let (x, y): (f64, f64) = (r.parse().unwrap(), m.parse().unwrap());
        assert!((y - x).abs() <= x * 0.1 + 0.01, "{r} -> {m}");
        assert_eq!(m.split_once('.').map(|(_, d)| d.len()), Some(2), "{m}");
        moved += usize::from(r != m);
    }
    assert!(moved > raw.len() * 9 / 10, "{moved} of {} moved", raw.len());
    assert_eq!(
        strings(f.dst(), "stage", "SELECT DISTINCT code FROM users").await,
        vec!["x".to_string()]
    );
}
