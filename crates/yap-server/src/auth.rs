//! Who may connect: the API key (constant-time), the failure limit per address, origins.
//!
//! Invariant: a correct key is always accepted — the failure limit only changes how *failed*
//! attempts are answered (rate limited, refused before any upgrade), so one bad client behind a
//! NAT cannot lock out everyone else there.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, header};
use subtle::ConstantTimeEq;

use crate::limits::KeyedWindows;

/// The verdict on a presented key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The key is right.
    Ok,
    /// Missing or wrong key.
    Denied,
    /// Missing or wrong key, and this address failed too often: retry after this long.
    Blocked(Duration),
}

/// The API key check with its failure limit.
#[derive(Debug)]
pub struct AuthGuard {
    key: String,
    failures: Mutex<KeyedWindows>,
}

impl AuthGuard {
    /// A guard of `key`, allowing `max` failures per `window` per address.
    pub fn new(key: String, max: usize, window: Duration) -> Self {
        Self {
            key,
            failures: Mutex::new(KeyedWindows::new(max, window)),
        }
    }

    /// Checks a presented key from `addr`.
    pub fn check(&self, addr: &str, presented: Option<&str>) -> Verdict {
        let ok = !self.key.is_empty()
            && presented.is_some_and(|k| bool::from(k.as_bytes().ct_eq(self.key.as_bytes())));
        if ok {
            return Verdict::Ok;
        }
        let now = Instant::now();
        let Ok(mut f) = self.failures.lock() else {
            return Verdict::Denied;
        };
        if let Some(wait) = f.blocked_for(addr, now) {
            return Verdict::Blocked(wait);
        }
        f.record(addr, now);
        Verdict::Denied
    }
}

/// The key a client presents: `api_key` query parameter, `X-API-Key`, or
/// `Authorization: Bearer KEY`.
pub fn presented_key(headers: &HeaderMap, query: &HashMap<String, String>) -> Option<String> {
    if let Some(k) = query.get("api_key") {
        return Some(k.clone());
    }
    if let Some(k) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return Some(k.to_owned());
    }
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(|k| k.trim().to_owned())
}

/// Whether the request's `Origin` is allowed: none (non-browser clients), or exactly one that is
/// in the list (an empty list allows any). Two `Origin` headers are refused.
pub fn origin_allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    let mut origins = headers.get_all(header::ORIGIN).iter();
    let (first, second) = (origins.next(), origins.next());
    if second.is_some() {
        return false;
    }
    let allowed: Vec<&str> = allowed
        .iter()
        .map(|o| o.trim().trim_end_matches('/'))
        .filter(|o| !o.is_empty())
        .collect();
    match first {
        None => true,
        Some(_) if allowed.is_empty() => true,
        Some(o) => o.to_str().is_ok_and(|o| {
            allowed
                .iter()
                .any(|a| a.eq_ignore_ascii_case(o.trim_end_matches('/')))
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn a_correct_key_is_never_refused_after_failures() {
        let g = AuthGuard::new("secret".into(), 3, Duration::from_secs(60));
        for _ in 0..3 {
            assert_eq!(g.check("1.2.3.4", Some("nope")), Verdict::Denied);
        }
        assert!(matches!(
            g.check("1.2.3.4", Some("nope")),
            Verdict::Blocked(_)
        ));
        assert!(matches!(g.check("1.2.3.4", None), Verdict::Blocked(_)));
        assert_eq!(g.check("1.2.3.4", Some("secret")), Verdict::Ok);
        assert_eq!(g.check("5.6.7.8", Some("nope")), Verdict::Denied);
        assert_eq!(
            AuthGuard::new(String::new(), 3, Duration::from_secs(1)).check("x", Some("")),
            Verdict::Denied
        );
    }

    #[test]
    fn keys_from_query_header_or_bearer() {
        let mut h = HeaderMap::new();
        let q: HashMap<String, String> = [("api_key".to_owned(), "a".to_owned())].into();
        assert_eq!(presented_key(&h, &q).as_deref(), Some("a"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer b"));
        assert_eq!(presented_key(&h, &HashMap::new()).as_deref(), Some("b"));
        h.insert("x-api-key", HeaderValue::from_static("c"));
        assert_eq!(presented_key(&h, &HashMap::new()).as_deref(), Some("c"));
    }

    #[test]
    fn origins() {
        let allowed = vec!["https://app.example".to_owned()];
        let mut h = HeaderMap::new();
        assert!(origin_allowed(&h, &allowed));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://app.example/"),
        );
        assert!(origin_allowed(&h, &allowed));
        h.append(
            header::ORIGIN,
            HeaderValue::from_static("https://evil.example"),
        );
        assert!(!origin_allowed(&h, &allowed), "two Origin headers");
        assert!(
            !origin_allowed(&h, &[]),
            "two Origin headers even when any is allowed"
        );
        let mut h = HeaderMap::new();
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://evil.example"),
        );
        assert!(!origin_allowed(&h, &allowed));
        assert!(origin_allowed(&h, &[String::new()]));
    }
}
