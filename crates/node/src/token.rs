//! Causal tokens. A token is a version vector, encoded with the binary codec and
//! then base64url: opaque to clients, a few dozen bytes for a few replicas.
//! A request carrying one waits until the node has applied everything it names.

use std::sync::Mutex;

use axum::http::HeaderValue;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use dotkv_api::ApiError;
use dotkv_crdt::VersionVector;

/// Longest token accepted, in characters: far above any real cluster's.
const MAX_TOKEN_CHARS: usize = 8 * 1024;

pub fn encode(vv: &VersionVector) -> String {
    // Encoding a version vector cannot fail: it is a list of integer pairs.
    let bytes = dotkv_crdt::encode(vv).unwrap_or_default();
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The token of the version vector encoded last, as a header value. Every
/// write of one commit group, and every read between two commits, answers
/// with the same version vector, so most answers reuse it instead of
/// encoding it again.
#[derive(Default)]
pub struct TokenCache {
    last: Mutex<Option<(VersionVector, HeaderValue)>>,
}

impl TokenCache {
    /// `vv`'s token as an `X-Dotkv-Token` value.
    pub fn header(&self, vv: &VersionVector) -> HeaderValue {
        if let Ok(last) = self.last.lock() {
            if let Some((v, h)) = last.as_ref() {
                if v == vv {
                    return h.clone();
                }
            }
        }
        // base64url is printable ASCII, so this never takes the fallback.
        let value =
            HeaderValue::from_str(&encode(vv)).unwrap_or_else(|_| HeaderValue::from_static(""));
        if let Ok(mut last) = self.last.lock() {
            *last = Some((vv.clone(), value.clone()));
        }
        value
    }
}

pub fn decode(token: &str) -> Result<VersionVector, ApiError> {
    let bad = |why: &str| ApiError::malformed(format!("bad causal token in X-Dotkv-Token: {why}"));
    if token.len() > MAX_TOKEN_CHARS {
        return Err(bad("too long"));
    }
    let bytes = URL_SAFE_NO_PAD
        .decode(token.trim().trim_end_matches('='))
        .map_err(|_| bad("not base64url"))?;
    dotkv_crdt::decode(&bytes).map_err(|e| bad(&e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use dotkv_crdt::ReplicaId;

    #[test]
    fn round_trip_and_garbage() {
        let vv: VersionVector = [(ReplicaId(u64::MAX - 3), 120_000), (ReplicaId(9), 1)]
            .into_iter()
            .collect();
        assert_eq!(decode(&encode(&vv)).unwrap(), vv);
        assert!(decode("!!!").is_err());
        assert!(decode("AAAA").is_err());
        assert!(decode(&"A".repeat(10_000)).is_err());
    }

    #[test]
    fn the_cache_answers_each_version_vector_with_its_own_token() {
        let cache = TokenCache::default();
        let a: VersionVector = [(ReplicaId(1), 5)].into_iter().collect();
        let b: VersionVector = [(ReplicaId(1), 6)].into_iter().collect();
        for vv in [&a, &a, &b, &a, &b, &b] {
            let h = cache.header(vv);
            assert_eq!(decode(h.to_str().unwrap()).unwrap(), *vv);
        }
    }
}
