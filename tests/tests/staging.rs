//! What staging keeps across a refresh, on real clusters and agents:
//! staging's own rows upserted over production's by primary key, the
//! tables' sequences moved past them, queues emptied; a bad rule fails the
//! pair before the swap, naming the table, with the live database as it
//! was; a first refresh says there was nothing to keep.

use stagesync_controller::refresh::{RefreshError, refresh};
use stagesync_harness::Fleet;
use stagesync_harness::fixtures::content_hashes;
use stagesync_proto::v1 as pb;

/// Production: a site, 1,000 users (ids 1 to 1000), queues, a table
/// without a primary key, a flag table.
const PRODUCTION: &str = r#"
CREATE TABLE public.django_site (id serial PRIMARY KEY, domain text NOT NULL, name text NOT NULL);
INSERT INTO public.django_site (domain, name) VALUES ('example.com', 'production');
CREATE TABLE public.auth_user (
  id serial PRIMARY KEY,
  username text UNIQUE NOT NULL,
  email text,
  is_staff boolean NOT NULL DEFAULT false
);
INSERT INTO public.auth_user (username, email)
  SELECT 'user' || i, 'user' || i || '@example.com' FROM generate_series(1, 1000) i;
CREATE TABLE public.scheduled_message (
  id serial PRIMARY KEY,
  user_id int REFERENCES public.auth_user (id),
  body text
);
INSERT INTO public.scheduled_message (user_id, body) SELECT i, 'hello' FROM generate_series(1, 50) i;
CREATE TABLE public.outbox (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, payload text);
INSERT INTO public.outbox (payload) SELECT 'webhook ' || i FROM generate_series(1, 10) i;
CREATE TABLE public.audit (at int);
INSERT INTO public.audit VALUES (1);
CREATE TABLE public.feature_flag (id int PRIMARY KEY, name text);
INSERT INTO public.feature_flag VALUES (1, 'new_checkout');
"#;

/// Staging's live database, as its owner made it: its own site, two staff
/// users (one with production's id 5, one past production's ids), a user
/// that is not staff, and a flag table with a column of its own.
const STAGING: &str = r#"
SET ROLE stage;
CREATE TABLE public.django_site (id serial PRIMARY KEY, domain text NOT NULL, name text NOT NULL);
INSERT INTO public.django_site VALUES (1, 'staging.example.com', 'staging');
CREATE TABLE public.auth_user (
  id serial PRIMARY KEY,
  username text UNIQUE NOT NULL,
  email text,
  is_staff boolean NOT NULL DEFAULT false
);
INSERT INTO public.auth_user VALUES
  (5, 'qa', 'qa@staging.example.com', true),
  (1500, 'admin', 'admin@staging.example.com', true),
  (2, 'leftover', 'leftover@staging.example.com', false);
CREATE TABLE public.audit (at int);
CREATE TABLE public.feature_flag (id int PRIMARY KEY, name text, staging_only int);
"#;

async fn fleet() -> Fleet {
    let f = Fleet::builder().source_sql(PRODUCTION).build().await;
    f.dst().exec("stage", STAGING).await.unwrap();
    f
}

fn table(name: &str) -> pb::TableRef {
    pb::TableRef {
        schema: "public".into(),
        table: name.into(),
    }
}

fn keep(name: &str, filter: &str) -> pb::KeepRows {
    pb::KeepRows {
        table: Some(table(name)),
        r#where: filter.into(),
    }
}

