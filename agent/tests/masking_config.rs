//! The privacy guard's configuration: the agent refuses to start on a bad
//! masking key or rules file, naming the file, the line and the key.

mod common;

use std::path::PathBuf;

use common::{Fixture, accepted, expect_error, fixture, run_agent, write_text};

const RULES: &str = r#"[[databases]]
names = ["production"]

[databases.tables]
"public.django_migrations" = "keep"

[databases.tables."public.auth_user"]
id = "keep"
email = { email = "example.com" }
age = { int = [18, 90] }
salary = { noise = 0.1 }
born = { date = 30 }
profile = { json = ["email"] }
token = { hash = 12 }
"#;

/// The fixture's config with a `[masking]` section over `rules` and a key
/// of `key` bytes with mode `mode`; the rules file's path.
fn with_masking(f: &Fixture, rules: &str, key: Option<(usize, u32)>) -> (String, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let rules_path = f.dir.path().join("masking.toml");
    std::fs::write(&rules_path, rules).unwrap();
    let key_path = f.dir.path().join("masking.key");
    let _ = std::fs::remove_file(&key_path);
    if let Some((len, mode)) = key {
        std::fs::write(&key_path, vec![7u8; len]).unwrap();
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let text = format!(
        "{}\n[masking]\nrules = {rules_path:?}\nkey_file = {key_path:?}\n",
        f.base
    );
    (text, rules_path)
}

#[test]
fn good_masking_rules_and_key_are_accepted() {
    let f = fixture();
    let (text, _) = with_masking(&f, RULES, Some((32, 0o600)));
    accepted(&f, &text);
}

#[test]
fn a_masking_key_missing_short_or_readable_by_others_stops_the_agent() {
    let f = fixture();
    for (key, needle) in [
        (None, "masking.key_file"),
        (Some((16, 0o600)), "32"),
        (Some((32, 0o644)), "may be read by others"),
    ] {
        let (text, _) = with_masking(&f, RULES, key);
        expect_error(&f, &text, "key_file =", "masking.key_file", needle);
    }
}

/// Bad rules files stop the agent, naming the rules file, the line and
/// the key.
#[test]
fn bad_masking_rules_name_file_line_and_key() {
    let f = fixture();
    let cases: [(&str, &str, &str, &str); 10] = [
        // (find, replace, key, needle)
        (
            "email = { email = \"example.com\" }",
            "email = \"emial\"",
            "email",
            "unknown transform \"emial\"",
        ),
        ("[18, 90]", "[90, 18]", "age", "int takes [min, max]"),
        ("{ noise = 0.1 }", "{ noise = 2 }", "salary", "noise takes"),
        ("{ date = 30 }", "{ date = 0 }", "born", "date takes"),
        (
            "{ json = [\"email\"] }",
            "{ json = [] }",
            "profile",
            "json takes",
        ),
        ("{ hash = 12 }", "{ hash = 0 }", "token", "hash takes"),
        (
            "{ email = \"example.com\" }",
            "{ email = \"no domain\" }",
            "email",
            "email takes a domain",
        ),
        (
            "\"public.django_migrations\" = \"keep\"",
            "\"public.django_migrations\" = \"null\"",
            "django_migrations",
            "a whole table can only be \"keep\"",
        ),
        (
            "\"public.django_migrations\" = \"keep\"",
            "\"nodot\" = \"keep\"",
            "nodot",
            "schema",
        ),
        (
            "names = [\"production\"]",
            "names = []",
            "names",
            "name at least one database",
        ),
    ];
    for (find, replace, key, needle) in cases {
        assert!(RULES.contains(find), "{find}");
        let bad = RULES.replacen(find, replace, 1);
        let (text, rules_path) = with_masking(&f, &bad, Some((32, 0o600)));
        let line = bad
            .lines()
            .position(|l| l.contains(replace.split(" = ").next().unwrap()))
            .unwrap()
            + 1;
        let (code, stderr) = run_agent(&write_text(&f, &text));
        assert_eq!(code, Some(64), "{replace}: {stderr}");
        let prefix = format!("{}:{line}: ", rules_path.display());
        assert!(
            stderr.contains(&prefix),
            "{replace}: expected {prefix:?} in {stderr}"
        );
        let rest = &stderr[stderr.find(&prefix).unwrap() + prefix.len()..];
        assert!(
            rest.split(':').next().unwrap().contains(key),
            "{replace}: key {key:?} in {stderr}"
        );
        assert!(stderr.contains(needle), "{replace}: {needle:?} in {stderr}");
    }
    // A key no rule file knows.
    let bad = RULES.replacen(
        "names = [\"production\"]",
        "names = [\"production\"]\nstrcit = false",
        1,
    );
    let (text, _) = with_masking(&f, &bad, Some((32, 0o600)));
    let (code, stderr) = run_agent(&write_text(&f, &text));
    assert_eq!(code, Some(64), "{stderr}");
    assert!(
        stderr.contains("masking.toml:3: ") && stderr.contains("strcit"),
        "{stderr}"
    );
}
