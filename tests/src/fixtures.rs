//! Test data and the ways tests compare databases.

use std::collections::BTreeMap;
use std::process::Command;

use anyhow::Context;

use crate::PgCluster;

/// A database with what a web app's database has: several schemas (one
/// named with a space and capitals), an extension from contrib, sequences,
/// foreign keys (two tables referencing each other among them, and a
/// deferrable one), views, a materialized view, functions, triggers, a
/// 100k-row table, a bytea table, a table whose name needs quoting (and
/// holds pattern characters), a large object, an enum, a domain with a
/// CHECK, a generated column, a partitioned table, an unlogged table, a
/// table with row-level security and a table without a primary key; one
/// table of many built-in types (binary COPY rows carry it), an empty one,
/// and one whose columns must travel as text (an array of an enum, a
/// composite, a `regclass`).
pub const RICH_SCHEMA: &str = r#"
CREATE EXTENSION pgcrypto;
CREATE SCHEMA app;
CREATE SCHEMA audit;
CREATE TABLE app.users (
    id bigserial PRIMARY KEY,
    email text NOT NULL UNIQUE,
    created timestamptz NOT NULL DEFAULT '2024-01-01 00:00:00+00'
);
CREATE TABLE app.posts (
    id serial PRIMARY KEY,
    user_id bigint NOT NULL REFERENCES app.users(id) ON DELETE CASCADE,
    title text NOT NULL,
    body text
);
CREATE INDEX posts_user_idx ON app.posts(user_id);
CREATE TABLE app.images (id int PRIMARY KEY, data bytea NOT NULL, digest text);
CREATE TABLE audit.log (id bigserial PRIMARY KEY, tbl text, op text);
CREATE SEQUENCE app.invoice_seq START 1000;
CREATE FUNCTION audit.record() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO audit.log(tbl, op) VALUES (TG_TABLE_NAME, TG_OP);
  RETURN NEW;
END $$;
CREATE TRIGGER posts_audit AFTER INSERT ON app.posts FOR EACH ROW EXECUTE FUNCTION audit.record();
CREATE FUNCTION app.post_count(uid bigint) RETURNS bigint LANGUAGE sql STABLE
  AS $$ SELECT count(*) FROM app.posts WHERE user_id = uid $$;
CREATE VIEW app.user_stats AS
  SELECT u.id, u.email, app.post_count(u.id) AS posts FROM app.users u;
CREATE TABLE app.teams (id int PRIMARY KEY, name text NOT NULL, lead_id int);
CREATE TABLE app.members (id int PRIMARY KEY, team_id int NOT NULL REFERENCES app.teams(id));
ALTER TABLE app.teams ADD FOREIGN KEY (lead_id) REFERENCES app.members(id);
CREATE MATERIALIZED VIEW app.posts_per_user AS
  SELECT user_id, count(*) AS posts FROM app.posts GROUP BY user_id;
CREATE UNIQUE INDEX posts_per_user_idx ON app.posts_per_user(user_id);
CREATE TABLE public.socialaccount_socialapp (
    id serial PRIMARY KEY, provider text, client_id text, secret text
);
INSERT INTO app.users(email) SELECT 'user' || g || '@example.com' FROM generate_series(1, 2000) g;
INSERT INTO app.posts(user_id, title, body)
  SELECT 1 + (g % 2000), 'post ' || g, repeat(md5(g::text), 3) FROM generate_series(1, 100000) g;
