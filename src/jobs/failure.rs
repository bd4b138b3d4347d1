//! What the runner writes about a failed message: the failure headers a retried or parked
//! copy carries, and the text of its `failed_jobs` row.

use chrono::Utc;
use lapin::{
    message::Delivery,
    types::{AMQPValue, FieldTable, LongString},
};

use super::decode::Delivered;
use crate::broker::names::{
    H_ERROR, H_FAILED_AT, H_ORIGINAL_EXCHANGE, H_ORIGINAL_ROUTING_KEY, H_X_DEATH,
};

/// Longest message body copied into a `failed_jobs` row (the parked message keeps all of it).
pub(crate) const MAX_FAILED_PAYLOAD: usize = 64 * 1024;

/// `s` as PostgreSQL accepts it in a text column: NUL characters become U+FFFD.
pub(super) fn db_text(s: &str) -> String {
    s.replace('\0', "\u{FFFD}")
}

/// A message body for the `failed_jobs` row: UTF-8 (invalid bytes as U+FFFD), no NUL, at most
/// [`MAX_FAILED_PAYLOAD`] bytes of it, with a note when cut.
pub(super) fn payload_text(body: &[u8]) -> String {
    let cut = body.len() > MAX_FAILED_PAYLOAD;
    let mut text = db_text(&String::from_utf8_lossy(
        &body[..body.len().min(MAX_FAILED_PAYLOAD)],
    ));
    if cut {
        text.push_str(&format!(
            "... [cut: {} bytes in all; the parked message holds the whole body]",
            body.len()
        ));
    }
    text
}

pub(super) fn long(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

/// The delivery's headers plus the failure headers; the original exchange and routing key are
/// set once, on the first failure, and kept after (see [`super::decode`] for when recorded
/// ones are believed).
pub(super) fn failure_headers(delivery: &Delivery, error: &str) -> FieldTable {
    let mut headers = delivery.properties.headers().clone().unwrap_or_default();
    if headers
        .inner()
        .get(H_X_DEATH)
        .is_some_and(|d| !super::decode::x_death_is_well_formed(d))
    {
        // RabbitMQ's own dead-lettering (the delay tier's TTL expiry) crashes on an x-death it
        // did not write, and the message then never comes back: drop the forged one; the
        // broker writes its own on the way back.
        tracing::warn!("Dropping a malformed x-death header before republishing.");
        let mut inner = headers.inner().clone();
        inner.remove(H_X_DEATH);
        headers = FieldTable::from(inner);
    }
    let truncated: String = error.chars().take(1000).collect();
    headers.insert(H_ERROR.into(), long(&truncated));
    headers.insert(H_FAILED_AT.into(), long(&Utc::now().to_rfc3339()));
    // On a delivery through warren.requeue these are the headers of the first failure; on any
    // other (a first delivery, or a foreign publisher's forged headers) they are the real ones.
    let (exchange, routing_key) = Delivered {
        body: &delivery.data,
        properties: &delivery.properties,
        exchange: delivery.exchange.as_str(),
        routing_key: delivery.routing_key.as_str(),
    }
    .origin();
    headers.insert(H_ORIGINAL_EXCHANGE.into(), long(&exchange));
    headers.insert(H_ORIGINAL_ROUTING_KEY.into(), long(&routing_key));
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_payload_is_text_postgresql_takes_and_is_bounded() {
        assert_eq!(payload_text(b"{\"a\":1}"), "{\"a\":1}");
        assert_eq!(payload_text(b"\xff\x00x"), "\u{FFFD}\u{FFFD}x");
        let big = vec![b'a'; MAX_FAILED_PAYLOAD * 3];
        let text = payload_text(&big);
        assert!(text.len() < MAX_FAILED_PAYLOAD + 100);
        assert!(text.ends_with(&format!(
            "{} bytes in all; the parked message holds the whole body]",
            big.len()
        )));
        assert_eq!(db_text("a\0b"), "a\u{FFFD}b");
    }
}
