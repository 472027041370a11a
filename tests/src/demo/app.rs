//! The demo's web app: its schema, its rows and its media files.

/// Staging's own OAuth app, which the pair's post-restore SQL puts back
/// after production's rows arrive.
pub const STAGING_CLIENT_ID: &str = "staging-oauth-client-4b1d";
pub const STAGING_SECRET: &str = "staging-oauth-secret-9e2c";

/// A small Django-style web app.
pub const APP_SCHEMA: &str = r#"
CREATE TABLE auth_user (
    id serial PRIMARY KEY,
    username text UNIQUE NOT NULL,
    email text NOT NULL,
    date_joined timestamptz NOT NULL
);
CREATE TABLE blog_post (
    id serial PRIMARY KEY,
    author_id int NOT NULL REFERENCES auth_user (id),
    title text NOT NULL,
    body text NOT NULL,
    image text
);
CREATE INDEX blog_post_author ON blog_post (author_id);
CREATE TABLE socialaccount_socialapp (
    id serial PRIMARY KEY,
    provider text NOT NULL,
    name text NOT NULL,
    client_id text NOT NULL,
    secret text NOT NULL
);
CREATE TABLE django_session (
    session_key text PRIMARY KEY,
    session_data text NOT NULL,
    expire_date timestamptz NOT NULL
);
"#;

/// Fills the app's tables: `users` users, `posts` posts, `sessions` sessions.
pub fn app_data(users: u32, posts: u32, sessions: u32, client_id: &str, secret: &str) -> String {
    format!(
        r#"
INSERT INTO auth_user (username, email, date_joined)
  SELECT 'user' || g, 'user' || g || '@example.com', now() - g * interval '1 hour'
  FROM generate_series(1, {users}) g;
INSERT INTO blog_post (author_id, title, body, image)
  SELECT 1 + g % {users}, 'Post number ' || g, repeat(md5(g::text) || ' ', 40),
         CASE WHEN g <= 40 THEN 'posts/' || g || '.jpg' END
  FROM generate_series(1, {posts}) g;
INSERT INTO socialaccount_socialapp (provider, name, client_id, secret)
  VALUES ('github', 'GitHub login', '{client_id}', '{secret}');
INSERT INTO django_session
  SELECT md5('session' || g), repeat('x', 200), now() + interval '1 day'
  FROM generate_series(1, {sessions}) g;
"#
    )
}

/// Bytes of a demo "image": deterministic, different per name and version.
pub fn image(name: &str, version: u8) -> Vec<u8> {
    let seed = name.bytes().fold(version as u32, |h, b| {
        h.wrapping_mul(31).wrapping_add(b as u32)
    });
    let len = 4096 + (seed % 60_000) as usize;
    (0..len)
        .map(|i| (seed.wrapping_add(i as u32).wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect()
}