INSERT INTO app.images SELECT g, gen_random_bytes(512) || decode(md5(g::text), 'hex'), NULL FROM generate_series(1, 300) g;
UPDATE app.images SET digest = encode(digest(data, 'sha256'), 'hex');
SELECT nextval('app.invoice_seq') FROM generate_series(1, 42);
INSERT INTO public.socialaccount_socialapp(provider, client_id, secret) VALUES ('github', 'prod-id', 'prod-secret');
INSERT INTO app.teams(id, name) SELECT g, 'team ' || g FROM generate_series(1, 50) g;
INSERT INTO app.members SELECT g, 1 + g % 50 FROM generate_series(1, 500) g;
UPDATE app.teams SET lead_id = id;
REFRESH MATERIALIZED VIEW app.posts_per_user;
CREATE TABLE app."Big ""*.t" (id serial PRIMARY KEY, note text);
INSERT INTO app."Big ""*.t"(note) SELECT 'note ' || g FROM generate_series(1, 20000) g;
SELECT lo_from_bytea(4242, convert_to('a large object', 'UTF8'));
CREATE TYPE app.mood AS ENUM ('happy', 'sad', 'meh');
CREATE DOMAIN app.cents AS bigint CHECK (VALUE > 0);
CREATE SCHEMA "Billing Dept";
CREATE TABLE "Billing Dept"."Invoices" (
    id int PRIMARY KEY,
    user_id bigint NOT NULL REFERENCES app.users(id) DEFERRABLE INITIALLY DEFERRED,
    amount app.cents NOT NULL,
    mood app.mood NOT NULL DEFAULT 'meh',
    with_tax numeric GENERATED ALWAYS AS (amount * 1.2) STORED,
    issued date NOT NULL,
    "Note" text
);
INSERT INTO "Billing Dept"."Invoices"(id, user_id, amount, mood, issued, "Note")
  SELECT g, 1 + g % 2000, 100 * g, (ARRAY['happy', 'sad', 'meh'])[1 + g % 3]::app.mood,
         DATE '2024-01-01' + g, CASE WHEN g % 5 = 0 THEN NULL ELSE E'tab\there, line\nbreak \\ ' || g END
  FROM generate_series(1, 3000) g;
CREATE TABLE app.events (id bigint NOT NULL, at timestamptz NOT NULL, kind text) PARTITION BY RANGE (at);
CREATE TABLE app.events_2024 PARTITION OF app.events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE TABLE app.events_2025 PARTITION OF app.events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE INDEX events_at_idx ON app.events (at);
INSERT INTO app.events
  SELECT g, TIMESTAMPTZ '2024-01-01 00:00:00+00' + g * interval '1 hour', 'kind ' || g % 7
  FROM generate_series(1, 15000) g;
CREATE UNLOGGED TABLE app.sessions (key text PRIMARY KEY, data jsonb NOT NULL, expires interval);
INSERT INTO app.sessions SELECT 'k' || g, jsonb_build_object('n', g, 'tags', jsonb_build_array('a', g)), g * interval '90 seconds'
  FROM generate_series(1, 1000) g;
CREATE TABLE app.secrets (id int PRIMARY KEY, owner text NOT NULL, value text);
ALTER TABLE app.secrets ENABLE ROW LEVEL SECURITY;
CREATE POLICY own_rows ON app.secrets USING (owner = current_user);
INSERT INTO app.secrets SELECT g, 'someone', 'v' || g FROM generate_series(1, 100) g;
CREATE TABLE app.page_views (path text, viewed_at timestamptz, ms real, ratio double precision);
INSERT INTO app.page_views
  SELECT '/p/' || g % 37, TIMESTAMPTZ '2024-06-01 12:00:00+00' + g * interval '1 second', g / 7.0, 1.0 / g
  FROM generate_series(1, 5000) g;
