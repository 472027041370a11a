//! The privacy guard: the production agent masks personal data on the copy
//! lanes before it leaves the host, by its own rules and key. Sentinel
//! values in production's masked columns must appear nowhere on staging:
//! not in a table, not in the cluster's files, not in either agent's work
//! directory or the source agent's log.

use std::path::{Path, PathBuf};

use stagesync_controller::backup;
use stagesync_controller::plan::BackupPlan;
use stagesync_controller::refresh::refresh;
use stagesync_harness::Fleet;
use stagesync_harness::fleet::{BACKUP_BUCKET, S3_PROFILE};
use stagesync_harness::masked::{
    RULES, SENTINEL, masked_fleet, restart, spec, strings, write_secret,
};
use stagesync_s3::{S3Location, SideConfig};

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
    // orders' one masked column is text: its rows were masked in binary;
    // users' (dates, an address, JSON) were masked as text. The join
    // below shows both give the same email for the same input.
    assert_eq!(report.tables_binary, 1, "{report:?}");
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
    restart(f.prod_mut()).await;
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
    restart(f.prod_mut()).await;
    refresh(f.tls(), &spec(&f), |_| {})
        .await
        .expect("a refresh with the new column classified");
    assert_eq!(
        strings(f.dst(), "stage", "SELECT DISTINCT bio FROM users").await,
        vec!["sntnl bio".to_string()]
    );
    f.remember_stage().await;
    std::fs::write(dir.path().join("masking.toml"), RULES).unwrap();
    restart(f.prod_mut()).await;
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
