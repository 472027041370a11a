//! Mutual TLS and authorization between a controller and a real agent.

use std::collections::BTreeMap;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use stagesync_certs::pki::LeafRequest;
use stagesync_certs::{Kind, ReloadingClientConfig, TlsFiles};
use stagesync_controller::client::{StaticClientTls, connect};
use stagesync_controller::status::info;
use stagesync_controller::{AgentTarget, ClientError};
use stagesync_harness::{
    AgentRun, AgentSpec, Fleet, FleetAgent, PgCluster, TestAgent, TestPki, wait::PATIENCE,
};
use stagesync_proto::AgentClient;
use stagesync_proto::v1 as pb;
use time::{Duration, OffsetDateTime};
use tonic::transport::Channel;

fn err_text(r: Result<stagesync_proto::v1::InfoResponse, ClientError>) -> String {
    match r {
        Ok(i) => panic!("expected a refusal, got an answer from {}", i.name),
        Err(e) => e.to_string(),
    }
}

async fn agent(pki: &TestPki) -> TestAgent {
    TestAgent::start(pki, None, AgentSpec::new("staging-db"))
        .await
        .expect("agent starts")
}

#[tokio::test]
async fn info_works_for_an_allowed_controller() {
    stagesync_harness::init_tracing();
    let pg = PgCluster::start().expect("cluster");
    for sql in [
        "CREATE ROLE stage LOGIN",
        "CREATE DATABASE stage OWNER stage",
        "CREATE DATABASE other",
    ] {
        pg.exec("postgres", sql).await.unwrap();
    }
    let pki = TestPki::new().unwrap();
    let mut spec = AgentSpec::new("staging-db");
    spec.may_overwrite = vec!["stage*".into()];
    spec.may_dump = vec!["stage".into()];
    let agent = TestAgent::start(&pki, Some(&pg), spec).await.unwrap();

    let info = info(pki.controller_tls("ops").unwrap(), &agent.target())
        .await
        .expect("allowed controller gets Info");
    assert_eq!(info.name, "staging-db");
    assert_eq!(info.identity, "spiffe://stagesync/agent/staging-db");
    let pgi = info.postgres.unwrap();
    assert!(pgi.reachable, "{}", pgi.error);
    assert!(pgi.server_version_num >= 100000);
    let stage = pgi
        .databases
        .iter()
        .find(|d| d.name == "stage")
        .expect("stage listed");
    assert_eq!(stage.owner, "stage");
    assert!(stage.size_bytes > 0);
    assert!(stage.may_overwrite && stage.may_dump);
    let other = pgi.databases.iter().find(|d| d.name == "other").unwrap();
    assert!(!other.may_overwrite && !other.may_dump);
    let tools = info.tools.unwrap();
    assert_eq!(tools.pg_dump_major, pgi.server_version_num / 10000);
    assert_eq!(tools.pg_restore_major, tools.pg_dump_major);
    let policy = info.policy.unwrap();
    assert_eq!(
        policy.controllers,
        vec!["spiffe://stagesync/controller/ops"]
    );
    assert_eq!(policy.may_overwrite, vec!["stage*"]);
    assert!(info.work_dir.unwrap().free_bytes > 0);
    agent.stop().await;
}

#[tokio::test]
async fn info_reports_an_unreachable_postgres() {
    let pki = TestPki::new().unwrap();
    let agent = agent(&pki).await;
    let info = info(pki.controller_tls("ops").unwrap(), &agent.target())
        .await
        .unwrap();
    let pgi = info.postgres.unwrap();
    assert!(!pgi.reachable);
    assert!(pgi.error.contains(".s.PGSQL.5432"), "{}", pgi.error);
}

/// A client configuration that presents no certificate at all.
fn no_client_cert(pki: &TestPki) -> Arc<StaticClientTls> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(pki.ca_path()).unwrap())
        .unwrap();
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(StaticClientTls(Arc::new(cfg)))
}

#[tokio::test]
async fn refused_without_a_client_certificate() {
    let pki = TestPki::new().unwrap();
    let agent = agent(&pki).await;
    let msg = err_text(info(no_client_cert(&pki), &agent.target()).await);
    assert!(msg.contains("requires a client certificate"), "{msg}");
}

#[tokio::test]
async fn refused_with_a_certificate_from_another_ca() {
    let pki = TestPki::new().unwrap();
    let agent = agent(&pki).await;
    let other = TestPki::new().unwrap();
    // Trust the real CA (so the agent itself verifies) but present a
    // certificate from another CA.
    let mut files = other.controller("ops").unwrap();
    files.ca = pki.ca_path();
    let tls = Arc::new(ReloadingClientConfig::load(files).unwrap());
    let msg = err_text(info(tls, &agent.target()).await);
    assert!(msg.contains("not from the fleet CA"), "{msg}");
}