CREATE TABLE app.measures (
    id int8 PRIMARY KEY, small int2, n numeric, f4 real, f8 double precision, ok bool,
    code char(5), short varchar(12), raw bytea, day date, t time, ttz timetz, ts timestamp,
    span interval, uid uuid, ip inet, net cidr, mac macaddr, doc jsonb, j json, bits bit(4),
    vbits varbit, price money, pos point, r int4range, rs int4multirange, words tsvector,
    nums int4[], tags text[], mood app.mood, cost app.cents, o oid
);
INSERT INTO app.measures
  SELECT g, (g % 300 - 150)::int2,
         CASE g % 50 WHEN 0 THEN 'NaN'::numeric ELSE (g * 1.0001 - 99)::numeric(20, 6) END,
         CASE g % 40 WHEN 0 THEN '-Infinity'::real ELSE g / 3.0 END, 1.0 / g, g % 2 = 0,
         'c' || g % 9, 'v' || g, decode(md5(g::text), 'hex'), DATE '2000-02-29' + g,
         TIME '00:00:01' + g * interval '7 seconds', TIMETZ '12:00:00+05:30', TIMESTAMP '1999-12-31 23:59:59.5' + g * interval '1 day',
         g * interval '1 month 2 days 3.25 seconds', md5(g::text)::uuid, ('10.0.' || g % 256 || '.' || g % 200)::inet,
         '192.168.0.0/16', ('08:00:2b:01:02:' || lpad(to_hex(g % 256), 2, '0'))::macaddr,
         jsonb_build_object('g', g, 'nested', jsonb_build_array(1, 'two', null)), ('{"k": ' || g || '}')::json,
         (g % 16)::bit(4), (g % 64)::bit(6)::varbit, (g * 1.25)::money, point(g, -g), int4range(g, g + 10),
         int4multirange(int4range(1, g + 2), int4range(g + 5, g + 9)), to_tsvector('simple', 'word' || g || ' other'),
         ARRAY[g, NULL, -g], CASE g % 7 WHEN 0 THEN NULL ELSE ARRAY['a', NULL, E'tab\there "q"'] END,
         (ARRAY['happy', 'sad', 'meh'])[1 + g % 3]::app.mood, g::bigint, g::oid
  FROM generate_series(1, 2000) g;
INSERT INTO app.measures(id) VALUES (0);
CREATE TABLE app.nothing_yet (id int PRIMARY KEY, note text);
CREATE TYPE app.money_pair AS (amount numeric, currency text);
CREATE TABLE app.odd_columns (id int PRIMARY KEY, moods app.mood[], pair app.money_pair, rel regclass);
INSERT INTO app.odd_columns
  SELECT g, ARRAY['happy', 'meh']::app.mood[], ROW(g * 1.5, 'EUR')::app.money_pair, 'app.users'::regclass
  FROM generate_series(1, 300) g;
"#;

/// Creates `db` owned by a role of the same name (made if missing) and loads
/// [`RICH_SCHEMA`] into it.
pub async fn seed_rich(cluster: &PgCluster, db: &str) -> anyhow::Result<()> {
    cluster
        .exec("postgres", &format!("CREATE DATABASE \"{db}\""))
        .await?;
    cluster.exec(db, RICH_SCHEMA).await
}

/// A staging database `stage`, owned by role `stage`, with older data.
pub async fn seed_stage(cluster: &PgCluster) -> anyhow::Result<()> {
    cluster.exec("postgres", "CREATE ROLE stage LOGIN").await?;
    cluster
        .exec("postgres", "CREATE DATABASE stage OWNER stage")
        .await?;
    cluster
        .exec(
            "stage",
            "CREATE TABLE old_data (id int, v text); INSERT INTO old_data SELECT g, md5(g::text) FROM generate_series(1, 500) g",
        )
        .await
}

/// `md5` of every user table's rows, in key order, by qualified name.
pub async fn content_hashes(
    cluster: &PgCluster,
    db: &str,
) -> anyhow::Result<BTreeMap<String, String>> {
    let c = cluster.client(db).await?;
    let tables = c
        .query(
            "SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname) FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r', 'm') AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
             AND n.nspname NOT LIKE 'pg_toast%' ORDER BY 1",
            &[],
        )
        .await?;
    let mut out = BTreeMap::new();
    for t in tables {
        let name: String = t.get(0);
        let row = c
            .query_one(
                &format!("SELECT count(*)::text || ':' || coalesce(md5(string_agg(t::text, ',' ORDER BY t::text)), '') FROM {name} t"),
                &[],
            )
            .await
            .with_context(|| format!("hashing {name}"))?;
        out.insert(name, row.get(0));
    }
    Ok(out)
}

