//! Percent-encoding of keys in paths and of query strings. Keys are arbitrary
//! UTF-8, so everything but RFC 3986 unreserved characters is encoded; `.` is
//! encoded too, so that keys `.` and `..` are never read as dot segments.

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// Characters encoded in a path segment: all but `A-Z a-z 0-9 - _ ~`.
const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'~');

/// Characters encoded in a query name or value: all but `A-Z a-z 0-9 - . _ ~`.
const QUERY_COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// One path segment (a key), percent-encoded.
pub(crate) fn path_segment(segment: &str) -> String {
    utf8_percent_encode(segment, PATH_SEGMENT).to_string()
}

/// Builds `?a=1&b=2`, skipping absent parameters.
#[derive(Default)]
pub(crate) struct Query {
    text: String,
}

impl Query {
    pub(crate) fn new() -> Self {
        Query::default()
    }

    pub(crate) fn push(&mut self, name: &str, value: impl std::fmt::Display) -> &mut Self {
        self.text.push(if self.text.is_empty() { '?' } else { '&' });
        self.text.extend(utf8_percent_encode(name, QUERY_COMPONENT));
        self.text.push('=');
        let value = value.to_string();
        self.text
            .extend(utf8_percent_encode(&value, QUERY_COMPONENT));
        self
    }

    pub(crate) fn push_opt(
        &mut self,
        name: &str,
        value: Option<impl std::fmt::Display>,
    ) -> &mut Self {
        if let Some(value) = value {
            self.push(name, value);
        }
        self
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments() {
        assert_eq!(path_segment("abc-_~09"), "abc-_~09");
        assert_eq!(path_segment("a/b"), "a%2Fb");
        assert_eq!(path_segment(".."), "%2E%2E");
        assert_eq!(path_segment("a b?c#d%e"), "a%20b%3Fc%23d%25e");
        assert_eq!(path_segment("é"), "%C3%A9");
    }

    #[test]
    fn queries() {
        let mut q = Query::new();
        assert_eq!(q.as_str(), "");
        q.push("prefix", "a&b=c d")
            .push_opt("limit", Some(5))
            .push_opt("after", None::<&str>)
            .push("contains", "\"5\"");
        assert_eq!(q.as_str(), "?prefix=a%26b%3Dc%20d&limit=5&contains=%225%22");
    }
}
