//! `stagesync certs`: the fleet CA and leaf certificates.

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use stagesync_certs::{Kind, pki, revoke};

use crate::Exit;

#[derive(Subcommand)]
pub enum CertsCommand {
    /// Make a new fleet CA (ca.crt, ca.key) in DIR.
    Init {
        /// Where to write the CA.
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// The trust domain in every identity (spiffe://TRUST_DOMAIN/...).
        #[arg(long, default_value = stagesync_certs::DEFAULT_TRUST_DOMAIN)]
        trust_domain: String,
        /// Validity in days.
        #[arg(long, default_value_t = 3650)]
        days: i64,
        /// Replace an existing CA key (every certificate it issued stops working).
        #[arg(long)]
        force: bool,
    },
    /// Issue a certificate for an agent or a controller, signed by the CA in DIR.
    Issue {
        #[command(subcommand)]
        what: IssueWhat,
    },
    /// Revoke the certificate DIR holds for an agent or a controller: it is
    /// added to DIR/crl.pem, which agents and controllers read beside their
    /// CA certificate (copy it there); they refuse it from their next
    /// connection on.
    Revoke {
        /// Whose certificate.
        kind: KindArg,
        /// Its name.
        name: String,
        /// The certs directory holding the CA and the certificate.
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum KindArg {
    Agent,
    Controller,
}

#[derive(Subcommand)]
pub enum IssueWhat {
    /// An agent: a server for controllers and a client of its peers.
    Agent {
        /// The agent's name (its `name` in agent.toml).
        name: String,
        /// DNS names controllers and peers dial it by.
        #[arg(long)]
        dns: Vec<String>,
        /// IP addresses controllers and peers dial it by.
        #[arg(long)]
        ip: Vec<IpAddr>,
        #[command(flatten)]
        common: IssueCommon,
    },
    /// A controller: the identity `stagesync` uses to command agents.
    Controller {
        /// The controller's name (listed in the agents' policy.controllers).
        name: String,
        #[command(flatten)]
        common: IssueCommon,
    },
}

#[derive(clap::Args)]
pub struct IssueCommon {
    /// The certs directory holding the CA; the new files are written there too.
    #[arg(long, default_value = "certs")]
    dir: PathBuf,
    /// Validity in days.
    #[arg(long, default_value_t = 365)]
    days: i64,
    /// Replace an existing key for this name.
    #[arg(long)]
    force: bool,
}

pub fn run(cmd: CertsCommand) -> anyhow::Result<Exit> {
    match cmd {
        CertsCommand::Init {
            dir,
            trust_domain,
            days,
            force,
        } => {
            pki::init_dir(&dir, &trust_domain, days, force)?;
            println!(
                "made a fleet CA for trust domain {trust_domain:?}: {} (key {}, mode 0600: keep it offline)",
                dir.join("ca.crt").display(),
                dir.join("ca.key").display()
            );
            Ok(Exit::Ok)
        }
        CertsCommand::Issue { what } => {
            let (kind, name, dns, ips, common) = match what {
                IssueWhat::Agent {
                    name,
                    dns,
                    ip,
                    common,
                } => (Kind::Agent, name, dns, ip, common),
                IssueWhat::Controller { name, common } => {
                    (Kind::Controller, name, Vec::new(), Vec::new(), common)
                }
            };
            let replaced = pki::leaf_paths(&common.dir, kind, &name).0.exists() && common.force;
            let ca = pki::load_ca(&common.dir)?;
            let mut req = pki::LeafRequest::new(kind, &name, common.days);
            req.dns = dns;
            req.ips = ips;
            let (crt, key, leaf) = pki::issue_into(&common.dir, &ca, &req, common.force)
                .with_context(|| format!("issuing a certificate for {kind} {name}"))?;
            println!(
                "issued {}: {} (key {}, mode 0600)",
                leaf.identity,
                crt.display(),
                key.display()
            );
            if replaced {
                println!(
                    "{}",
                    revoked_note(&common.dir, "the certificate it replaces")
                );
            }
            Ok(Exit::Ok)
        }
        CertsCommand::Revoke { kind, name, dir } => {
            let kind = match kind {
                KindArg::Agent => Kind::Agent,
                KindArg::Controller => Kind::Controller,
            };
            let (crt, count) = revoke::revoke_leaf(&dir, kind, &name)
                .with_context(|| format!("revoking the certificate of {kind} {name}"))?;
            println!("{}", revoked_note(&dir, &crt.display().to_string()));
            println!("the list holds {count} revoked certificates");
            Ok(Exit::Ok)
        }
    }
}

/// What a revocation means for the operator.
fn revoked_note(dir: &std::path::Path, what: &str) -> String {
    let crl = revoke::crl_path(&pki::ca_paths(dir).0);
    format!(
        "revoked {what}: copy {} beside ca.crt on every agent and controller host; each refuses the certificate from its next connection on",
        crl.display()
    )
}
