//! The simulator's own check of `SDK-HMAC-SHA256` signatures and IAM tokens, written apart from
//! the client's signer (it shares only the hash primitives) so that a mistake in one is caught
//! by the other.

use hmac::{KeyInit, Mac};
use http::HeaderMap;
use sha2::{Digest, Sha256};

/// Why a request was not authenticated. The text goes into the gateway's error message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthFailure {
    /// No Authorization or X-Auth-Token header.
    Missing,
    /// The Authorization header is not `SDK-HMAC-SHA256 Access=…, SignedHeaders=…, Signature=…`.
    Malformed(String),
    /// The access key is not known.
    UnknownAccessKey,
    /// The signature does not match.
    SignatureMismatch,
    /// X-Sdk-Date missing, unsigned, unreadable or too far from now.
    BadDate(String),
    /// A temporary key without its (signed) security token, or a wrong token.
    BadSecurityToken,
    /// Temporary credentials past their expiry.
    ExpiredSecurityToken,
    /// The IAM token is not known.
    UnknownToken,
    /// The IAM token has expired: it must be renewed.
    ExpiredToken,
}

impl AuthFailure {
    /// The gateway error code for this failure.
    pub fn code(&self) -> &'static str {
        match self {
            AuthFailure::ExpiredToken => "APIGW.0307",
            _ => "APIGW.0301",
        }
    }

    /// The gateway error message.
    pub fn message(&self) -> String {
        match self {
            AuthFailure::Missing => {
                "Incorrect IAM authentication information: Authorization not found".into()
            }
            AuthFailure::Malformed(why) => format!("Incorrect IAM authentication information: {why}"),
            AuthFailure::UnknownAccessKey => "Incorrect IAM authentication information: ak not found".into(),
            AuthFailure::SignatureMismatch => {
                "Incorrect IAM authentication information: verify aksk signature fail".into()
            }
            AuthFailure::BadDate(why) => format!("Incorrect IAM authentication information: {why}"),
            AuthFailure::BadSecurityToken => {
                "Incorrect IAM authentication information: security token invalid".into()
            }
            AuthFailure::ExpiredSecurityToken => {
                "Incorrect IAM authentication information: the security token has expired".into()
            }
            AuthFailure::UnknownToken => "Incorrect IAM authentication information: verify token fail".into(),
            AuthFailure::ExpiredToken => "The token must be updated.".into(),
        }
    }
}

/// The parts of the `Authorization` header.
#[derive(Debug, PartialEq, Eq)]
pub struct AuthorizationHeader {
    /// Access key.
    pub access: String,
    /// Signed header names, as listed.
    pub signed_headers: Vec<String>,
    /// Hex signature.
    pub signature: String,
}

/// Parses `SDK-HMAC-SHA256 Access=AK, SignedHeaders=a;b, Signature=hex`.
pub fn parse_authorization(value: &str) -> Result<AuthorizationHeader, AuthFailure> {
    let rest = value
        .strip_prefix("SDK-HMAC-SHA256 ")
        .ok_or_else(|| AuthFailure::Malformed("unsupported signing algorithm".into()))?;
    let (mut access, mut signed, mut signature) = (None, None, None);
    for part in rest.split(", ") {
        match part.split_once('=') {
            Some(("Access", v)) => access = Some(v.to_string()),
            Some(("SignedHeaders", v)) => signed = Some(v.split(';').map(str::to_string).collect::<Vec<_>>()),
            Some(("Signature", v)) => signature = Some(v.to_string()),
            _ => {
                return Err(AuthFailure::Malformed(format!(
                    "unexpected part {part:?} in Authorization"
                )));
            }
        }
    }
    match (access, signed, signature) {
        (Some(access), Some(signed_headers), Some(signature)) if !access.is_empty() => {
            Ok(AuthorizationHeader {
                access,
                signed_headers,
                signature,
            })
        }
        _ => Err(AuthFailure::Malformed(
            "Authorization lacks Access, SignedHeaders or Signature".into(),
        )),
    }
}

/// Encodes a string the way the gateway canonicalises it (RFC 3986 unreserved kept).
fn uri_escape(input: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = Vec::with_capacity(input.len() * 3);
    for &byte in input.as_bytes() {
        match byte {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => out.push(byte),
            _ => {
                out.push(b'%');
                out.push(HEX[(byte >> 4) as usize]);
                out.push(HEX[(byte & 15) as usize]);
            }
        }
    }
    String::from_utf8(out).expect("ASCII")
}

