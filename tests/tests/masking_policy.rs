//! Where masked data may go unmasked (listed peers and backup places, and
//! only into agents whose policy takes it), and rules that cannot fit their
//! columns, refused before anything changes.

use stagesync_controller::backup;
use stagesync_controller::plan::BackupPlan;
use stagesync_controller::refresh::{BackupSource, PairSource, PairSpec, refresh};
use stagesync_harness::AgentRun;
use stagesync_harness::fleet::{BACKUP_BUCKET, S3_PROFILE};
use stagesync_harness::masked::{
    RULES, SENTINEL, masked_fleet, masked_fleet_with, reconfigure, restart, spec, strings,
};
use stagesync_s3::{ProfileFilePaths, S3Location, SideConfig};

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
    restart(f.prod_mut()).await;
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
    restart(f.prod_mut()).await;
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
