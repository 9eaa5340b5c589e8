//! What the response stream holds after large responses, measured with an allocator that counts
//! the bytes live per thread (the stream is polled on this test's thread alone, so other tests
//! running beside it do not move the figure); and how it reads gRPC's framing.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::convert::Infallible;

use bytes::Bytes;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryResponse, Resource};
use envoy_types::pb::google::protobuf::Any;
use futures::StreamExt;
use http_body_util::StreamBody;
use hyper::body::Frame;
use prost::Message;
use tonic::codec::Streaming;
use tonic::{Code, Status};
use tonic_prost::ProstDecoder;

use super::Inbound;
use crate::wire::DeltaResponse;

struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
}

fn count(delta: isize) {
    // `try_with`: nothing to count while the thread is being torn down.
    let _ = LIVE.try_with(|live| live.set(live.get() + delta));
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size() as isize);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(-(layout.size() as isize));
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size as isize - layout.size() as isize);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Bytes allocated and not yet freed by this thread.
fn live() -> isize {
    LIVE.with(Cell::get)
}

/// A gRPC-framed response carrying one resource per entry of `sizes`, of that many bytes.
fn framed(sizes: &[usize]) -> Vec<u8> {
    let response = DeltaDiscoveryResponse {
        type_url: crate::type_url::CLUSTER.into(),
        resources: sizes
            .iter()
            .enumerate()
            .map(|(i, &size)| Resource {
                name: format!("r{i}"),
                version: "1".into(),
                resource: Some(Any {
                    type_url: crate::type_url::CLUSTER.into(),
                    value: vec![7; size],
                }),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let body = response.encode_to_vec();
    let mut out = vec![0];
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

const LARGE: usize = 8 << 20;
const SMALL: usize = 256 << 10;

type Frames = futures::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>;

/// `wire` as h2 hands it over: DATA frames of `frame` bytes, slices of the one buffer made
/// here (no allocation while the stream reads them), then `trailers` if any.
fn frames(wire: &Bytes, frame: usize, trailers: Option<http::HeaderMap>) -> StreamBody<Frames> {
    let mut frames: Vec<Result<Frame<Bytes>, Infallible>> = (0..wire.len())
        .step_by(frame)
        .map(|at| Ok(Frame::data(wire.slice(at..wire.len().min(at + frame)))))
        .collect();
    frames.extend(trailers.map(|t| Ok(Frame::trailers(t))));
    StreamBody::new(futures::stream::iter(frames))
}

/// Trailers ending a call with status OK.
fn ok() -> Option<http::HeaderMap> {
    let mut t = http::HeaderMap::new();
    t.insert("grpc-status", http::HeaderValue::from_static("0"));
    Some(t)
}

/// The responses of `messages` as the client reads them (16 KiB DATA frames), and the wire
/// buffer, which the caller keeps until it has measured (else its release, when the last frame
/// is read, would count against what the stream holds).
fn stream(messages: &[Vec<u8>]) -> (Bytes, Inbound<DeltaResponse>) {
    let wire = Bytes::from(messages.concat());
    let body = tonic::body::Body::new(frames(&wire, 16 << 10, ok()));
    let inbound = Inbound::new(body, crate::transport::MAX_MESSAGE_SIZE);
    (wire, inbound)
}

/// The same through tonic's `Streaming` and prost's decoder (what the client used before).
fn tonic_stream(messages: &[Vec<u8>]) -> (Bytes, Streaming<DeltaDiscoveryResponse>) {
    let wire = Bytes::from(messages.concat());
    let stream = Streaming::new_response(
        ProstDecoder::<DeltaDiscoveryResponse>::new(Default::default()),
        frames(&wire, 16 << 10, ok()),
        http::StatusCode::OK,
        None,
        Some(crate::transport::MAX_MESSAGE_SIZE),
    );
    (wire, stream)
}

fn sizes(response: &DeltaResponse) -> Vec<usize> {
    response
        .resources
        .iter()
        .map(|r| r.resource.as_ref().map_or(0, |a| a.value.len()))
        .collect()
}

/// A large response, once decoded and dropped, leaves nothing behind: not its buffer until the
/// next response comes, nor a receive buffer grown to its size.
#[tokio::test(flavor = "current_thread")]
async fn a_large_response_is_freed_with_it() {
    let (_wire, mut stream) = stream(&[framed(&[LARGE]), framed(&[SMALL])]);
    let before = live();
    drop(stream.next().await.unwrap().unwrap());
    let after_large = live() - before;
    assert!(after_large < 1 << 20, "{after_large} bytes held");
    drop(stream.next().await.unwrap().unwrap());
    let after_small = live() - before;
    assert!(after_small < 1 << 20, "{after_small} bytes held");
    assert!(
        stream.next().await.is_none(),
        "the call ends with its trailers"
    );
}

/// A response that is mostly one payload (`main_internal`): the payload kept is the received
/// message itself, not a copy beside it.
#[tokio::test(flavor = "current_thread")]
async fn a_payload_that_is_most_of_its_response_is_not_copied() {
    let (_wire, mut stream) = stream(&[framed(&[LARGE])]);
    let before = live();
    let kept = stream.next().await.unwrap().unwrap();
    assert_eq!(sizes(&kept), [LARGE]);
    let held = live() - before;
    // One copy of the 8 MiB (a copy would be 16: the message and the copy).
    assert!(held < (LARGE + (1 << 20)) as isize, "{held} bytes held");
}

/// A large response of many payloads (the initial CDS): each is copied out, so one payload
/// still held does not keep the whole response.
#[tokio::test(flavor = "current_thread")]
async fn one_of_many_payloads_does_not_keep_its_response() {
    let many = vec![8 << 10; 1024]; // 8 MiB in 1024 payloads
    let (_wire, mut stream) = stream(&[framed(&many), framed(&[SMALL])]);
    let before = live();
    let mut first = stream.next().await.unwrap().unwrap();
    first.resources.truncate(1);
    first.resources.shrink_to_fit();
    drop(stream.next().await.unwrap().unwrap());
    let held = live() - before;
    assert_eq!(sizes(&first), [8 << 10]);
    // The one payload and the small response's buffer; not the 8 MiB response.
    assert!(held < 1 << 20, "{held} bytes held");
}

/// The initial sync of 5 000 services as the stream receives it: the clusters (8.8 MB in
/// 15 000 payloads), the listener (one 3.2 MB payload, kept) and then the assignments
/// (20.6 MB in 15 000 payloads), after which the stream is quiet. What the stream holds beside
/// the listener and one payload of each response is what it costs.
fn initial_sync() -> Vec<Vec<u8>> {
    vec![
        framed(&vec![589; 15_000]),
        framed(&[3_200_000]),
        framed(&vec![1_373; 15_000]),
    ]
}

/// The bytes this thread still holds once `stream` gave the sync's three responses, each kept
/// with one of its resources (`keep_one`).
async fn held_after_sync<T, S>(mut stream: S, keep_one: fn(&mut T)) -> isize
where
    S: futures::Stream<Item = Result<T, Status>> + Unpin,
{
    let before = live();
    let mut kept = Vec::new();
    for _ in 0..3 {
        let mut r = stream.next().await.unwrap().unwrap();
        keep_one(&mut r);
        kept.push(r);
    }
    live() - before
}

#[tokio::test(flavor = "current_thread")]
async fn after_the_initial_sync_only_the_kept_listener_is_held() {
    let (_wire, stream) = stream(&initial_sync());
    let held = held_after_sync(stream, |r: &mut DeltaResponse| {
        r.resources.truncate(1);
        r.resources.shrink_to_fit();
    })
    .await;
    assert!(held < 4 << 20, "{held} bytes held");
}

/// The measurement can fail: tonic's `Streaming` holds its receive buffer, grown to the
/// 20.6 MB response, after the same sync.
#[tokio::test(flavor = "current_thread")]
async fn tonic_s_streaming_holds_its_largest_buffer_after_the_sync() {
    let (_wire, stream) = tonic_stream(&initial_sync());
    let held = held_after_sync(stream, |r: &mut DeltaDiscoveryResponse| {
        r.resources.truncate(1);
        r.resources.shrink_to_fit();
    })
    .await;
    assert!(held > 20 << 20, "{held} bytes held");
}

/// Messages split anywhere across DATA frames (inside the header, inside the message, several
/// in one frame) decode the same.
#[tokio::test(flavor = "current_thread")]
async fn messages_decode_across_any_frame_boundaries() {
    let messages = [
        framed(&[10, 3]),
        framed(&[OWN + 7]),
        framed(&[1]),
        framed(&[]),
    ];
    let wire = Bytes::from(messages.concat());
    for frame in [1, 2, 3, 4, 5, 6, 7, 1000, OWN - 1, OWN + 13, wire.len()] {
        let body = tonic::body::Body::new(frames(&wire, frame, ok()));
        let inbound: Inbound<DeltaResponse> = Inbound::new(body, usize::MAX);
        let got: Vec<Vec<usize>> = inbound.map(|r| sizes(&r.unwrap())).collect().await;
        assert_eq!(
            got,
            [vec![10, 3], vec![OWN + 7], vec![1], vec![]],
            "{frame}-byte frames"
        );
    }
}

const OWN: usize = super::inbound::OWN_ALLOCATION;

/// What ends a call, and what is refused: each is the call's error, with a reason.
#[tokio::test(flavor = "current_thread")]
async fn the_end_of_a_call_and_bad_framing() {
    async fn outcome(
        wire: Vec<u8>,
        trailers: Option<http::HeaderMap>,
        max: usize,
    ) -> Vec<Result<usize, Status>> {
        let wire = Bytes::from(wire);
        let body = tonic::body::Body::new(frames(&wire, 7, trailers));
        let inbound: Inbound<DeltaResponse> = Inbound::new(body, max);
        inbound
            .map(|r| r.map(|m| m.resources.len()))
            .collect()
            .await
    }
    // Trailers with an error status: the messages before it, then that status.
    let mut denied = http::HeaderMap::new();
    denied.insert("grpc-status", http::HeaderValue::from_static("7"));
    denied.insert("grpc-message", http::HeaderValue::from_static("no"));
    let got = outcome(framed(&[1]), Some(denied), usize::MAX).await;
    assert_eq!(got.len(), 2);
    assert_eq!(*got[0].as_ref().unwrap(), 1);
    let status = got[1].as_ref().unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (Code::PermissionDenied, "no")
    );
    // No trailers, or trailers without a status: the messages, then an `Unknown` error.
    let mut silent = http::HeaderMap::new();
    silent.insert("x-other", http::HeaderValue::from_static("1"));
    for trailers in [None, Some(silent)] {
        let got = outcome(framed(&[1]), trailers, usize::MAX).await;
        assert_eq!(got.len(), 2);
        let status = got[1].as_ref().unwrap_err();
        assert_eq!(status.code(), Code::Unknown, "{status:?}");
        assert!(
            status.message().contains("without a grpc-status"),
            "{status:?}"
        );
    }
    // The body ends inside a message (a header, then part of a message).
    for cut in [3, 20] {
        let got = outcome(framed(&[100])[..cut].to_vec(), ok(), usize::MAX).await;
        let status = got[0].as_ref().unwrap_err();
        assert_eq!(status.code(), Code::Internal, "{status:?}");
        assert!(status.message().contains("inside a message"), "{status:?}");
    }
    // A compressed message (nothing was negotiated).
    let mut compressed = framed(&[1]);
    compressed[0] = 1;
    let status = outcome(compressed, ok(), usize::MAX)
        .await
        .remove(0)
        .unwrap_err();
    assert_eq!(status.code(), Code::Internal);
    assert!(
        status.message().contains("compression flag 1"),
        "{status:?}"
    );
    // A message longer than the limit: refused from its header, before it is read.
    let status = outcome(framed(&[100]), ok(), 50)
        .await
        .remove(0)
        .unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange);
    assert!(
        status.message().contains("the limit is 50 bytes"),
        "{status:?}"
    );
}

#[test]
fn http_errors_map_to_grpc_codes() {
    use super::inbound::http_status;
    for (http, code) in [
        (400, Code::Internal),
        (401, Code::Unauthenticated),
        (403, Code::PermissionDenied),
        (404, Code::Unimplemented),
        (503, Code::Unavailable),
        (500, Code::Unknown),
    ] {
        let status = http_status(http::StatusCode::from_u16(http).unwrap());
        assert_eq!(status.code(), code, "{http}");
        assert!(status.message().contains(&http.to_string()), "{status:?}");
    }
}
