//! `stagesync status`: a table of agents.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};
use stagesync_certs::{Identity, Kind, ReloadingClientConfig, TlsFiles};
use stagesync_controller::AgentTarget;
use stagesync_proto::v1::InfoResponse;

use crate::output::human_bytes;
use crate::{Exit, TlsArgs};

#[derive(clap::Args)]
pub struct StatusArgs {
    /// An agent to ask, as NAME=HOST:PORT (its certificate must name NAME)
    /// or HOST:PORT. Repeat for several. Without it, the plan's agents.
    #[arg(long = "agent", value_name = "[NAME=]HOST:PORT")]
    agents: Vec<String>,
    #[command(flatten)]
    plan: crate::sync_cmd::PlanArg,
    #[command(flatten)]
    tls: TlsArgs,
}

/// Finds the controller's CA, certificate and key from the flags.
pub fn tls_files(args: &TlsArgs) -> anyhow::Result<TlsFiles> {
    let ca = args
        .ca
        .clone()
        .unwrap_or_else(|| args.certs_dir.join("ca.crt"));
    if let (Some(cert), Some(key)) = (&args.cert, &args.key) {
        return Ok(TlsFiles {
            ca,
            cert: cert.clone(),
            key: key.clone(),
        });
    }
    let name = match &args.controller {
        Some(n) => n.clone(),
        None => only_controller(&args.certs_dir)?,
    };
    let (cert, key) = stagesync_certs::pki::leaf_paths(&args.certs_dir, Kind::Controller, &name);
    Ok(TlsFiles { ca, cert, key })
}

fn only_controller(dir: &PathBuf) -> anyhow::Result<String> {
    let entries = std::fs::read_dir(dir).with_context(|| {
        format!(
            "cannot read the certs directory {}: pass --certs-dir, or --ca/--cert/--key",
            dir.display()
        )
    })?;
    let mut names: Vec<String> = entries
        .flatten()
        .filter_map(|e| {
            let f = e.file_name().to_string_lossy().into_owned();
            Some(
                f.strip_prefix("controller-")?
                    .strip_suffix(".crt")?
                    .to_string(),
            )
        })
        .collect();
    names.sort();
    match names.as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!(
            "{} has no controller certificate: run `stagesync certs issue controller NAME --dir {}`",
            dir.display(),
            dir.display()
        ),
        many => bail!(
            "{} has several controller certificates ({}): choose one with --controller",
            dir.display(),
            many.join(", ")
        ),
    }
}

fn parse_target(spec: &str, trust_domain: &str) -> anyhow::Result<AgentTarget> {
    match spec.split_once('=') {
        Some((name, address)) => {
            let expected = Identity::new(trust_domain, Kind::Agent, name)
                .with_context(|| format!("--agent {spec}"))?;
            Ok(AgentTarget {
                address: address.to_string(),
                expected: Some(expected),
            })
        }
        None => Ok(AgentTarget {
            address: spec.to_string(),
            expected: None,
        }),
    }
}

pub fn run(args: StatusArgs) -> anyhow::Result<Exit> {
    let (files, agents) = if args.agents.is_empty() {
        let plan = match crate::sync_cmd::load_plan(&args.plan.plan) {
            Ok(p) => p,
            Err(exit) => return Ok(exit),
        };
        let agents = plan
            .agents
            .values()
            .map(|a| format!("{}={}", a.name, a.endpoint))
            .collect();
        (plan.tls.clone(), agents)
    } else {
        (tls_files(&args.tls)?, args.agents.clone())
    };
    let tls = Arc::new(ReloadingClientConfig::load(files)?);
    let trust_domain = tls.identity().trust_domain;
    let targets = agents
        .iter()
        .map(|s| parse_target(s, &trust_domain))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let results = runtime.block_on(stagesync_controller::status::info_all(tls, &targets));
    print_table(&targets, &results);
    let failed = results.iter().filter(|r| r.is_err()).count();
    Ok(match failed {
        0 => Exit::Ok,
        n if n == results.len() => Exit::Failed,
        _ => Exit::Partial,
    })
}

/// How an agent reaches its server and what its login may do, on one line.
fn connection_line(agent: &str, pg: &stagesync_proto::v1::PostgresInfo) -> String {
    if pg.endpoint.is_empty() {
        return String::new();
    }
    let rights = match pg.rights.is_empty() {
        true if pg.reachable => "none beyond its own".to_string(),
        true => "?".to_string(),
        false => pg.rights.join(", "),
    };
    format!(
        "{agent}: postgres at {} as {:?} ({}); rights: {rights}; room for restores: {}",
        pg.endpoint, pg.login_role, pg.secret, pg.disk_check
    )
}

fn print_table(
    targets: &[AgentTarget],
    results: &[Result<InfoResponse, stagesync_controller::ClientError>],
) {
    let mut table = Table::new();
    table.load_preset(UTF8_BORDERS_ONLY).set_header(vec![
        "AGENT",
        "ADDRESS",
        "STATE",
        "POSTGRES",
        "PG_DUMP",
        "PG_RESTORE",
        "MAY DUMP",
        "MAY OVERWRITE",
        "WORK DIR FREE",
    ]);
    let mut problems = Vec::new();
    let mut connections = Vec::new();
    for (target, result) in targets.iter().zip(results) {
        match result {
            Ok(info) => {
                let pg = info.postgres.clone().unwrap_or_default();
                connections.push(connection_line(&info.name, &pg));
                let tools = info.tools.clone().unwrap_or_default();
                let policy = info.policy.clone().unwrap_or_default();
                let pg_state = if pg.reachable {
                    format!(
                        "{} ({} dbs)",
                        pg.server_version.split_whitespace().next().unwrap_or(""),
                        pg.databases.len()
                    )
                } else {
                    problems.push(format!("{}: postgres: {}", target.label(), pg.error));
                    "unreachable".to_string()
                };
                let major = |m: u32| {
                    if m == 0 {
                        "?".to_string()
                    } else {
                        m.to_string()
                    }
                };
                let none = |v: &Vec<String>| {
                    if v.is_empty() {
                        "(none)".to_string()
                    } else {
                        v.join(", ")
                    }
                };
                table.add_row(vec![
                    info.name.clone(),
                    target.address.clone(),
                    "ok".to_string(),
                    pg_state,
                    major(tools.pg_dump_major),
                    major(tools.pg_restore_major),
                    none(&policy.may_dump),
                    none(&policy.may_overwrite),
                    info.work_dir
                        .as_ref()
                        .map(|w| human_bytes(w.free_bytes))
                        .unwrap_or_default(),
                ]);
            }
            Err(e) => {
                let name = target
                    .expected
                    .as_ref()
                    .map(|i| i.name.clone())
                    .unwrap_or_else(|| "?".into());
                table.add_row(vec![name, target.address.clone(), "ERROR".to_string()]);
                problems.push(e.to_string());
            }
        }
    }
    println!("{table}");
    for line in connections.iter().filter(|l| !l.is_empty()) {
        println!("{line}");
    }
    for p in problems {
        eprintln!("stagesync: {p}");
    }
}
