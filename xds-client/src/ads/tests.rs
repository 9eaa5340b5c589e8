//! The receive buffer after a large response: measured with an allocator that counts the bytes
//! live per thread (the stream is polled on this test's thread alone, so other tests running
//! beside it do not move the figure).

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
use tonic::codec::Decoder;
use tonic::codec::Streaming;
use tonic_prost::ProstDecoder;

use super::Releasing;
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

/// A response stream over `messages` as h2 hands them over (DATA frames of 16 KiB, slices of
/// one buffer made here: no allocation while the stream reads them), decoded by `decoder`;
/// and that buffer, which the caller keeps until it has measured (else its release, when the
/// last frame is read, would count against what the stream holds).
fn stream<D>(messages: &[Vec<u8>], decoder: D) -> (Bytes, Streaming<D::Item>)
where
    D: Decoder<Error = tonic::Status> + Send + 'static,
{
    let wire = Bytes::from(messages.concat());
    let frames: Vec<Result<Frame<Bytes>, Infallible>> = (0..wire.len())
        .step_by(16 << 10)
        .map(|at| Ok(Frame::data(wire.slice(at..wire.len().min(at + (16 << 10))))))
        .collect();
    let body = StreamBody::new(futures::stream::iter(frames));
    let stream = Streaming::new_response(
        decoder,
        body,
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

/// How many bytes this thread still holds once a stream has decoded (and the test dropped) a
/// response of 8 MiB and then one of 256 KiB, with `decoder`.
async fn held_after_large_then_small<D>(decoder: D) -> (isize, isize)
where
    D: Decoder<Error = tonic::Status> + Send + 'static,
{
    let (_wire, mut stream) = stream(&[framed(&[LARGE]), framed(&[SMALL])], decoder);
    let before = live();
    drop(stream.next().await.unwrap().unwrap());
    let after_large = live() - before;
    drop(stream.next().await.unwrap().unwrap());
    let after_small = live() - before;
    drop(stream);
    (after_large, after_small)
}

#[tokio::test(flavor = "current_thread")]
async fn a_large_response_buffer_is_let_go_after_the_next_response() {
    let (after_large, after_small) =
        held_after_large_then_small(Releasing::<DeltaResponse>::default()).await;
    // The large message's buffer is held until the next message...
    assert!(after_large >= LARGE as isize, "{after_large} bytes held");
    // ...which frees it: what stays is about the small message's own buffer.
    assert!(after_small < 1 << 20, "{after_small} bytes held");
}

/// The measurement can fail: prost's own decoder (tonic's default) keeps the large buffer.
#[tokio::test(flavor = "current_thread")]
async fn tonic_s_default_decoder_keeps_the_largest_buffer() {
    let (_, after_small) = held_after_large_then_small(
        ProstDecoder::<DeltaDiscoveryResponse>::new(Default::default()),
    )
    .await;
    assert!(after_small >= LARGE as isize, "{after_small} bytes held");
}

/// A response that is mostly one payload (`main_internal`): the payload kept is the received
/// message itself, not a copy beside it.
#[tokio::test(flavor = "current_thread")]
async fn a_payload_that_is_most_of_its_response_is_not_copied() {
    let (_wire, mut stream) = stream(&[framed(&[LARGE])], Releasing::<DeltaResponse>::default());
    let before = live();
    let kept = stream.next().await.unwrap().unwrap();
    assert_eq!(sizes(&kept), [LARGE]);
    let held = live() - before;
    // One copy of the 8 MiB (a copy would be 16: the buffer the stream holds, and the copy).
    assert!(held < (LARGE + (1 << 20)) as isize, "{held} bytes held");
}

/// A large response of many payloads (the initial CDS): each is copied out, so one payload
/// still held does not keep the whole response.
#[tokio::test(flavor = "current_thread")]
async fn one_of_many_payloads_does_not_keep_its_response() {
    let many = vec![8 << 10; 1024]; // 8 MiB in 1024 payloads
    let (_wire, mut stream) = stream(
        &[framed(&many), framed(&[SMALL])],
        Releasing::<DeltaResponse>::default(),
    );
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
