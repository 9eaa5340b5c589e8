//! Counting the gRPC messages of a stream as its body passes (Istio's
//! `istio_request_messages_total` / `istio_response_messages_total`, which Envoy's gRPC frame
//! inspector feeds): each message is a 5-byte prefix (compressed flag, big-endian length) and
//! that many bytes. A message counts once its prefix has passed, as Envoy counts a frame.

/// Where a stream is in its sequence of length-prefixed messages.
#[derive(Debug, Default, Clone)]
pub struct GrpcFrames {
    /// Bytes of the current prefix seen so far (0..5).
    prefix: [u8; 5],
    have: usize,
    /// Bytes of the current message still to pass.
    remaining: u64,
    pub messages: u64,
}

impl GrpcFrames {
    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.remaining > 0 {
                let skip = usize::try_from(self.remaining)
                    .unwrap_or(usize::MAX)
                    .min(bytes.len());
                self.remaining -= skip as u64;
                bytes = &bytes[skip..];
                continue;
            }
            let take = (5 - self.have).min(bytes.len());
            self.prefix[self.have..self.have + take].copy_from_slice(&bytes[..take]);
            self.have += take;
            bytes = &bytes[take..];
            if self.have == 5 {
                self.messages += 1;
                self.remaining = u64::from(u32::from_be_bytes([
                    self.prefix[1],
                    self.prefix[2],
                    self.prefix[3],
                    self.prefix[4],
                ]));
                self.have = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(body: &[u8]) -> Vec<u8> {
        let mut m = vec![0];
        m.extend_from_slice(&(body.len() as u32).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    #[test]
    fn messages_are_counted_however_the_stream_is_cut() {
        let stream: Vec<u8> = [
            message(b"hello"),
            message(b""),
            message(&[7u8; 300]),
            message(b"x"),
        ]
        .concat();
        for cut in [1, 2, 3, 5, 7, 64, stream.len()] {
            let mut f = GrpcFrames::default();
            for chunk in stream.chunks(cut) {
                f.feed(chunk);
            }
            assert_eq!(f.messages, 4, "chunks of {cut}");
        }
        // A message whose prefix has passed counts, its body still in flight.
        let mut f = GrpcFrames::default();
        f.feed(&message(&[1u8; 100])[..10]);
        assert_eq!(f.messages, 1);
    }
}