#[tokio::test]
async fn refused_with_an_expired_certificate() {
    let pki = TestPki::new().unwrap();
    let agent = agent(&pki).await;
    let mut req = LeafRequest::new(Kind::Controller, "ops", 1);
    req.not_before = OffsetDateTime::now_utc() - Duration::days(10);
    req.not_after = OffsetDateTime::now_utc() - Duration::days(1);
    let files = pki.issue(&req, "ops-expired").unwrap();
    let tls = Arc::new(ReloadingClientConfig::load(files).unwrap());
    let msg = err_text(info(tls, &agent.target()).await);
    assert!(msg.contains("expired"), "{msg}");
}

#[tokio::test]
async fn refused_for_a_controller_not_in_the_policy() {
    let pki = TestPki::new().unwrap();
    let agent = agent(&pki).await;
    let err = info(pki.controller_tls("rogue").unwrap(), &agent.target())
        .await
        .unwrap_err();
    match &err {
        ClientError::Refused { code, message, .. } => {
            assert_eq!(*code, tonic::Code::PermissionDenied);
            assert!(
                message.contains("spiffe://stagesync/controller/rogue"),
                "{message}"
            );
            assert!(message.contains("policy.controllers"), "{message}");
        }
        other => panic!("expected a refusal, got {other}"),
    }
}

#[tokio::test]
async fn refused_for_an_agent_calling_a_controller_rpc() {
    let pki = TestPki::new().unwrap();
    let mut spec = AgentSpec::new("staging-db");
    spec.peers = vec!["prod-db".into()];
    let agent = TestAgent::start(&pki, None, spec).await.unwrap();
    // A listed peer agent, with a valid certificate, still may not call Info.
    let peer = Arc::new(ReloadingClientConfig::load(pki.agent("prod-db").unwrap()).unwrap());
    let err = info(peer, &agent.target()).await.unwrap_err();
    match &err {
        ClientError::Refused { code, message, .. } => {
            assert_eq!(*code, tonic::Code::PermissionDenied);
            assert!(message.contains("for controllers"), "{message}");
            assert!(message.contains("agent/prod-db"), "{message}");
        }
        other => panic!("expected a refusal, got {other}"),
    }
}

#[tokio::test]
async fn the_controller_refuses_an_agent_with_another_identity() {
    let pki = TestPki::new().unwrap();
    let agent = agent(&pki).await;
    let mut target = agent.target();
    target.expected = Some("spiffe://stagesync/agent/prod-db".parse().unwrap());
    let msg = err_text(info(pki.controller_tls("ops").unwrap(), &target).await);
    assert!(
        msg.contains("answered as spiffe://stagesync/agent/staging-db, not the expected spiffe://stagesync/agent/prod-db"),
        "{msg}"
    );
}

#[tokio::test]
async fn a_down_agent_is_reported_as_such() {
    let pki = TestPki::new().unwrap();
    // A port held (bound, not listening) for the whole test, so no other
    // test's server can take it: connections to it are refused.
    let held = tokio::net::TcpSocket::new_v4().unwrap();
    held.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = held.local_addr().unwrap();
    let target = AgentTarget {
        address: addr.to_string(),
        expected: None,
    };
    let msg = err_text(info(pki.controller_tls("ops").unwrap(), &target).await);
    assert!(msg.contains("nothing listens"), "{msg}");
}