/// Decodes `%XX` escapes of a path or query component.
fn uri_unescape(input: &str) -> String {
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(v) = u8::from_str_radix(&input[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Rebuilds the canonical request of a received request from its raw parts.
pub fn canonical_request_of(
    method: &str,
    raw_path: &str,
    raw_query: Option<&str>,
    headers: &HeaderMap,
    signed_headers: &[String],
    body: &[u8],
) -> String {
    // Path: decode, split on '/', escape each segment, and make it end with '/'.
    let decoded = uri_unescape(raw_path);
    let mut uri = decoded.split('/').map(uri_escape).collect::<Vec<_>>().join("/");
    if !uri.ends_with('/') {
        uri.push('/');
    }
    // Query: decode each pair, escape again, sort by key then value.
    let mut params: Vec<(String, String)> = raw_query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (uri_escape(&uri_unescape(k)), uri_escape(&uri_unescape(v)))
        })
        .collect();
    params.sort();
    let query = params
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    // Headers: in the order of SignedHeaders as the client listed them (it must list them sorted).
    let mut lines = String::new();
    for name in signed_headers {
        let value = headers
            .get(name.as_str())
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .trim();
        lines += &format!("{name}:{value}\n");
    }
    let payload: String = Sha256::digest(body).iter().map(|b| format!("{b:02x}")).collect();
    [method, &uri, &query, &lines, &signed_headers.join(";"), &payload].join("\n")
}

/// The signature the gateway expects for a canonical request.
pub fn expected_signature(secret_key: &str, sdk_date: &str, canonical: &str) -> String {
    let hashed: String = Sha256::digest(canonical.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let to_sign = format!("SDK-HMAC-SHA256\n{sdk_date}\n{hashed}");
    let mut mac = hmac::Hmac::<Sha256>::new_from_slice(secret_key.as_bytes()).expect("any key length");
    mac.update(to_sign.as_bytes());
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Constant-time comparison of two signatures.
pub fn same_signature(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Parses an `X-Sdk-Date` value.
pub fn parse_sdk_date(value: &str) -> Option<jiff::Timestamp> {
    jiff::fmt::strtime::parse("%Y%m%dT%H%M%SZ", value)
        .ok()?
        .to_datetime()
        .ok()?
        .to_zoned(jiff::tz::TimeZone::UTC)
        .ok()
        .map(|z| z.timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The simulator's verifier agrees with Huawei's published vector on its own.
    #[test]
    fn verifies_the_published_vector() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", "application/json".parse().unwrap());
        headers.insert("host", "service.region.example.com".parse().unwrap());
        headers.insert("x-sdk-date", "20191115T033655Z".parse().unwrap());
        let signed: Vec<String> = ["content-type", "host", "x-sdk-date"]
            .iter()
            .map(ToString::to_string)
            .collect();
        let canonical = canonical_request_of(
            "GET",
            "/v1/77b6a44cba5143ab91d13ab9a8ff44fd/vpcs",
            Some("marker=13551d6b-755d-4757-b956-536f674975c0&limit=2"),
            &headers,
            &signed,
            b"",
        );
        assert_eq!(
            expected_signature(
                "MFyfvK41ba2giqM7Uio6PznpdUKGpownRZlmVmHc",
                "20191115T033655Z",
                &canonical
            ),
            "7be6668032f70418fcc22abc52071e57aff61b84a1d2381bb430d6870f4f6ebe"
        );
    }

    #[test]
    fn parses_authorization() {
        let h =
            parse_authorization("SDK-HMAC-SHA256 Access=AK, SignedHeaders=host;x-sdk-date, Signature=abc")
                .unwrap();
        assert_eq!(h.access, "AK");
        assert_eq!(h.signed_headers, vec!["host", "x-sdk-date"]);
        assert!(parse_authorization("AWS4-HMAC-SHA256 Credential=x").is_err());
        assert!(parse_authorization("SDK-HMAC-SHA256 Access=AK").is_err());
    }

    #[test]
    fn dates() {
        assert_eq!(
            parse_sdk_date("20191115T033655Z").unwrap().to_string(),
            "2019-11-15T03:36:55Z"
        );
        assert!(parse_sdk_date("2019-11-15").is_none());
    }
}
