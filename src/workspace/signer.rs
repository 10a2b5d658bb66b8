//! AK/SK request signing, algorithm `SDK-HMAC-SHA256`, as Huawei Cloud's API gateway and SDKs do
//! it. Pure functions: the caller supplies the time and the headers to sign.

use hmac::{KeyInit, Mac};
use sha2::{Digest, Sha256};

/// The algorithm name in the Authorization header and the string to sign.
pub const ALGORITHM: &str = "SDK-HMAC-SHA256";
/// Name of the signed timestamp header.
pub const DATE_HEADER: &str = "X-Sdk-Date";
/// `X-Sdk-Date` format: `YYYYMMDDTHHMMSSZ`, UTC.
pub const DATE_FORMAT: &str = "%Y%m%dT%H%M%SZ";

/// What a signature covers.
#[derive(Debug, Clone)]
pub struct SigningRequest<'a> {
    /// HTTP method, upper case.
    pub method: &'a str,
    /// The path's segments, decoded (they are percent-encoded here).
    pub path: &'a str,
    /// Query parameters, decoded, in any order.
    pub query: &'a [(String, String)],
    /// The headers to sign (name in any case, value as sent). Must include `X-Sdk-Date`.
    pub headers: &'a [(String, String)],
    /// The request body.
    pub body: &'a [u8],
}

/// Percent-encodes everything but the unreserved characters `A-Z a-z 0-9 - _ . ~`, upper-case hex.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The canonical URI: each segment of the decoded path encoded, joined with `/`, ending in `/`.
pub fn canonical_uri(path: &str) -> String {
    let mut uri: String = path.split('/').map(percent_encode).collect::<Vec<_>>().join("/");
    if !uri.ends_with('/') {
        uri.push('/');
    }
    uri
}

/// The canonical query: keys sorted, a repeated key giving one `k=v` per value (values sorted).
pub fn canonical_query(query: &[(String, String)]) -> String {
    let mut pairs: Vec<(String, String)> = query
        .iter()
        .map(|(k, v)| (percent_encode(k), percent_encode(v)))
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// Lower-case names of the signed headers, sorted and de-duplicated.
pub fn signed_header_names(headers: &[(String, String)]) -> Vec<String> {
    let mut names: Vec<String> = headers.iter().map(|(k, _)| k.to_ascii_lowercase()).collect();
    names.sort();
    names.dedup();
    names
}

/// The canonical request (its lines joined with `\n`).
pub fn canonical_request(req: &SigningRequest<'_>) -> String {
    let names = signed_header_names(req.headers);
    let mut header_block = String::new();
    for name in &names {
        let value = req
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
            .unwrap_or_default();
        header_block.push_str(name);
        header_block.push(':');
        header_block.push_str(value);
        header_block.push('\n');
    }
    format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        req.method,
        canonical_uri(req.path),
        canonical_query(req.query),
        header_block,
        names.join(";"),
        hex::encode(Sha256::digest(req.body))
    )
}

/// The string to sign for a canonical request at `sdk_date`.
pub fn string_to_sign(sdk_date: &str, canonical_request: &str) -> String {
    format!(
        "{ALGORITHM}\n{sdk_date}\n{}",
        hex::encode(Sha256::digest(canonical_request.as_bytes()))
    )
}