async fn rows(f: &Fleet, sql: &str) -> Vec<String> {
    f.dst().strings("stage", sql).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn staging_keeps_its_rows_and_empties_its_queues() {
    let f = fleet().await;
    let mut spec = f.pair();
    spec.staging = pb::StagingRules {
        keep: vec![keep("django_site", ""), keep("auth_user", "is_staff")],
        truncate: vec![table("scheduled_message"), table("outbox")],
        truncate_cascade: false,
    };
    let report = refresh(f.tls(), &spec, |_| {}).await.expect("refresh");
    assert_eq!((report.rows_kept, report.nothing_to_keep), (3, false));

    assert_eq!(
        rows(&f, "SELECT id || ' ' || domain FROM django_site").await,
        ["1 staging.example.com"]
    );
    // The staff user with production's id 5 replaced production's user 5;
    // the one past production's ids joined them; the non-staff one stayed
    // behind, so id 2 is production's.
    assert_eq!(
        rows(
            &f,
            "SELECT id || ' ' || username FROM auth_user WHERE id IN (2, 5, 1500) ORDER BY id"
        )
        .await,
        ["2 user2", "5 qa", "1500 admin"]
    );
    assert_eq!(
        rows(&f, "SELECT count(*)::text FROM auth_user").await,
        ["1001"]
    );
    // A new user does not collide with a kept one.
    assert_eq!(
        rows(
            &f,
            "INSERT INTO auth_user (username) VALUES ('signup') RETURNING id::text"
        )
        .await,
        ["1501"]
    );
    // Emptied: the queues, and nothing else.
    assert_eq!(
        rows(
            &f,
            "SELECT (SELECT count(*) FROM scheduled_message) || ' ' || (SELECT count(*) FROM outbox)"
        )
        .await,
        ["0 0"]
    );
    let mut here = content_hashes(f.dst(), "stage").await.unwrap();
    let mut there = content_hashes(f.src(), "production").await.unwrap();
    for changed in [
        "public.django_site",
        "public.auth_user",
        "public.scheduled_message",
        "public.outbox",
    ] {
        assert!(here.remove(changed).is_some() && there.remove(changed).is_some());
    }
    assert_eq!(here, there, "the rest equals production");
    // Production's users other than 5 arrived as they were.
    let users = "SELECT string_agg(id || username || coalesce(email, ''), ',' ORDER BY id) \
                 FROM auth_user WHERE id <= 1000 AND id <> 5";
    let src: String = f
        .src()
        .client("production")
        .await
        .unwrap()
        .query_one(users, &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows(&f, users).await, [src]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bad_rule_fails_the_pair_before_the_swap_naming_the_table() {
    let f = fleet().await;
    let live = content_hashes(f.dst(), "stage").await.unwrap();
    let cases = [
        (
            keep("audit", ""),
            "keep public.audit: the table has no primary key",
        ),
        (
            keep("nope", ""),
            "keep public.nope: no such table in production's schema",
        ),
        (
            keep("auth_user", "is_staff AND"),
            "keep public.auth_user: reading staging's rows",
        ),
        (
            keep("feature_flag", ""),
            "keep public.feature_flag: its columns differ",
        ),
        (
            keep("scheduled_message", ""),
            "keep public.scheduled_message: no such table in staging's live database",
        ),
    ];
    for (rule, expected) in cases {
        let mut spec = f.pair();
        spec.staging.keep = vec![rule];
        let err = refresh(f.tls(), &spec, |_| {}).await.unwrap_err();
        assert!(
            matches!(
                err,
                RefreshError::Job {
                    step: pb::Step::PostRestoreSql,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains(expected), "{err}");
        assert_eq!(content_hashes(f.dst(), "stage").await.unwrap(), live);
    }
    // A table others point at is emptied only with CASCADE.
    let mut spec = f.pair();
    spec.staging.truncate = vec![table("auth_user")];
    let err = refresh(f.tls(), &spec, |_| {})
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("truncate_after") && err.contains("scheduled_message"),
        "{err}"
    );
    assert!(err.contains("truncate_cascade = true"), "{err}");
    assert_eq!(content_hashes(f.dst(), "stage").await.unwrap(), live);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_first_refresh_says_there_was_nothing_to_keep() {
    let f = Fleet::builder()
        .source_sql(PRODUCTION)
        .dest_unseeded()
        .build()
        .await;
    f.dst()
        .exec("postgres", "CREATE ROLE stage LOGIN")
        .await
        .unwrap();
    let mut spec = f.pair();
    spec.staging.keep = vec![keep("django_site", "")];
    let report = refresh(f.tls(), &spec, |_| {}).await.expect("refresh");
    assert_eq!((report.rows_kept, report.nothing_to_keep), (0, true));
    assert_eq!(
        rows(&f, "SELECT domain FROM django_site").await,
        ["example.com"]
    );
}
