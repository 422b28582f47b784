//! Length-delimited frames: a `u32` big-endian length, then that many bytes.
//!
//! The codec works on any Tokio byte stream so it can be tested without
//! sockets; the transport runs it over QUIC streams and adds the timeouts.
//! A length above the limit is an error before anything is allocated, so a
//! hostile or corrupt prefix cannot make the node reserve 4 GiB.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Bytes of the length prefix.
pub(crate) const HEADER_LEN: usize = 4;

#[derive(Debug)]
pub(crate) enum FrameError {
    /// The frame is longer than the limit.
    TooLarge {
        len: u64,
        max: u32,
    },
    /// The stream ended inside a frame.
    Truncated {
        got: u64,
        expected: u64,
    },
    Io(io::Error),
}

impl From<io::Error> for FrameError {
    fn from(e: io::Error) -> Self {
        FrameError::Io(e)
    }
}

/// Reads one frame. `Ok(None)` means the stream ended cleanly between frames.
#[cfg(test)]
pub(crate) async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    max: u32,
) -> Result<Option<Vec<u8>>, FrameError> {
    FrameReader::default().read(reader, max).await
}

/// Reads frames from one stream. It keeps a partly read frame between calls,
/// so [`read`](Self::read) is cancel-safe: when a timeout drops the future in
/// the middle of a frame, the next call carries on with that frame instead of
/// reading its tail as a length prefix.
#[derive(Debug, Default)]
pub(crate) struct FrameReader {
    header: [u8; HEADER_LEN],
    header_filled: usize,
    /// The body being read, once the header is complete.
    body: Option<Vec<u8>>,
    body_filled: usize,
}

impl FrameReader {
    /// Reads the next frame. `Ok(None)` means the stream ended cleanly
    /// between frames.
    pub(crate) async fn read<R: AsyncRead + Unpin>(
        &mut self,
        reader: &mut R,
        max: u32,
    ) -> Result<Option<Vec<u8>>, FrameError> {
        while self.body.is_none() {
            // `read` is cancel-safe: nothing is consumed unless it completes.
            match reader.read(&mut self.header[self.header_filled..]).await? {
                0 if self.header_filled == 0 => return Ok(None),
                0 => {
                    return Err(FrameError::Truncated {
                        got: self.header_filled as u64,
                        expected: HEADER_LEN as u64,
                    })
                }
                n => self.header_filled += n,
            }
            if self.header_filled == HEADER_LEN {
                let len = u32::from_be_bytes(self.header);
                if len > max {
                    return Err(FrameError::TooLarge {
                        len: u64::from(len),
                        max,
                    });
                }
                self.body = Some(vec![0u8; len as usize]);
                self.body_filled = 0;
            }
        }
        // The loop above only ends once the body exists.
        let body = self.body.get_or_insert_with(Vec::new);
        while self.body_filled < body.len() {
            match reader.read(&mut body[self.body_filled..]).await? {
                0 => {
                    return Err(FrameError::Truncated {
                        got: (HEADER_LEN + self.body_filled) as u64,
                        expected: (HEADER_LEN + body.len()) as u64,
                    })
                }
                n => self.body_filled += n,
            }
        }
        self.header_filled = 0;
        self.body_filled = 0;
        Ok(self.body.take())
    }
}

/// Writes one frame; a payload above the limit is refused before any byte
/// is written.
pub(crate) async fn write_frame<W: AsyncWrite + Unpin>(
    writer: &mut W,
    payload: &[u8],
    max: u32,
) -> Result<(), FrameError> {
    let len = match u32::try_from(payload.len()) {
        Ok(len) if len <= max => len,
        _ => {
            return Err(FrameError::TooLarge {
                len: payload.len() as u64,
                max,
            })
        }
    };
    writer.write_all(&len.to_be_bytes()).await?;
    writer.write_all(payload).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_end_cleanly() {
        let (mut a, mut b) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            for payload in [&b""[..], b"x", &[7u8; 1000]] {
                write_frame(&mut a, payload, 1000).await.unwrap();
            }
        });
        assert_eq!(read_frame(&mut b, 1000).await.unwrap().unwrap(), b"");
        assert_eq!(read_frame(&mut b, 1000).await.unwrap().unwrap(), b"x");
        assert_eq!(
            read_frame(&mut b, 1000).await.unwrap().unwrap(),
            vec![7u8; 1000]
        );
        writer.await.unwrap();
        assert!(read_frame(&mut b, 1000).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn oversized_length_is_an_error_before_the_body() {
        let (mut a, mut b) = tokio::io::duplex(64);
        // A 4 GiB length with no body behind it, and the stream left open:
        // the reader must answer from the prefix alone.
        a.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        let err = read_frame(&mut b, 16 << 20).await.unwrap_err();
        assert!(
            matches!(err, FrameError::TooLarge { len, max } if len == u64::from(u32::MAX) && max == 16 << 20),
            "{err:?}"
        );
        drop(a);
    }

    #[tokio::test]
    async fn oversized_payload_is_not_written() {
        let (mut a, mut b) = tokio::io::duplex(64);
        let err = write_frame(&mut a, &[0u8; 11], 10).await.unwrap_err();
        assert!(
            matches!(err, FrameError::TooLarge { len: 11, max: 10 }),
            "{err:?}"
        );
        drop(a);
        assert!(
            read_frame(&mut b, 10).await.unwrap().is_none(),
            "nothing was sent"
        );
    }

    #[tokio::test]
    async fn a_read_cancelled_mid_frame_resumes_it() {
        let (mut a, mut b) = tokio::io::duplex(64);
        let mut reader = FrameReader::default();
        a.write_all(&[0, 0, 0, 6, b'a', b'b']).await.unwrap();
        let waited = tokio::time::timeout(
            std::time::Duration::from_millis(20),
            reader.read(&mut b, 100),
        )
        .await;
        assert!(waited.is_err(), "the frame is incomplete");
        a.write_all(b"cdef").await.unwrap();
        write_frame(&mut a, b"next", 100).await.unwrap();
        assert_eq!(reader.read(&mut b, 100).await.unwrap().unwrap(), b"abcdef");
        assert_eq!(reader.read(&mut b, 100).await.unwrap().unwrap(), b"next");
    }

    #[tokio::test]
    async fn truncation_is_reported() {
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&[0, 0]).await.unwrap();
        drop(a);
        let err = read_frame(&mut b, 10).await.unwrap_err();
        assert!(
            matches!(
                err,
                FrameError::Truncated {
                    got: 2,
                    expected: 4
                }
            ),
            "{err:?}"
        );

        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&[0, 0, 0, 5, 1, 2]).await.unwrap();
        drop(a);
        let err = read_frame(&mut b, 10).await.unwrap_err();
        assert!(
            matches!(
                err,
                FrameError::Truncated {
                    got: 6,
                    expected: 9
                }
            ),
            "{err:?}"
        );
    }
}
