//! Bounds on text that the cloud (or anything outside the operator) provides before it is
//! written to Kubernetes: status fields, condition messages and Events. An error body can be as
//! large as the client reads (1 MiB), and a status that large is refused by the API server, so
//! every such string is cut, visibly.

use std::borrow::Cow;

/// Most bytes of a cloud-provided message kept in status, conditions and Events.
pub const MAX_MESSAGE_BYTES: usize = 1024;

/// Most bytes of a short cloud-provided value (codes, IDs, names, times, enum values).
pub const MAX_SHORT_BYTES: usize = 256;

/// Most bytes of an encoded authorization message (it is decoded whole by IAM, so it gets more
/// room; one larger than this cannot be decoded from status anyway and is cut visibly).
pub const MAX_ENCODED_MESSAGE_BYTES: usize = 4096;

/// What a cut text ends with.
pub const TRUNCATION_MARKER: &str = "…[truncated]";

/// `text` when it fits in `max_bytes`; else its longest prefix (on a character boundary) that
/// fits together with [`TRUNCATION_MARKER`], followed by the marker.
pub fn bounded(text: &str, max_bytes: usize) -> Cow<'_, str> {
    if text.len() <= max_bytes {
        return Cow::Borrowed(text);
    }
    let mut cut = max_bytes.saturating_sub(TRUNCATION_MARKER.len());
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    Cow::Owned(format!("{}{TRUNCATION_MARKER}", &text[..cut]))
}

/// [`bounded`] for an owned optional value.
pub fn bounded_opt(text: Option<&str>, max_bytes: usize) -> Option<String> {
    text.map(|t| bounded(t, max_bytes).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_kept_and_long_text_cut_visibly_on_a_char_boundary() {
        assert_eq!(bounded("abc", 10), "abc");
        let long = "é".repeat(2000);
        let cut = bounded(&long, MAX_MESSAGE_BYTES);
        assert!(cut.len() <= MAX_MESSAGE_BYTES, "{}", cut.len());
        assert!(cut.ends_with(TRUNCATION_MARKER));
        assert!(
            cut.chars().count() <= MAX_MESSAGE_BYTES,
            "within the CRD's maxLength (characters) too"
        );
        assert_eq!(
            bounded(&"x".repeat(1024), 1024).len(),
            1024,
            "exactly the bound is not cut"
        );
    }
}