/// Lower-case hex HMAC-SHA256 of `message` keyed with the secret key.
pub fn hmac_hex(secret_key: &str, message: &str) -> String {
    let mut mac =
        hmac::Hmac::<Sha256>::new_from_slice(secret_key.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(message.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Signs `req` and returns the `Authorization` header value. `req.headers` must contain the
/// `X-Sdk-Date` header whose value is `sdk_date`.
pub fn authorization(access_key: &str, secret_key: &str, sdk_date: &str, req: &SigningRequest<'_>) -> String {
    let signature = hmac_hex(secret_key, &string_to_sign(sdk_date, &canonical_request(req)));
    format!(
        "{ALGORITHM} Access={access_key}, SignedHeaders={}, Signature={signature}",
        signed_header_names(req.headers).join(";")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// Huawei Cloud's API signing guide.
    #[test]
    fn huawei_signing_guide_vector() {
        let query = q(&[("limit", "2"), ("marker", "13551d6b-755d-4757-b956-536f674975c0")]);
        let headers = q(&[
            ("Content-Type", "application/json"),
            ("Host", "service.region.example.com"),
            ("X-Sdk-Date", "20191115T033655Z"),
        ]);
        let req = SigningRequest {
            method: "GET",
            path: "/v1/77b6a44cba5143ab91d13ab9a8ff44fd/vpcs",
            query: &query,
            headers: &headers,
            body: b"",
        };
        let canonical = canonical_request(&req);
        assert_eq!(
            canonical,
            "GET\n/v1/77b6a44cba5143ab91d13ab9a8ff44fd/vpcs/\nlimit=2&marker=13551d6b-755d-4757-b956-536f674975c0\n\
             content-type:application/json\nhost:service.region.example.com\nx-sdk-date:20191115T033655Z\n\n\
             content-type;host;x-sdk-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            hex::encode(Sha256::digest(canonical.as_bytes())),
            "b25362e603ee30f4f25e7858e8a7160fd36e803bb2dfe206278659d71a9bcd7a"
        );
        let auth = authorization(
            "QTWAOYTTINDUT2QVKYUC",
            "MFyfvK41ba2giqM7Uio6PznpdUKGpownRZlmVmHc",
            "20191115T033655Z",
            &req,
        );
        assert_eq!(
            auth,
            "SDK-HMAC-SHA256 Access=QTWAOYTTINDUT2QVKYUC, SignedHeaders=content-type;host;x-sdk-date, \
             Signature=7be6668032f70418fcc22abc52071e57aff61b84a1d2381bb430d6870f4f6ebe"
        );
    }

    /// huaweicloud-sdk-go-v3's signer tests: GET signing only x-sdk-date.
    #[test]
    fn go_sdk_get_vector() {
        let query = q(&[("limit", "1")]);
        let headers = q(&[("X-Sdk-Date", "20060102T150405Z")]);
        let req = SigningRequest {
            method: "GET",
            path: "/path",
            query: &query,
            headers: &headers,
            body: b"",
        };
        assert_eq!(
            canonical_request(&req),
            "GET\n/path/\nlimit=1\nx-sdk-date:20060102T150405Z\n\nx-sdk-date\n\
             e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            hmac_hex(
                "SecretKey",
                &string_to_sign("20060102T150405Z", &canonical_request(&req))
            ),
            "5a2ce64c865e0e6046321c6f3d5a77ba8413eeaf355c3166c03d58d02ac79624"
        );
    }

    /// huaweicloud-sdk-go-v3's signer tests: POST with a JSON body and a trailing newline.
    #[test]
    fn go_sdk_post_vector() {
        let query = q(&[("key", "value")]);
        let headers = q(&[("X-Sdk-Date", "20060102T150405Z")]);
        let body = b"{\"Name\":\"test\",\"Id\":1}\n";
        let req = SigningRequest {
            method: "POST",
            path: "/path",
            query: &query,
            headers: &headers,
            body,
        };
        let auth = authorization("AccessKey", "SecretKey", "20060102T150405Z", &req);
        assert_eq!(
            auth,
            "SDK-HMAC-SHA256 Access=AccessKey, SignedHeaders=x-sdk-date, \
             Signature=cecc2af119b18ab70b4d094c0750f3b42c02f254903179a0fc2cc72fc9db4f59"
        );
    }

    #[test]
    fn encoding_rules() {
        assert_eq!(percent_encode("a b/ü~_.-Z9"), "a%20b%2F%C3%BC~_.-Z9");
        assert_eq!(canonical_uri("/"), "/");
        assert_eq!(
            canonical_uri("/v2/p/desktops/d e/remote-assistance"),
            "/v2/p/desktops/d%20e/remote-assistance/"
        );
        assert_eq!(
            canonical_query(&q(&[("b", "2"), ("a", "z"), ("a", "y")])),
            "a=y&a=z&b=2"
        );
        assert_eq!(canonical_query(&[]), "");
    }
}
