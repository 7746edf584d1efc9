//! Exec frames: round trips, and the same frames (or the same error) whatever the split.

use super::*;

/// Decodes a stream the way loomd and the CLI do: append what arrives, split off every
/// complete frame, stop at the first error.
#[derive(Debug, Default, PartialEq)]
struct FrameStream {
    buf: Vec<u8>,
    frames: Vec<(u8, Vec<u8>)>,
    error: Option<String>,
}

impl FrameStream {
    fn push(&mut self, chunk: &[u8]) {
        // Past an error nothing is decoded, but what arrived is kept to compare with.
        self.buf.extend_from_slice(chunk);
        if self.error.is_some() {
            return;
        }
        loop {
            match exec_frame::decode(&self.buf) {
                Ok(Some((kind, data, used))) => {
                    assert!(used <= self.buf.len(), "claimed {used} of {} bytes", self.buf.len());
                    assert_eq!(used, 5 + data.len(), "a frame is its 5-byte header and its data");
                    assert!(data.len() as u32 <= exec_frame::MAX_LEN);
                    self.frames.push((kind, data.to_vec()));
                    self.buf.drain(..used);
                }
                Ok(None) => {
                    assert!(
                        self.buf.len() < 5
                            || self.buf.len()
                                < 5 + u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize,
                        "asked for more bytes although a whole frame is there"
                    );
                    return;
                }
                Err(e) => {
                    assert!(e.contains("limit"), "{e}");
                    self.error = Some(e);
                    return;
                }
            }
        }
    }
}

fn frames_strategy() -> impl Strategy<Value = Vec<(u8, Vec<u8>)>> {
    prop::collection::vec((any::<u8>(), prop::collection::vec(any::<u8>(), 0..300)), 0..12)
}

/// Valid frames, then damaged: bytes flipped, a length made huge, the end cut off.
fn mangled_stream() -> impl Strategy<Value = Vec<u8>> {
    (
        frames_strategy(),
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        any::<bool>(),
        any::<prop::sample::Index>(),
    )
        .prop_map(|(frames, flips, cut, at)| {
            let mut bytes: Vec<u8> = frames.iter().flat_map(|(k, d)| exec_frame::encode(*k, d)).collect();
            if !bytes.is_empty() {
                for (i, b) in flips {
                    let i = i.index(bytes.len());
                    bytes[i] = b;
                }
                if cut {
                    bytes.truncate(at.index(bytes.len()));
                }
            }
            bytes
        })
}

fn check_chunking(bytes: &[u8], points: Vec<usize>) -> Result<(), TestCaseError> {
    let mut whole = FrameStream::default();
    whole.push(bytes);
    let mut pieces = FrameStream::default();
    for chunk in split_at_points(bytes, points) {
        pieces.push(chunk);
    }
    prop_assert_eq!(whole, pieces);
    Ok(())
}

proptest! {
    #![proptest_config(cases(1000))]

    #[test]
    fn exec_frames_round_trip(frames in frames_strategy(), points in prop::collection::vec(any::<usize>(), 0..8)) {
        let bytes: Vec<u8> = frames.iter().flat_map(|(k, d)| exec_frame::encode(*k, d)).collect();
        let mut s = FrameStream::default();
        for chunk in split_at_points(&bytes, points) {
            s.push(chunk);
        }
        prop_assert_eq!(s, FrameStream { buf: Vec::new(), frames, error: None });
    }

    #[test]
    fn exec_frames_decode_the_same_whatever_the_split(
        bytes in prop::collection::vec(any::<u8>(), 0..2048),
        points in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        check_chunking(&bytes, points)?;
    }

    #[test]
    fn damaged_exec_streams_decode_the_same_whatever_the_split(
        bytes in mangled_stream(),
        points in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        check_chunking(&bytes, points)?;
    }
}
