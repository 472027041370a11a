//! The agents' login roles on a fleet's clusters configured like a
//! managed service (see [`FleetBuilder::managed`](super::FleetBuilder)):
//! no superuser, passwords over TCP with TLS.

use std::path::Path;

use crate::PgCluster;

/// The login roles of a managed fleet's agents, and their passwords.
pub const MANAGED_SOURCE_ROLE: &str = "stagesync_src";
pub const MANAGED_DEST_ROLE: &str = "stagesync_dst";
pub const MANAGED_SOURCE_PASSWORD: &str = "src-Pa55-word";
pub const MANAGED_DEST_PASSWORD: &str = "dst-Pa55-word";

/// The agents' login roles on managed clusters (see [`FleetBuilder::managed`]).
pub async fn managed_roles(src: &PgCluster, dst: Option<&PgCluster>) -> anyhow::Result<()> {
    src.exec(
        "postgres",
        &format!(
            "CREATE ROLE {MANAGED_SOURCE_ROLE} LOGIN BYPASSRLS PASSWORD '{MANAGED_SOURCE_PASSWORD}'; \
             GRANT pg_read_all_data TO {MANAGED_SOURCE_ROLE}"
        ),
    )
    .await?;
    // Large objects are not covered by pg_read_all_data.
    src.exec(
        "production",
        &format!(
            "DO $$ DECLARE o oid; BEGIN FOR o IN SELECT oid FROM pg_largeobject_metadata LOOP \
             EXECUTE format('GRANT SELECT ON LARGE OBJECT %s TO {MANAGED_SOURCE_ROLE}', o); END LOOP; END $$"
        ),
    )
    .await?;
    if let Some(dst) = dst {
        dst.exec(
            "postgres",
            &format!(
                "CREATE ROLE {MANAGED_DEST_ROLE} LOGIN CREATEDB PASSWORD '{MANAGED_DEST_PASSWORD}'; \
                 GRANT pg_signal_backend TO {MANAGED_DEST_ROLE}; \
                 DO $$ BEGIN CREATE ROLE stage LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$; \
                 GRANT stage TO {MANAGED_DEST_ROLE}"
            ),
        )
        .await?;
    }
    Ok(())
}

/// The `[postgres]` keys of an agent on a managed cluster; its password
/// goes in a file of its own, mode 0600.
pub fn managed_keys(
    cluster: &PgCluster,
    dir: &Path,
    agent: &str,
    role: &str,
    password: &str,
) -> String {
    use std::os::unix::fs::PermissionsExt;
    let tcp = cluster.tcp.as_ref().expect("a managed cluster");
    let file = dir.join(format!("{agent}.pgpass"));
    std::fs::write(&file, format!("{password}\n")).expect("the password file");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    format!(
        "host = \"localhost\"\nport = {}\nsslrootcert = {:?}\nuser = {role:?}\npassword_file = {file:?}",
        tcp.port, tcp.ca
    )
}

/// A SCRAM password for `postgres` on a loopback cluster, in a file only
/// its owner reads, and `prod-db`'s `[postgres]` keys: the socket for its
/// sessions, 127.0.0.1 for its copy lanes' rows.
pub async fn loopback_keys(cluster: &PgCluster, dir: &Path) -> anyhow::Result<String> {
    use std::os::unix::fs::PermissionsExt;
    const PASSWORD: &str = "fleet-loopback-password";
    cluster
        .exec(
            "postgres",
            &format!("SET password_encryption = 'scram-sha-256'; ALTER ROLE postgres PASSWORD '{PASSWORD}'"),
        )
        .await?;
    let file = dir.join("prod-db-loopback.pgpass");
    std::fs::write(&file, format!("{PASSWORD}\n"))?;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))?;
    Ok(format!(
        "socket_dir = {:?}\nport = {}\nuser = \"postgres\"\npassword_file = {file:?}\ncopy_over_tcp = \"127.0.0.1\"",
        cluster.socket_dir, cluster.port
    ))
}
