//! The source's PushDump call, with a request body of its own: a data
//! frame's payload goes to HTTP/2 as the very buffer it was read into,
//! behind a small head holding the gRPC length prefix and the frame's other
//! fields. tonic's own client would encode each frame into a fresh buffer
//! first (a copy of every byte, and a reallocation per frame: its buffer
//! forgets capacities over 64 KiB). The destination decodes the frames as
//! any gRPC message; only the sending side differs.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use http_body::Frame;
use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};
use stagesync_proto::v1 as pb;
use tokio::sync::mpsc;
use tonic::Status;
use tonic::codec::{Codec, Streaming};
use tonic::transport::Channel;
use tower::{Service, ServiceExt};

use crate::frames::MAX_MESSAGE;

/// The generated service's PushDump method (a test holds it to the
/// generated service name).
const PATH: &str = "/stagesync.v1.Agent/PushDump";
/// gRPC's message prefix: a compression flag and a big-endian length.
const PREFIX: usize = 5;
/// `DumpFrame.data`'s field number.
const FRAME_DATA: u32 = 2;
/// `DumpData.payload`'s field number.
const DATA_PAYLOAD: u32 = 2;

/// Sends the frames `rx` yields to the destination agent behind `channel`
/// and returns its answer once it has taken the whole stream.
pub async fn push_dump(
    mut channel: Channel,
    rx: mpsc::Receiver<pb::DumpFrame>,
) -> Result<pb::PushDumpResponse, Status> {
    let body = tonic::body::Body::new(FrameBody { rx, payload: None });
    let mut request = http::Request::new(body);
    *request.method_mut() = http::Method::POST;
    *request.uri_mut() = http::Uri::from_static(PATH);
    *request.version_mut() = http::Version::HTTP_2;
    let headers = request.headers_mut();
    headers.insert(http::header::TE, http::HeaderValue::from_static("trailers"));
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    // The transport's own message is only "transport error": the cause
    // (refused, reset, a certificate) is in its sources.
    let unreachable = |e: tonic::transport::Error| Status::unavailable(crate::pg::error_chain(&e));
    let response = channel
        .ready()
        .await
        .map_err(unreachable)?
        .call(request)
        .await
        .map_err(unreachable)?;
    // An answer that is all headers carries its status there.
    if let Some(status) = Status::from_header_map(response.headers())
        && status.code() != tonic::Code::Ok
    {
        return Err(status);
    }
    let code = response.status();
    let decoder =
        tonic_prost::ProstCodec::<pb::DumpFrame, pb::PushDumpResponse>::default().decoder();
    let mut answer =
        Streaming::new_response(decoder, response.into_body(), code, None, Some(MAX_MESSAGE));
    let message = answer.message().await?.ok_or_else(|| {
        Status::internal("the destination agent ended the call without an answer")
    })?;
    answer.trailers().await?;
    Ok(message)
}

/// The request body: each frame as its encoded head, then a data frame's
/// payload as it is.
struct FrameBody {
    rx: mpsc::Receiver<pb::DumpFrame>,
    /// The payload of the data frame whose head went last.
    payload: Option<Bytes>,
}

impl http_body::Body for FrameBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Some(payload) = self.payload.take() {
            return Poll::Ready(Some(Ok(Frame::data(payload))));
        }
        self.rx.poll_recv(cx).map(|next| {
            next.map(|f| {
                let (head, payload) = encode(f);
                self.payload = payload;
                Ok(Frame::data(head))
            })
        })
    }
}

/// A frame as a gRPC message: the whole of it, or for a data frame with a
/// payload, everything before the payload's bytes and the payload itself.
/// The payload field goes last, which protobuf allows in any order.
fn encode(frame: pb::DumpFrame) -> (Bytes, Option<Bytes>) {
    match frame.kind {
        Some(pb::dump_frame::Kind::Data(mut data)) if !data.payload.is_empty() => {
            let payload = std::mem::take(&mut data.payload);
            let n = payload.len();
            let inner =
                data.encoded_len() + key_len(DATA_PAYLOAD) + encoded_len_varint(n as u64) + n;
            let message = key_len(FRAME_DATA) + encoded_len_varint(inner as u64) + inner;
            let mut head = prefixed(message, message - n);
            encode_key(FRAME_DATA, WireType::LengthDelimited, &mut head);
            encode_varint(inner as u64, &mut head);
            data.encode_raw(&mut head);
            encode_key(DATA_PAYLOAD, WireType::LengthDelimited, &mut head);
            encode_varint(n as u64, &mut head);
            (head.freeze(), Some(payload))
        }
        _ => {
            let message = frame.encoded_len();
            let mut head = prefixed(message, message);
            frame.encode_raw(&mut head);
            (head.freeze(), None)
        }
    }
}

/// A buffer for `here` bytes of a `message`-byte gRPC message, its prefix
/// written.
fn prefixed(message: usize, here: usize) -> BytesMut {
    let mut head = BytesMut::with_capacity(PREFIX + here);
    head.put_u8(0);
    head.put_u32(message as u32);
    head
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frames::frame;
    use bytes::Buf;
    use pb::dump_frame::Kind;

    /// What the destination reads back from the bytes a frame went out as.
    fn decoded(f: pb::DumpFrame) -> pb::DumpFrame {
        let (head, payload) = encode(f);
        let mut wire = BytesMut::from(&head[..]);
        if let Some(p) = payload {
            wire.extend_from_slice(&p);
        }
        let mut wire = wire.freeze();
        assert_eq!(wire.get_u8(), 0, "uncompressed");
        assert_eq!(
            wire.get_u32() as usize,
            wire.len(),
            "the prefix counts the message"
        );
        pb::DumpFrame::decode(wire).unwrap()
    }

    #[test]
    fn a_data_frame_reads_back_whole() {
        for n in [1usize, 127, 128, 16_383, 16_384, 256 * 1024] {
            let data = pb::DumpData {
                seq: 300,
                payload: Bytes::from(vec![7u8; n]),
                crc32c: 0xdead_beef,
                raw_len: n as u32,
                lane: 3,
            };
            let f = frame(Kind::Data(data));
            let (head, payload) = encode(f.clone());
            assert_eq!(
                payload.map(|p| p.len()),
                Some(n),
                "the payload is not copied"
            );
            assert!(head.len() < 32);
            assert_eq!(decoded(f.clone()), f, "{n} bytes");
        }
    }

    #[test]
    fn the_path_is_the_generated_services() {
        let service = stagesync_proto::v1::agent_server::SERVICE_NAME;
        assert_eq!(PATH, format!("/{service}/PushDump"));
    }

    #[test]
    fn other_frames_go_whole() {
        let empty = frame(Kind::Data(pb::DumpData {
            seq: 1,
            ..Default::default()
        }));
        let (_, payload) = encode(empty.clone());
        assert!(payload.is_none());
        assert_eq!(decoded(empty.clone()), empty);
        for f in [
            frame(Kind::Heartbeat(pb::Heartbeat {})),
            frame(Kind::TableStart(pb::TableStart {
                lane: 2,
                table: 9,
                slice: 1,
            })),
            frame(Kind::FileEnd(pb::FileEnd {
                name: "toc.dat".into(),
                size: 1 << 40,
            })),
        ] {
            assert_eq!(encode(f.clone()).1, None);
            assert_eq!(decoded(f.clone()), f);
        }
    }
}
