//! Streams the destination must refuse: a second refresh, an expired or wrong ticket, a stranger, and malformed frames.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn second_refresh_of_the_same_destination_is_refused() {
    let s = setup(Fleet::builder()).await;
    let first = s.start(s.spec());
    s.wait_restoring().await;
    let err = s.start(s.spec()).await.unwrap().unwrap_err();
    assert!(
        err.contains("a refresh of database \"stage\" is already running here as job"),
        "{err}"
    );
    s.proxy.throttle(0);
    first
        .await
        .unwrap()
        .expect("the first refresh still succeeds");
    assert_eq!(
        content_hashes(s.dst(), "stage").await.unwrap(),
        content_hashes(s.src(), "production").await.unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_expired_ticket_is_refused() {
    let s = setup(Fleet::builder().staging(|s| {
        s.jobs.insert("ticket_ttl_secs".into(), 1);
    }))
    .await;
    let ticket = "c".repeat(64);
    prepare(&s, &ticket).await;
    // Once the ticket has expired, the destination gives up on the job.
    eventually("the job to end with its ticket unused", async || {
        let jobs = s.dest_jobs().await;
        match jobs.iter().find(|j| j.job_id == "0123456789abcdef") {
            Some(j) if j.phase == pb::Phase::Aborted as i32 => Ok(()),
            _ => Err(jobs),
        }
    })
    .await;
    let late = push_header(&s, "prod-db", "0123456789abcdef", &ticket).await;
    assert_eq!(late.code(), tonic::Code::PermissionDenied);
    assert!(
        late.message().contains("expired") || late.message().contains("no job"),
        "{}",
        late.message()
    );
    s.assert_untouched().await;
}

async fn prepare(s: &Setup, ticket: &str) {
    prepare_job(s, "0123456789abcdef", ticket).await
}

async fn prepare_job(s: &Setup, job_id: &str, ticket: &str) {
    let mut dest = stagesync_controller::client::connect(s.tls(), &s.staging().target())
        .await
        .unwrap();
    // The widest shape, so every header a test sends fits it.
    let widest = pb::Shape {
        mode: pb::Mode::Stream as i32,
        post_data_file: true,
        data_lanes: stagesync_proto::MAX_DATA_LANES,
        digest: pb::Digest::Sha256 as i32,
        binary_rows: true,
    };
    dest.prepare_restore(pb::PrepareRestoreRequest {
        job_id: job_id.into(),
        database: "stage".into(),
        owner: "stage".into(),
        shape: Some(widest),
        jobs: 1,
        restore: None,
        post_restore_sql: String::new(),
        params: Default::default(),
        ticket: ticket.into(),
        source_identity: "spiffe://stagesync/agent/prod-db".into(),
        staging: None,
        unmasked: false,
    })
    .await
    .unwrap();
}

/// Pushes a stream header straight to the destination as `as_agent`.
async fn push_header(s: &Setup, as_agent: &str, job_id: &str, ticket: &str) -> tonic::Status {
    let tls = Arc::new(ReloadingClientConfig::load(s.pki().agent(as_agent).unwrap()).unwrap());
    let mut c = stagesync_controller::client::connect(tls, &s.staging().target())
        .await
        .unwrap();
    let header = pb::DumpFrame {
        kind: Some(pb::dump_frame::Kind::Header(pb::DumpHeader {
            job_id: job_id.into(),
            ticket: ticket.into(),
            shape: Some(pb::Shape::one_pass(pb::Mode::Stream)),
            compression: pb::Compression::None as i32,
            source_database: "production".into(),
            lane_tables: Vec::new(),
            unmasked_personal_data: false,
        })),
    };
    c.push_dump(futures::stream::iter(vec![header]))
        .await
        .unwrap_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn streams_with_bad_tickets_or_from_strangers_are_refused() {
    let s = setup(Fleet::builder()).await;
    let ticket = "a".repeat(64);
    let mut dest = stagesync_controller::client::connect(s.tls(), &s.staging().target())
        .await
        .unwrap();
    dest.prepare_restore(pb::PrepareRestoreRequest {
        job_id: "0123456789abcdef".into(),
        database: "stage".into(),
        owner: "stage".into(),
        shape: Some(pb::Shape::one_pass(pb::Mode::Stream)),
        jobs: 1,
        restore: None,
        post_restore_sql: String::new(),
        params: Default::default(),
        ticket: ticket.clone(),
        source_identity: "spiffe://stagesync/agent/prod-db".into(),
        staging: None,
        unmasked: false,
    })
    .await
    .unwrap();
    let wrong = push_header(&s, "prod-db", "0123456789abcdef", &"b".repeat(64)).await;
    assert_eq!(wrong.code(), tonic::Code::PermissionDenied);
    assert!(
        wrong.message().contains("wrong ticket"),
        "{}",
        wrong.message()
    );
    let stranger = push_header(&s, "rogue-db", "0123456789abcdef", &ticket).await;
    assert_eq!(stranger.code(), tonic::Code::PermissionDenied);
    assert!(
        stranger.message().contains("policy.peers"),
        "{}",
        stranger.message()
    );
    // The right ticket is accepted once (the stream then fails: it has no
    // data), and a replay is refused.
    let first = push_header(&s, "prod-db", "0123456789abcdef", &ticket).await;
    assert!(!first.message().contains("ticket"), "{}", first.message());
    let replay = push_header(&s, "prod-db", "0123456789abcdef", &ticket).await;
    assert_eq!(replay.code(), tonic::Code::PermissionDenied);
    assert!(
        replay.message().contains("already used") || replay.message().contains("has ended"),
        "{}",
        replay.message()
    );
    s.assert_untouched().await;
}

/// Prepares job `n` and pushes `header` (given its job id, ticket, mode and
/// compression) and `frames` to it as the source agent; the refusal's message.
async fn push_prepared(
    s: &Setup,
    n: usize,
    header: pb::DumpHeader,
    frames: Vec<pb::dump_frame::Kind>,
) -> String {
    let job_id = format!("{n:016x}");
    let ticket = format!("{n:x}").repeat(64);
    prepare_job(s, &job_id, &ticket).await;
    let header = pb::DumpHeader {
        job_id,
        ticket,
        compression: pb::Compression::None as i32,
        source_database: "production".into(),
        ..header
    };
    let all = std::iter::once(pb::dump_frame::Kind::Header(header))
        .chain(frames)
        .map(|k| pb::DumpFrame { kind: Some(k) })
        .collect::<Vec<_>>();
    let tls = Arc::new(ReloadingClientConfig::load(s.pki().agent("prod-db").unwrap()).unwrap());
    let mut c = stagesync_controller::client::connect(tls, &s.staging().target())
        .await
        .unwrap();
    c.push_dump(futures::stream::iter(all))
        .await
        .expect_err("a malformed stream is refused")
        .message()
        .to_string()
}

/// Frames of a split stream out of order or incomplete: each refused with
/// what was wrong, and nothing left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_split_streams_are_refused() {
    use pb::dump_frame::Kind;
    let s = setup(Fleet::builder()).await;
    let start = |name: &str| Kind::FileStart(pb::FileStart { name: name.into() });
    let trailer = || {
        Kind::Trailer(stagesync_agent::frames::Encoder::new(pb::Compression::None, None).trailer())
    };
    let cases: Vec<(bool, Vec<Kind>, &str)> = vec![
        (
            true,
            vec![trailer()],
            "ended without the post-data section it announced",
        ),
        (
            true,
            vec![start("other.dump")],
            "unexpected file start frame",
        ),
        (
            false,
            vec![start("schema.dump")],
            "unexpected file start frame",
        ),
        (
            true,
            vec![start("schema.dump"), trailer()],
            "the stream ended inside a file",
        ),
        (
            true,
            vec![
                start("schema.dump"),
                Kind::FileEnd(pb::FileEnd {
                    name: "schema.dump".into(),
                    size: 5,
                }),
            ],
            "ended with 0 bytes, the source says 5 bytes",
        ),
        (
            true,
            vec![start("../schema.dump")],
            "unexpected file start frame",
        ),
    ];
    for (i, (announced, frames, want)) in cases.into_iter().enumerate() {
        let header = pb::DumpHeader {
            shape: Some(pb::Shape {
                mode: pb::Mode::Stream as i32,
                post_data_file: announced,
                data_lanes: 0,
                digest: pb::Digest::Sha256 as i32,
                binary_rows: false,
            }),
            ..Default::default()
        };
        let refused = push_prepared(&s, 0xa0 + i, header, frames).await;
        assert!(
            refused.contains(want),
            "case {i}: want {want:?}, got {refused:?}"
        );
    }
    s.assert_untouched().await;
}

/// Frames of a stream with data lanes out of order, unannounced or
/// incomplete: each refused with what was wrong, its pg_restores stopped,
/// and nothing left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_lane_streams_are_refused() {
    use bytes::Bytes;
    use pb::dump_frame::Kind;
    use stagesync_agent::frames::Encoder;
    let s = setup(Fleet::builder()).await;
    // A real schema archive, so that the tables get made and the lanes'
    // pg_restores start before the broken part.
    let out = std::process::Command::new(s.src().bin_dir.join("pg_dump"))
        .arg(format!("--host={}", s.src().socket_dir.display()))
        .arg(format!("--port={}", s.src().port))
        .args([
            "--username=postgres",
            "--format=custom",
            "--compress=0",
            "--section=pre-data",
            "--section=post-data",
            "--dbname=production",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let schema = Bytes::from(out.stdout);
    let none = pb::Compression::None;
    // The schema file on lane 0's encoder, as a source sends it first.
    let with_schema = |lane0: &mut Encoder, rest: Vec<Kind>| {
        let mut k = vec![Kind::FileStart(pb::FileStart {
            name: "schema.dump".into(),
        })];
        for chunk in schema.chunks(stagesync_agent::frames::CHUNK) {
            k.push(Kind::Data(lane0.data(schema.slice_ref(chunk)).unwrap()));
        }
        k.push(Kind::FileEnd(pb::FileEnd {
            name: "schema.dump".into(),
            size: schema.len() as u64,
        }));
        k.extend(rest);
        k
    };
    let lane_end = |lane: u32, trailer: pb::DumpTrailer| {
        Kind::LaneEnd(pb::LaneEnd {
            lane,
            trailer: Some(trailer),
        })
    };
    let empty = || Encoder::for_lane(none, 1, None).trailer();
    let start = |lane: u32, table: u32| {
        Kind::TableStart(pb::TableStart {
            lane,
            table,
            slice: 0,
        })
    };
    let table_end = |so_far: pb::DumpTrailer| {
        Kind::TableEnd(pb::TableEnd {
            lane: 1,
            so_far: Some(so_far),
            rows: 0,
        })
    };
    let mut cases: Vec<(u32, bool, Vec<Kind>, &str)> = vec![
        (2, false, vec![], "announced 2 data lanes"),
        (18, true, vec![], "announced 18 data lanes"),
        (
            2,
            true,
            vec![Kind::Data(
                Encoder::new(none, None)
                    .data(Bytes::from_static(b"x"))
                    .unwrap(),
            )],
            "must start with the file schema.dump, not a data frame",
        ),
    ];
    let mut lane0 = Encoder::new(none, None);
    let stray = Encoder::for_lane(none, 5, None)
        .data(Bytes::from_static(b"x"))
        .unwrap();
    cases.push((
        2,
        true,
        with_schema(&mut lane0, vec![Kind::Data(stray)]),
        "a frame for data lane 5 arrived; the stream has 2",
    ));
    let mut lane0 = Encoder::new(none, None);
    cases.push((
        2,
        true,
        with_schema(&mut lane0, vec![lane_end(0, empty())]),
        "data lane 0: the stream carried",
    ));
    let mut lane0 = Encoder::new(none, None);
    cases.push((
        2,
        true,
        with_schema(&mut lane0, vec![lane_end(1, empty()), lane_end(1, empty())]),
        "data lane 1 ended twice",
    ));
    let mut lane0 = Encoder::new(none, None);
    let late = Encoder::for_lane(none, 1, None)
        .data(Bytes::from_static(b"x"))
        .unwrap();
    cases.push((
        2,
        true,
        with_schema(&mut lane0, vec![lane_end(1, empty()), Kind::Data(late)]),
        "data arrived on lane 1 after its end",
    ));
    let mut lane0 = Encoder::new(none, None);
    let rest = vec![Kind::Trailer(lane0.trailer())];
    cases.push((
        2,
        true,
        with_schema(&mut lane0, rest),
        "the stream ended with data lane 1 still open",
    ));
    let mut lane0 = Encoder::new(none, None);
    let mut lane1 = Encoder::for_lane(none, 1, None);
    let _skipped = lane1.data(Bytes::from_static(b"a")).unwrap();
    let second = lane1.data(Bytes::from_static(b"b")).unwrap();
    cases.push((
        2,
        true,
        with_schema(&mut lane0, vec![start(1, 0), Kind::Data(second.clone())]),
        "data lane 1: frame 1 arrived where frame 0 was expected",
    ));
    // The copy lanes' tables: data only inside one, each slice once, each
    // checked at its end, all of them before the trailer.
    let mut lane0 = Encoder::new(none, None);
    cases.push((
        2,
        true,
        with_schema(&mut lane0, vec![Kind::Data(second)]),
        "data arrived on copy lane 1 outside a table",
    ));
    let mut lane0 = Encoder::new(none, None);
    cases.push((
        2,
        true,
        with_schema(&mut lane0, vec![start(0, 0)]),
        "a table started on lane 0, which is not an open copy lane",
    ));
    let mut lane0 = Encoder::new(none, None);
    cases.push((
        2,
        true,
        with_schema(&mut lane0, vec![start(1, 7)]),
        "started slice 0 of lane table 7, which the header does not name",
    ));
    let mut lane0 = Encoder::new(none, None);
    cases.push((
        2,
        true,
        with_schema(&mut lane0, vec![start(1, 0), start(1, 0)]),
        "a table started on copy lane 1 before the previous one ended",
    ));
    let mut lane0 = Encoder::new(none, None);
    cases.push((
        2,
        true,
        with_schema(
            &mut lane0,
            vec![start(1, 0), table_end(empty()), start(1, 0)],
        ),
        "slice 0 of app.images arrived twice",
    ));
    let mut lane0 = Encoder::new(none, None);
    cases.push((
        2,
        true,
        with_schema(&mut lane0, vec![start(1, 0), lane_end(1, empty())]),
        "copy lane 1 ended inside a table",
    ));
    let mut lane0 = Encoder::new(none, None);
    let mut short = empty();
    short.total_len = 3;
    cases.push((
        2,
        true,
        with_schema(&mut lane0, vec![start(1, 0), table_end(short)]),
        "data lane 1: the stream carried 0 bytes but its trailer says 3",
    ));
    let mut lane0 = Encoder::new(none, None);
    let rest = vec![lane_end(1, empty()), lane_end(0, lane0.trailer())];
    let mut frames = with_schema(&mut lane0, rest);
    // lane 0's digest after the schema file: rebuilt for its end and the
    // trailer.
    let lane0_end = lane0.trailer();
    frames.pop();
    frames.push(lane_end(0, lane0_end.clone()));
    frames.push(Kind::Trailer(lane0_end));
    cases.push((
        2,
        true,
        frames,
        "the stream ended without all the rows of app.images",
    ));
    let mut lane0 = Encoder::new(none, None);
    let mut short = empty();
    short.total_len = 5;
    cases.push((
        2,
        true,
        with_schema(&mut lane0, vec![lane_end(1, short)]),
        "data lane 1: the stream carried 0 bytes but its trailer says 5",
    ));
    let mut lane0 = Encoder::new(none, None);
    cases.push((
        2,
        true,
        with_schema(
            &mut lane0,
            vec![Kind::FileStart(pb::FileStart { name: "x".into() })],
        ),
        "an unexpected file start frame arrived among the data lanes",
    ));
    for (i, (lanes, post_data_file, frames, want)) in cases.into_iter().enumerate() {
        let header = pb::DumpHeader {
            shape: Some(pb::Shape {
                mode: pb::Mode::Stream as i32,
                post_data_file,
                data_lanes: lanes,
                digest: pb::Digest::Sha256 as i32,
                binary_rows: false,
            }),
            // The copy lane carries a table of the fixture.
            lane_tables: (1..lanes.min(2))
                .map(|_| pb::LaneTable {
                    schema: "app".into(),
                    table: "images".into(),
                    columns: vec!["id".into()],
                    indexes: Vec::new(),
                    slices: 1,
                    binary: false,
                })
                .collect(),
            ..Default::default()
        };
        let refused = push_prepared(&s, 0xb0 + i, header, frames).await;
        assert!(
            refused.contains(want),
            "case {i}: want {want:?}, got {refused:?}"
        );
    }
    // Lanes whose tables the header does not name.
    let header = pb::DumpHeader {
        shape: Some(pb::Shape {
            mode: pb::Mode::Stream as i32,
            post_data_file: true,
            data_lanes: 2,
            digest: pb::Digest::Sha256 as i32,
            binary_rows: false,
        }),
        ..Default::default()
    };
    let refused = push_prepared(&s, 0xef, header, Vec::new()).await;
    assert!(
        refused.contains("the stream has 2 data lanes and names 0 tables for them"),
        "{refused}"
    );
    // A stream saying it carries personal data unmasked, to a destination
    // whose policy does not take it.
    let header = pb::DumpHeader {
        shape: Some(pb::Shape::one_pass(pb::Mode::Stream)),
        unmasked_personal_data: true,
        ..Default::default()
    };
    let refused = push_prepared(&s, 0xee, header, Vec::new()).await;
    assert!(
        refused.contains("privacy guard") && refused.contains("policy.may_receive_unmasked"),
        "{refused}"
    );
    s.assert_untouched().await;
}