/// The certificate the agent presents to a new connection.
async fn presented_cert(agent: &TestAgent, client: &TlsFiles) -> Vec<u8> {
    let cfg = ReloadingClientConfig::load(client.clone())
        .unwrap()
        .current();
    let tcp = tokio::net::TcpStream::connect(agent.addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

#[tokio::test]
async fn rotated_certificates_are_used_without_a_restart() {
    let pki = TestPki::new().unwrap();
    let agent = agent(&pki).await;
    let controller = pki.controller("ops").unwrap();
    let before = presented_cert(&agent, &controller).await;
    let old_file = std::fs::read(&agent.tls.cert).unwrap();
    assert_eq!(
        before,
        CertificateDer::from_pem_slice(&old_file).unwrap().to_vec()
    );

    // Rotate: a new key and certificate for the same agent, written in place.
    let rotated = pki.agent("staging-db").unwrap();
    assert_eq!(rotated.cert, agent.tls.cert);
    let new_file = std::fs::read(&agent.tls.cert).unwrap();
    assert_ne!(old_file, new_file, "the certificate file really changed");

    let after = presented_cert(&agent, &controller).await;
    assert_eq!(
        after,
        CertificateDer::from_pem_slice(&new_file).unwrap().to_vec()
    );
    assert_ne!(before, after);
    // And the agent still answers calls.
    info(pki.controller_tls("ops").unwrap(), &agent.target())
        .await
        .unwrap();
}

/// `pg_database_size()` is NULL for a database whose directory is not there
/// yet or any more (created or dropped while Info looks). Info must still
/// answer, with size 0 for that database.
#[tokio::test]
async fn info_answers_while_databases_come_and_go() {
    stagesync_harness::init_tracing();
    let pg = PgCluster::start().expect("cluster");
    let pki = TestPki::new().unwrap();
    let agent = TestAgent::start(&pki, Some(&pg), AgentSpec::new("staging-db"))
        .await
        .unwrap();
    let churn = pg.client("postgres").await.unwrap();
    let probe = pg.client("postgres").await.unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let churner = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut rounds = 0u32;
            while !stop.is_cancelled() {
                churn
                    .batch_execute("CREATE DATABASE churn")
                    .await
                    .expect("create");
                churn
                    .batch_execute("DROP DATABASE churn")
                    .await
                    .expect("drop");
                rounds += 1;
            }
            rounds
        })
    };
    let tls = pki.controller_tls("ops").unwrap();
    let (mut nulls, mut answers) = (0u32, 0u32);
    // As many rounds as fit in the harness's patience: this is load, not a
    // wait. Go on until the window has been hit (proved by a NULL size seen
    // directly) and Info has answered through it, or the time is up.
    let deadline = std::time::Instant::now() + PATIENCE;
    while std::time::Instant::now() < deadline && (nulls < 5 || answers < 200) {
        let seen: i64 = probe
            .query_one(
                "SELECT count(*) FROM pg_database WHERE pg_database_size(oid) IS NULL",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        nulls += u32::try_from(seen).unwrap();
        let i = info(tls.clone(), &agent.target())
            .await
            .expect("Info answers");
        let pgi = i.postgres.unwrap();
        assert!(pgi.reachable, "{}", pgi.error);
        assert!(pgi.databases.iter().any(|d| d.name == "postgres"));
        answers += 1;
    }
    stop.cancel();
    let rounds = churner.await.unwrap();
    assert!(
        nulls > 0,
        "the NULL-size window was never seen ({rounds} create/drop rounds, {answers} Info calls)"
    );
    agent.stop().await;
}

/// Whether each database `agent`'s `Info` lists may be dumped or
/// overwritten (`flag` picks which).
async fn offered(
    f: &Fleet,
    agent: &FleetAgent,
    flag: fn(&pb::Database) -> bool,
) -> BTreeMap<String, bool> {
    let info = f.info(agent).await.expect("Info answers");
    let pgi = info.postgres.expect("Info reports on PostgreSQL");
    assert!(pgi.reachable, "{}", pgi.error);
    pgi.databases
        .iter()
        .map(|d| (d.name.clone(), flag(d)))
        .collect()
}

/// Info lists no template database, so it offers none: a name it does not
/// list counts as not offered.
fn is_offered(offered: &BTreeMap<String, bool>, name: &str) -> bool {
    offered.get(name).copied().unwrap_or(false)
}

/// What `Info` offers to overwrite is exactly what `PrepareRestore`
/// accepts: names and globs of the policy, and never a reserved name, even
/// where the policy's globs match it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn info_offers_to_overwrite_exactly_what_prepare_restore_accepts() {
    let f = Fleet::builder()
        .staging(|s| {
            s.may_overwrite = ["stage", "qa_*", "stagesync_*", "template*"]
                .map(String::from)
                .to_vec();
        })
        .build()
        .await;
    for db in ["qa_review", "other", "stagesync_new_x"] {
        let sql = format!("CREATE DATABASE {db} OWNER stage");
        f.dst().exec("postgres", &sql).await.unwrap();
    }
    let offered = offered(&f, f.staging(), |d| d.may_overwrite).await;
    let mut dest = connect(f.tls(), &f.staging().target()).await.unwrap();
    let mut accepted = Vec::new();
    for (n, name) in [
        "stage",
        "qa_review",
        "other",
        "stagesync_new_x",
        "template0",
        "template1",
    ]
    .into_iter()
    .enumerate()
    {
        let job_id = format!("{:016x}", 0xd0 + n);
        let answer = dest
            .prepare_restore(pb::PrepareRestoreRequest {
                job_id: job_id.clone(),
                database: name.into(),
                owner: "stage".into(),
                shape: Some(pb::Shape::one_pass(pb::Mode::Stream)),
                jobs: 1,
                restore: None,
                post_restore_sql: String::new(),
                params: Default::default(),
                ticket: "d".repeat(64),
                source_identity: "spiffe://stagesync/agent/prod-db".into(),
                staging: None,
                unmasked: false,
            })
            .await;
        if answer.is_ok() {
            accepted.push(name);
            abort(&mut dest, &job_id, pb::Side::Dest).await;
        }
        assert_eq!(
            answer.is_ok(),
            is_offered(&offered, name),
            "{name}: Info lists {:?}, PrepareRestore answers {answer:?}",
            offered.get(name)
        );
    }
    assert_eq!(accepted, ["stage", "qa_review"]);
    f.dst()
        .exec("postgres", "DROP DATABASE IF EXISTS stagesync_new_x")
        .await
        .unwrap();
    f.assert_untouched().await;
}

