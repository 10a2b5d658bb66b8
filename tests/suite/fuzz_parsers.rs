//! Property tests (fuzzing) of the cloud client's response parser and the signer's
//! canonicalisation. The default run is short (the README's test command); set PROPTEST_CASES
//! for a longer one, e.g. `PROPTEST_CASES=200000 cargo test --release --test suite fuzz_parsers::`.

use proptest::prelude::*;
use workspace_assist::simulator::auth;
use workspace_assist::workspace::parse_error_body;
use workspace_assist::workspace::signer::{self, SigningRequest};

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(500),
        ..ProptestConfig::default()
    }
}

/// JSON-ish bodies: real error shapes with arbitrary values, nested objects, and junk.
fn body() -> impl Strategy<Value = Vec<u8>> {
    let text = "[ -~\\u{80}-\\u{2FF}]{0,40}";
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..2048),
        (text, text).prop_map(|(c, m)| serde_json::json!({ "error_code": c, "error_msg": m }).to_string().into_bytes()),
        (text, text).prop_map(|(c, m)| serde_json::json!({ "error": { "code": c, "message": m } }).to_string().into_bytes()),
        (text, any::<i64>()).prop_map(|(m, n)| serde_json::json!({ "code": n, "message": m, "x": [1, {"y": null}] }).to_string().into_bytes()),
        text.prop_map(|t| format!("<html><body>{t}</body></html>").into_bytes()),
        // Messages, details and codes far beyond every bound.
        ("[a-zé ]{1,8}", 1usize..40_000, 1usize..600).prop_map(|(unit, times, code_times)| {
            let long = unit.repeat(times);
            serde_json::json!({ "error_code": "W".repeat(code_times), "error_msg": long, "error_detail": long, "encoded_authorization_message": long.repeat(3) }).to_string().into_bytes()
        }),
        ("[ -~]{1,8}", 600usize..5_000).prop_map(|(unit, times)| unit.repeat(times).into_bytes()),
        (text, 0usize..40).prop_map(|(t, cut)| {
            let full = serde_json::json!({ "error_code": t, "error_msg": t }).to_string();
            full.as_bytes()[..cut.min(full.len())].to_vec()
        }),
    ]
}

proptest! {
    #![proptest_config(config())]

    /// Any body parses without a panic, and what it keeps is bounded.
    #[test]
    fn error_bodies_never_panic(body in body()) {
        use workspace_assist::workspace::{MAX_ENCODED_MESSAGE_BYTES, MAX_ERROR_CODE_BYTES, MAX_ERROR_TEXT_BYTES};
        let parsed = parse_error_body(&body);
        let within = |field: &Option<String>, max: usize| field.as_ref().is_none_or(|f| f.len() <= max);
        prop_assert!(within(&parsed.message, MAX_ERROR_TEXT_BYTES), "message bounded: {}", parsed.message.as_ref().map_or(0, String::len));
        prop_assert!(within(&parsed.detail, MAX_ERROR_TEXT_BYTES), "detail bounded");
        prop_assert!(within(&parsed.code, MAX_ERROR_CODE_BYTES), "code bounded");
        prop_assert!(within(&parsed.encoded_authorization_message, MAX_ENCODED_MESSAGE_BYTES), "encoded message bounded");
        if parsed.structured {
            prop_assert!(parsed.code.is_some() || parsed.message.is_some());
        }
    }

    /// The client's canonical request and the simulator's independent one agree for any path,
    /// query and header values, so any request the client signs verifies.
    #[test]
    fn client_and_simulator_canonicalise_alike(
        segments in proptest::collection::vec("[ -~\\u{80}-\\u{3FF}]{1,12}", 1..5),
        query in proptest::collection::vec(("[a-zA-Z0-9_ %+&=~]{1,8}", "[ -~]{0,8}"), 0..4),
        date in "20[0-9]{2}[01][0-9][0-3][0-9]T[0-2][0-9][0-5][0-9][0-5][0-9]Z",
        project in "[ -~]{1,20}",
        body in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        // "." and ".." are not IDs the client sends (it and the CRD refuse them: a URL collapses
        // them, so the path sent would differ from the path signed).
        let segments: Vec<String> = segments.into_iter().map(|s| s.replace('/', "_")).filter(|s| s != "." && s != "..").collect();
        prop_assume!(!segments.is_empty());
        let path = format!("/{}", segments.join("/"));
        let headers = vec![("Host".to_string(), "example.com".to_string()), ("X-Sdk-Date".to_string(), date.clone()), ("X-Project-Id".to_string(), project.trim().to_string())];
        let req = SigningRequest { method: "GET", path: &path, query: &query, headers: &headers, body: &body };
        let client_side = signer::canonical_request(&req);

        // What goes on the wire: each segment percent-encoded, then set on the URL as the client
        // does (the URL, not the encoder, decides the path sent).
        let encoded = format!("/{}", segments.iter().map(|s| signer::percent_encode(s)).collect::<Vec<_>>().join("/"));
        let mut url = url::Url::parse("https://example.com/").unwrap();
        url.set_path(&encoded);
        let raw_path = url.path().to_string();
        let raw_query = query.iter().map(|(k, v)| format!("{}={}", signer::percent_encode(k), signer::percent_encode(v))).collect::<Vec<_>>().join("&");
        let mut map = http::HeaderMap::new();
        map.insert("host", "example.com".parse().unwrap());
        map.insert("x-sdk-date", date.parse().unwrap());
        map.insert("x-project-id", project.trim().parse().unwrap());
        let signed: Vec<String> = signer::signed_header_names(&headers);
        let server_side = auth::canonical_request_of("GET", &raw_path, (!raw_query.is_empty()).then_some(raw_query.as_str()), &map, &signed, &body);
        prop_assert_eq!(client_side, server_side);
    }
}
