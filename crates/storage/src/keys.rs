//! Row key layouts. Every layout sorts the way it is scanned.

use crate::model::ObjectKind;

/// `objects` row: kind tag, then the key's bytes. Keys of one kind sort together
/// and by key, so prefix listing is one range scan.
pub fn object(kind: ObjectKind, key: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + key.len());
    out.push(kind.tag());
    out.extend_from_slice(key.as_bytes());
    out
}

/// Decode an `objects` row key.
pub fn parse_object(raw: &[u8]) -> Option<(ObjectKind, &str)> {
    let (&tag, rest) = raw.split_first()?;
    Some((ObjectKind::from_tag(tag)?, std::str::from_utf8(rest).ok()?))
}

/// The prefix of every `set_elems` row of one set: the key's length (u16, big
/// endian), then the key. The length keeps set "a" from running into set "ab".
pub fn set_prefix(key: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + key.len());
    // Keys are at most 1024 bytes (checked by the API layer), so they fit.
    out.extend_from_slice(&(key.len().min(u16::MAX as usize) as u16).to_be_bytes());
    out.extend_from_slice(key.as_bytes());
    out
}

/// `set_elems` row: the set's prefix, then the element's canonical bytes.
pub fn set_elem(key: &str, elem: &[u8]) -> Vec<u8> {
    let mut out = set_prefix(key);
    out.extend_from_slice(elem);
    out
}

/// `deltas` row: origin and first sequence number, both big endian, so one
/// origin's groups are contiguous and in order.
pub fn delta(origin: u64, first: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&origin.to_be_bytes());
    out[8..].copy_from_slice(&first.to_be_bytes());
    out
}

/// The smallest key greater than every key that starts with `prefix`, if any.
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

pub const META_REPLICA: &[u8] = b"replica_uuid";
pub const META_VV: &[u8] = b"version_vector";
pub const META_HLC: &[u8] = b"hlc_high_water";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_do_not_collide() {
        let a = set_elem("a", b"\x01b");
        assert!(!a.starts_with(&set_prefix("ab")));
        assert!(a.starts_with(&set_prefix("a")));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
        let k = object(ObjectKind::Flag, "x/y");
        assert_eq!(parse_object(&k), Some((ObjectKind::Flag, "x/y")));
    }
}