/// What `Info` offers to dump is exactly what `StartDump` accepts: names
/// and globs of the policy, and never the agent's own databases.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn info_offers_to_dump_exactly_what_start_dump_accepts() {
    let f = Fleet::builder()
        .prod(|p| {
            p.may_dump = ["production", "prod_*", "stagesync_*"]
                .map(String::from)
                .to_vec();
        })
        .build()
        .await;
    for db in ["prod_copy", "other", "stagesync_new_x"] {
        let sql = format!("CREATE DATABASE {db}");
        f.src().exec("postgres", &sql).await.unwrap();
    }
    let offered = offered(&f, f.prod(), |d| d.may_dump).await;
    let mut source = connect(f.tls(), &f.prod().target()).await.unwrap();
    let mut accepted = Vec::new();
    for (n, name) in [
        "production",
        "prod_copy",
        "other",
        "stagesync_new_x",
        "template1",
    ]
    .into_iter()
    .enumerate()
    {
        let job_id = format!("{:016x}", 0xe0 + n);
        // Sent to the real destination, which has no such job: an accepted
        // dump fails there unless aborted first.
        let answer = source
            .start_dump(pb::StartDumpRequest {
                job_id: job_id.clone(),
                database: name.into(),
                shape: Some(pb::Shape::one_pass(pb::Mode::Stream)),
                jobs: 1,
                dump: None,
                dest_address: f.staging().target().address,
                dest_identity: "spiffe://stagesync/agent/staging-db".into(),
                ticket: "e".repeat(64),
                compression: pb::Compression::None as i32,
                unmasked: false,
            })
            .await;
        if answer.is_ok() {
            accepted.push(name);
            abort(&mut source, &job_id, pb::Side::Source).await;
        }
        assert_eq!(
            answer.is_ok(),
            is_offered(&offered, name),
            "{name}: Info lists {:?}, StartDump answers {answer:?}",
            offered.get(name)
        );
    }
    assert_eq!(accepted, ["production", "prod_copy"]);
    f.assert_untouched().await;
}

/// Aborts job `job_id` on `side` of the agent `client` talks to.
async fn abort(client: &mut AgentClient<Channel>, job_id: &str, side: pb::Side) {
    client
        .abort(pb::AbortRequest {
            job_id: job_id.into(),
            reason: "the test only asked".into(),
            side: side as i32,
        })
        .await
        .unwrap();
}

/// Connections that never start a handshake (anyone who can reach the
/// port can open them) hold no more than a socket for a few seconds: a
/// refresh runs while 2,000 are open, and the agent closes every one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_connections_do_not_stop_a_refresh() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    const IDLE: usize = 2000;
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    assert!(
        hard >= IDLE as u64 + 512,
        "the open files limit ({hard}) leaves no room for the test"
    );
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    let f = Fleet::builder()
        .staging_runs(AgentRun::Process)
        .build()
        .await;
    let addr = f.staging().addr();
    let mut idle = Vec::with_capacity(IDLE);
    for _ in 0..IDLE {
        idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    let report = stagesync_controller::refresh::refresh(f.tls(), &f.pair(), |_| {})
        .await
        .expect("the refresh completes beside the idle connections");
    assert_eq!(report.database, "stage");
    // Every idle connection is closed by the agent (the client reads the end).
    for mut c in idle {
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(PATIENCE, tokio::io::AsyncReadExt::read(&mut c, &mut buf))
            .await
            .expect("the agent closes a silent connection");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }
}
