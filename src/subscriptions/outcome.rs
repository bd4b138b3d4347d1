//! What a delivery's answer means, in the runner's terms ([`JobError`]):
//!
//! | answer | verdict | runner |
//! |---|---|---|
//! | 2xx | delivered | ack, inbox |
//! | 408, 409, 425, 429, 503 | reported failure ([`JobError::Failed`]) | 60 s tier |
//! | any other 5xx; timeout; refused, reset or TLS-failed connection | error ([`JobError::Error`]) | 120 s tier |
//! | any other status: 1xx, 3xx (redirects are not followed), other 4xx | refusal ([`JobError::Invalid`]) | parked at once |
//!
//! An [`Outcome`] keeps the status, the reason and the first bytes of the response body for
//! the failure record, and the `Retry-After` of a 429 or 503 (seconds or an HTTP date,
//! bounded by `max_retry_after_secs`) for the subscription's pause.

use std::time::{Duration, SystemTime};

use reqwest::{
    StatusCode,
    header::{HeaderMap, RETRY_AFTER},
};

use crate::jobs::JobError;

/// Which way the runner goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Done: ack.
    Delivered,
    /// The subscriber reported it cannot take it now: the failure tier.
    Failed,
    /// The delivery broke: the error tier.
    Error,
    /// The subscriber refused it for good: parked.
    Invalid,
}

/// The classified result of one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Outcome {
    /// Which way the runner goes.
    pub verdict: Verdict,
    /// The metrics label: `delivered`, `failed`, `error`, `invalid`, `timeout`, `connect`
    /// or `transport`.
    pub kind: &'static str,
    /// The response status, when a response came.
    pub status: Option<u16>,
    /// Why, in a sentence (status and reason phrase, or the transport error).
    pub reason: String,
    /// The first `max_response_bytes` of the response body, as text (invalid UTF-8 and
    /// control characters replaced).
    pub body: String,
    /// How long the subscriber asked to be left alone (429/503 `Retry-After`), bounded.
    pub retry_after: Option<Duration>,
}

/// Parses a `Retry-After` value: delay-seconds or an HTTP date (RFC 9110 section 10.2.3),
/// measured from `now`; a date in the past is zero. `None` when it parses as neither.
pub(crate) fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // More digits than a u64 holds is "a very long time".
        return Some(Duration::from_secs(value.parse().unwrap_or(u64::MAX)));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

fn text_of(body: &[u8]) -> String {
    String::from_utf8_lossy(body)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

impl Outcome {
    /// Classifies a response: its status, headers and the first bytes of its body.
    pub(crate) fn from_response(
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
        max_retry_after: Duration,
        now: SystemTime,
    ) -> Self {
        let code = status.as_u16();
        let (verdict, kind) = match code {
            200..=299 => (Verdict::Delivered, "delivered"),
            408 | 409 | 425 | 429 | 503 => (Verdict::Failed, "failed"),
            500..=599 => (Verdict::Error, "error"),
            _ => (Verdict::Invalid, "invalid"),
        };
        let retry_after = match code {
            429 | 503 => headers
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, now))
                .map(|d| d.min(max_retry_after)),
            _ => None,
        };
        let phrase = status.canonical_reason().unwrap_or("");
        let reason = match (verdict, code) {
            (Verdict::Invalid, 300..=399) => {
                format!("subscriber answered {code} {phrase} (redirects are not followed)")
            }
            _ => format!("subscriber answered {code} {phrase}")
                .trim_end()
                .to_owned(),
        };
        Self {
            verdict,
            kind,
            status: Some(code),
            reason,
            body: text_of(body),
            retry_after,
        }
    }

    /// Classifies a delivery that got no (complete) response: always the error tier.
    pub(crate) fn from_transport(error: &reqwest::Error, timeout: Duration) -> Self {
        let (kind, reason) = if error.is_timeout() {
            (
                "timeout",
                format!("no complete answer within {} ms", timeout.as_millis()),
            )
        } else if error.is_connect() {
            ("connect", format!("cannot connect: {}", chain(error)))
        } else {
            ("transport", format!("delivery failed: {}", chain(error)))
        };
        Self {
            verdict: Verdict::Error,
            kind,
            status: error.status().map(|s| s.as_u16()),
            reason,
            body: String::new(),
            retry_after: None,
        }
    }

    /// What the handler returns: `Ok` when delivered, else the error the runner routes by,
    /// with the reason and the body's first bytes as its text.
    pub(crate) fn into_result(self) -> Result<(), JobError> {
        let verdict = self.verdict;
        let text = self.into_text();
        match verdict {
            Verdict::Delivered => Ok(()),
            Verdict::Failed => Err(JobError::Failed(text)),
            Verdict::Error => Err(JobError::Error(text)),
            Verdict::Invalid => Err(JobError::Invalid(text)),
        }
    }
}

