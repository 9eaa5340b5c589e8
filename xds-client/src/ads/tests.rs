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
use tonic::codec::Streaming;

use super::Releasing;

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

/// A gRPC-framed response carrying one resource of `size` bytes.
fn framed(size: usize) -> Vec<u8> {
    let response = DeltaDiscoveryResponse {
        type_url: crate::type_url::CLUSTER.into(),
        resources: vec![Resource {
            name: "big".into(),
            version: "1".into(),
            resource: Some(Any {
                type_url: crate::type_url::CLUSTER.into(),
                value: vec![7; size],
            }),
            ..Default::default()
        }],
        ..Default::default()
    };
    let body = response.encode_to_vec();
    let mut out = vec![0];
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// How many bytes this thread still holds once a stream has decoded (and the test dropped) a
/// response of 8 MiB and then one of 256 KiB, with `decoder`.
async fn held_after_large_then_small<D>(decoder: D) -> (isize, isize)
where
    D: tonic::codec::Decoder<Item = DeltaDiscoveryResponse, Error = tonic::Status> + Send + 'static,
{
    const LARGE: usize = 8 << 20;
    const SMALL: usize = 256 << 10;
    let mut wire = framed(LARGE);
    wire.extend_from_slice(&framed(SMALL));
    let wire = Bytes::from(wire);
    // As h2 hands them over: DATA frames of 16 KiB (slices of `wire`, no allocation).
    let frames: Vec<Result<Frame<Bytes>, Infallible>> = (0..wire.len())
        .step_by(16 << 10)
        .map(|at| Ok(Frame::data(wire.slice(at..wire.len().min(at + (16 << 10))))))
        .collect();
    let body = StreamBody::new(futures::stream::iter(frames));
    let mut stream = Streaming::new_response(
        decoder,
        body,
        http::StatusCode::OK,
        None,
        Some(crate::transport::MAX_MESSAGE_SIZE),
    );
    let before = live();
    let large = stream.next().await.unwrap().unwrap();
    assert_eq!(
        large.resources[0].resource.as_ref().unwrap().value.len(),
        LARGE
    );
    drop(large);
    let after_large = live() - before;
    let small = stream.next().await.unwrap().unwrap();
    assert_eq!(
        small.resources[0].resource.as_ref().unwrap().value.len(),
        SMALL
    );
    drop(small);
    let after_small = live() - before;
    drop(stream);
    (after_large, after_small)
}

#[tokio::test(flavor = "current_thread")]
async fn a_large_response_buffer_is_let_go_after_the_next_response() {
    let (after_large, after_small) =
        held_after_large_then_small(Releasing::<DeltaDiscoveryResponse>::default()).await;
    // The large message's buffer is held until the next message...
    assert!(after_large >= 8 << 20, "{after_large} bytes held");
    // ...which frees it: what stays is about the small message's own buffer.
    assert!(after_small < 1 << 20, "{after_small} bytes held");
}

/// The measurement can fail: prost's own decoder (tonic's default) keeps the large buffer.
#[tokio::test(flavor = "current_thread")]
async fn tonic_s_default_decoder_keeps_the_largest_buffer() {
    let (_, after_small) = held_after_large_then_small(tonic_prost::ProstDecoder::<
        DeltaDiscoveryResponse,
    >::new(Default::default()))
    .await;
    assert!(after_small >= 8 << 20, "{after_small} bytes held");
}