/// `pg_dump --schema-only` without owners and privileges, and without the
/// version header, so two databases restored by different roles compare.
pub fn schema_dump(cluster: &PgCluster, db: &str) -> anyhow::Result<String> {
    let out = Command::new(cluster.bin_dir.join("pg_dump"))
        .arg(format!("--host={}", cluster.socket_dir.display()))
        .arg(format!("--port={}", cluster.port))
        .args([
            "--username=postgres",
            "--schema-only",
            "--no-owner",
            "--no-privileges",
        ])
        .arg(format!("--dbname={db}"))
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "pg_dump: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?
        .lines()
        // Version lines, and the random key of \restrict (newer pg_dump).
        .filter(|l| {
            !l.starts_with("-- Dumped")
                && !l.starts_with("\\restrict")
                && !l.starts_with("\\unrestrict")
        })
        .collect::<Vec<_>>()
        .join("\n"))
}

/// Objects in user schemas (and the schemas themselves) not owned by `role`.
pub async fn objects_not_owned_by(
    cluster: &PgCluster,
    db: &str,
    role: &str,
) -> anyhow::Result<Vec<String>> {
    let c = cluster.client(db).await?;
    let rows = c
        .query(
            "SELECT 'relation ' || c.oid::regclass::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
               WHERE n.nspname NOT IN ('pg_catalog','information_schema') AND n.nspname NOT LIKE 'pg_toast%' \
               AND pg_get_userbyid(c.relowner) <> $1 \
             UNION ALL SELECT 'function ' || p.oid::regprocedure::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
               WHERE n.nspname NOT IN ('pg_catalog','information_schema') AND pg_get_userbyid(p.proowner) <> $1 \
               AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = p.oid AND d.deptype = 'e') \
             UNION ALL SELECT 'schema ' || nspname FROM pg_namespace \
               WHERE nspname NOT IN ('pg_catalog','information_schema','public') AND nspname NOT LIKE 'pg_%' \
               AND pg_get_userbyid(nspowner) <> $1 \
             UNION ALL SELECT 'extension ' || extname FROM pg_extension WHERE extname <> 'plpgsql' AND pg_get_userbyid(extowner) <> $1",
            &[&role],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// After a refresh of the rich fixture into `stage`: the same content and
/// schema, everything owned by `stage`, sequences, the large object, the
/// generated column, the partitions and row-level security as on the
/// source.
pub async fn assert_identical(f: &crate::Fleet) {
    assert_eq!(
        content_hashes(f.src(), "production").await.unwrap(),
        content_hashes(f.dst(), "stage").await.unwrap(),
        "same content"
    );
    assert_eq!(
        schema_dump(f.src(), "production").unwrap(),
        schema_dump(f.dst(), "stage").unwrap(),
        "same schema"
    );
    let foreign = objects_not_owned_by(f.dst(), "stage", "stage")
        .await
        .unwrap();
    assert!(
        foreign.is_empty(),
        "objects not owned by stage: {foreign:?}"
    );
    // Sequences continue where production's stopped.
    let c = f.dst().client("stage").await.unwrap();
    let next: i64 = c
        .query_one("SELECT nextval('app.invoice_seq')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(next, 1042);
    let next_user: i64 = c
        .query_one(
            "INSERT INTO app.users(email) VALUES ('new@example.com') RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(next_user, 2001);
    let lo: Vec<u8> = c
        .query_one("SELECT lo_get(4242)", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(lo, b"a large object");
    // The generated column is computed again from the copied amount, the
    // partitions hold their rows, the unlogged table its own, and the
    // table with row-level security keeps it.
    let row = c
        .query_one(
            "SELECT with_tax::text, mood::text FROM \"Billing Dept\".\"Invoices\" WHERE id = 10",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, String>(1)),
        ("1200.0".to_string(), "sad".to_string())
    );
    for (sql, want) in [
        ("SELECT least(count(*), 1) FROM app.events_2025", 1),
        ("SELECT count(*) FROM app.events", 15000),
        ("SELECT count(*) FROM app.sessions", 1000),
        (
            "SELECT count(*) FROM pg_class WHERE relname = 'secrets' AND relrowsecurity",
            1,
        ),
    ] {
        let n: i64 = c.query_one(sql, &[]).await.unwrap().get(0);
        assert_eq!(n, want, "{sql}");
    }
}