impl Outcome {
    /// The reason and the first bytes of the body, as the failure record keeps them.
    pub(crate) fn into_text(self) -> String {
        if self.body.is_empty() {
            self.reason
        } else {
            format!("{}: {}", self.reason, self.body)
        }
    }
}

/// An error and its sources, `: `-joined (reqwest's own text omits the cause).
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let s = e.to_string();
        if !text.contains(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        source = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    const MAX: Duration = Duration::from_secs(300);

    fn classify(code: u16) -> Verdict {
        let status = StatusCode::from_u16(code).expect("status");
        Outcome::from_response(status, &HeaderMap::new(), b"", MAX, SystemTime::now()).verdict
    }

    #[test]
    fn every_status_class_goes_its_way() {
        for code in [200, 201, 202, 204, 299] {
            assert_eq!(classify(code), Verdict::Delivered, "{code}");
        }
        for code in [408, 409, 425, 429, 503] {
            assert_eq!(classify(code), Verdict::Failed, "{code}");
        }
        for code in [500, 501, 502, 504, 507, 599] {
            assert_eq!(classify(code), Verdict::Error, "{code}");
        }
        for code in [
            100, 101, 300, 301, 302, 304, 307, 308, 400, 401, 403, 404, 410, 422, 499,
        ] {
            assert_eq!(classify(code), Verdict::Invalid, "{code}");
        }
    }

    #[test]
    fn results_map_to_the_runner_errors_with_reason_and_body() {
        let now = SystemTime::now();
        let out = Outcome::from_response(
            StatusCode::NOT_FOUND,
            &HeaderMap::new(),
            b"no such\nroute",
            MAX,
            now,
        );
        assert_eq!(out.status, Some(404));
        assert_eq!(
            out.into_result(),
            Err(JobError::Invalid(
                "subscriber answered 404 Not Found: no such route".into()
            ))
        );
        let out = Outcome::from_response(
            StatusCode::MOVED_PERMANENTLY,
            &HeaderMap::new(),
            b"",
            MAX,
            now,
        );
        assert!(
            out.reason.contains("redirects are not followed"),
            "{}",
            out.reason
        );
        let out = Outcome::from_response(StatusCode::BAD_GATEWAY, &HeaderMap::new(), b"", MAX, now);
        assert!(
            matches!(out.into_result(), Err(JobError::Error(r)) if r == "subscriber answered 502 Bad Gateway")
        );
        let out = Outcome::from_response(StatusCode::NO_CONTENT, &HeaderMap::new(), b"", MAX, now);
        assert_eq!(out.into_result(), Ok(()));
    }

    #[test]
    fn retry_after_in_seconds_or_as_a_date_bounded_and_only_on_429_and_503() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(90));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(90))
        );
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(90));
        assert_eq!(parse_retry_after(&earlier, now), Some(Duration::ZERO));
        // The obsolete HTTP date forms are dates too (RFC 9110 section 5.6.7).
        assert!(parse_retry_after("Sunday, 06-Nov-94 08:49:37 GMT", now).is_some());
        assert_eq!(parse_retry_after("-5", now), None);
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("", now), None);
        assert_eq!(
            parse_retry_after("99999999999999999999999", now),
            Some(Duration::from_secs(u64::MAX))
        );

        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_static("100000"));
        for (code, want) in [(429, Some(MAX)), (503, Some(MAX)), (500, None), (408, None)] {
            let status = StatusCode::from_u16(code).expect("status");
            let out = Outcome::from_response(status, &headers, b"", MAX, now);
            assert_eq!(out.retry_after, want, "{code}");
        }
    }

    #[test]
    fn the_body_is_kept_as_text() {
        let out = Outcome::from_response(
            StatusCode::UNPROCESSABLE_ENTITY,
            &HeaderMap::new(),
            b"bad \xff\x00field",
            MAX,
            SystemTime::now(),
        );
        assert_eq!(out.body, "bad \u{fffd} field");
    }
}
