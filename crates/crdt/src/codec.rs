//! The binary codec for disk and wire: a format-version byte, then postcard.
//!
//! postcard's format is specified and stable. The leading byte lets a newer node
//! read what an older one wrote: decoders match on it and migrate.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The format version this build writes.
pub const FORMAT_VERSION: u8 = 1;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("empty input: expected a format version byte")]
    Empty,
    #[error("unknown format version {0} (this build reads version {FORMAT_VERSION})")]
    UnknownVersion(u8),
    #[error("malformed {what}: {source}")]
    Malformed {
        what: &'static str,
        source: postcard::Error,
    },
    #[error("malformed {what}: {extra} trailing bytes")]
    TrailingBytes { what: &'static str, extra: usize },
    #[error("cannot encode {what}: {source}")]
    Encode {
        what: &'static str,
        source: postcard::Error,
    },
}

fn type_name<T: ?Sized>() -> &'static str {
    let full = std::any::type_name::<T>();
    full.rsplit("::").next().unwrap_or(full)
}

/// Encode `value` with the current format version in front.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    // Room for a small row (a counter's state at one replica is about 20
    // bytes), so that the common case allocates once.
    let mut out = Vec::with_capacity(32);
    out.push(FORMAT_VERSION);
    encode_into(value, &mut out)?;
    Ok(out)
}

/// Append the encoding of `value`, without a version byte, to `out`. On an
/// error, `out` is left as it was.
pub fn encode_into<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> Result<(), CodecError> {
    let len = out.len();
    postcard::to_extend(value, Append(out))
        .map(|_| ())
        .map_err(|source| {
            out.truncate(len);
            CodecError::Encode {
                what: type_name::<T>(),
                source,
            }
        })
}

/// postcard writes into any `Extend<u8>`; this one appends to a borrowed
/// `Vec` in place, where `to_stdvec` built a second vector to copy from.
struct Append<'a>(&'a mut Vec<u8>);

impl Extend<u8> for Append<'_> {
    fn extend<I: IntoIterator<Item = u8>>(&mut self, bytes: I) {
        self.0.extend(bytes);
    }
}

/// Decode bytes written by [`encode`]. Any input, however malformed, gives a
/// value or an error; never a panic.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (&version, body) = bytes.split_first().ok_or(CodecError::Empty)?;
    match version {
        FORMAT_VERSION => decode_body(body),
        other => Err(CodecError::UnknownVersion(other)),
    }
}

/// Decode a body without a version byte; all of it must be consumed.
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, CodecError> {
    let what = type_name::<T>();
    let (value, rest) =
        postcard::take_from_bytes(body).map_err(|source| CodecError::Malformed { what, source })?;
    if !rest.is_empty() {
        return Err(CodecError::TrailingBytes {
            what,
            extra: rest.len(),
        });
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Dot, DotSet, ReplicaId};

    #[test]
    fn round_trip_and_version_check() {
        let s = DotSet::single(Dot::new(ReplicaId(3), 9));
        let bytes = encode(&s).unwrap();
        assert_eq!(bytes[0], FORMAT_VERSION);
        assert_eq!(decode::<DotSet>(&bytes).unwrap(), s);
        let mut wrong = bytes.clone();
        wrong[0] = 99;
        assert!(matches!(
            decode::<DotSet>(&wrong),
            Err(CodecError::UnknownVersion(99))
        ));
        assert!(matches!(decode::<DotSet>(&[]), Err(CodecError::Empty)));
        let mut long = bytes;
        long.push(0);
        assert!(matches!(
            decode::<DotSet>(&long),
            Err(CodecError::TrailingBytes { .. })
        ));
    }

    #[test]
    fn encode_into_appends_and_leaves_the_buffer_alone_on_error() {
        let s = DotSet::single(Dot::new(ReplicaId(3), 9));
        let mut out = vec![7, 7];
        encode_into(&s, &mut out).unwrap();
        assert_eq!(&out[..2], &[7, 7]);
        assert_eq!(&out[2..], &encode(&s).unwrap()[1..]);
        assert_eq!(decode_body::<DotSet>(&out[2..]).unwrap(), s);

        // A sequence of unknown length is one thing postcard cannot write;
        // this one gets a byte out first.
        struct Unsized;
        impl Serialize for Unsized {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                use serde::ser::SerializeTuple;
                let mut t = s.serialize_tuple(2)?;
                t.serialize_element(&5u8)?;
                t.serialize_element(&Seq)?;
                t.end()
            }
        }
        struct Seq;
        impl Serialize for Seq {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                use serde::ser::SerializeSeq;
                s.serialize_seq(None)?.end()
            }
        }
        let before = out.clone();
        assert!(matches!(
            encode_into(&Unsized, &mut out),
            Err(CodecError::Encode { .. })
        ));
        assert_eq!(out, before);
    }
}
