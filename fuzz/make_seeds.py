#!/usr/bin/env python3
"""Writes the hand-made seeds of fuzz/seeds/<target>/ in the input format of src/checks.rs
(selector bytes and length-prefixed chunks, then the body). Run from fuzz/."""
import json, os

def chunk(b):
    b = b if isinstance(b, bytes) else b.encode()
    assert len(b) < 256
    return bytes([len(b)]) + b

def write(target, name, data):
    os.makedirs(f"seeds/{target}", exist_ok=True)
    with open(f"seeds/{target}/{name}", "wb") as f:
        f.write(data)

EVENT = json.dumps({"event_id": "0193a8a0-0000-7000-8000-000000000001", "event_name": "order.created",
                    "aggregate_id": "o-1", "occurred_on": "2026-11-27T10:00:00Z", "version": "1.0",
                    "data": {"name": "张三", "n": 1.5, "list": [1, None, True]}}).encode()
NO_HEADERS = b"\x00" * 6

# Header value: chunk(raw) + kind byte (0 i64, 1 i32, 2 u8, 3 longstr, 4 shortstr, 5 bool, 6 array, 7 table).
def int_value(n): return chunk(n.to_bytes(8, "little", signed=True)) + b"\x00"
def str_value(s): return chunk(s) + b"\x03"

envelope = {
    "warren_event": bytes([0x30]) + chunk("order.created") + NO_HEADERS + b"\x01" + chunk("0193a8a0-0000-7000-8000-000000000001") + b"\x00" + EVENT,
    "requeued_attempt_2": bytes([0x32]) + chunk("warren.notifications") + b"\x01" + int_value(2) + b"\x01" + str_value("order.created") + b"\x00\x00\x00\x00" + b"\x00\x00" + EVENT,
    "forged_attempt_999": bytes([0x30]) + chunk("order.created") + b"\x01" + int_value(999) + b"\x00" * 5 + b"\x00\x00" + EVENT,
    "negative_attempt_requeue": bytes([0x32]) + chunk("q") + b"\x01" + int_value(-5) + b"\x00" * 5 + b"\x00\x00" + EVENT,
    "string_attempt": bytes([0x32]) + chunk("q") + b"\x01" + str_value("3") + b"\x00" * 5 + b"\x00\x00" + EVENT,
    "garbage_trace_and_request_id": bytes([0x30]) + chunk("order.created") + b"\x00\x00\x00" + b"\x01" + str_value("00-zz-zz-01") + b"\x01" + str_value("r" * 200) + b"\x00" + b"\x00\x00" + EVENT,
    "x_death_garbage_array": bytes([0x32]) + chunk("q") + b"\x00" * 5 + b"\x01" + chunk(b"") + b"\x06" + b"\x02" + str_value("x") + chunk(b"") + b"\x07\x01\x02" + str_value("many") + b"\x00\x00" + EVENT,
    "garbage_message_id": bytes([0x30]) + chunk("order.created") + NO_HEADERS + b"\x01" + chunk("not-a-uuid") + b"\x01" + chunk("corr") + EVENT,
    "body_xml": bytes([0x30]) + chunk("order.created") + NO_HEADERS + b"\x00\x00" + b"<xml>not json</xml>",
    "body_invalid_utf8": bytes([0x31]) + chunk("email.send") + NO_HEADERS + b"\x00\x00" + b"{\"event_name\": \"\xff\xfe\"}",
    "body_empty": bytes([0x33]) + chunk("") + NO_HEADERS + b"\x00\x00",
    "body_deep": bytes([0x30]) + chunk("order.created") + NO_HEADERS + b"\x00\x00" + b"[" * 5000 + b"]" * 5000,
    "body_missing_fields": bytes([0x30]) + chunk("order.created") + NO_HEADERS + b"\x00\x00" + b"{\"event_name\": \"order.created\"}",
    "body_bad_date": bytes([0x30]) + chunk("order.created") + NO_HEADERS + b"\x00\x00" + EVENT.replace(b"2026-11-27T10:00:00Z", b"yesterday"),
    "max_attempts_zero": bytes([0x02]) + chunk("q") + b"\x01" + int_value(1 << 40) + b"\x00" * 5 + b"\x00\x00" + EVENT,
}
for name, data in envelope.items():
    write("envelope", name, data)

http_request = {
    "valid": chunk("order.created") + b"\x01" + b"{\"id\": 1}",
    "no_content_type": chunk("user.registered") + b"\x00" + b"{}",
    "json_suffix": chunk("a.b.c") + b"\x02" + chunk("application/vnd.warren+json; charset=utf-8") + b"{\"x\": [1, 2]}",
    "text_plain": chunk("order.created") + b"\x02" + chunk("text/plain") + b"{}",
    "uppercase_name": chunk("Order.Created") + b"\x01" + b"{}",
    "wildcard_name": chunk("order.#") + b"\x01" + b"{}",
    "percent_name": chunk("order.%2e") + b"\x01" + b"{}",
    "unicode_name": chunk("ordér.created") + b"\x01" + b"{}",
    "long_name": chunk("a." + "b" * 200) + b"\x01" + b"{}",
    "array_body": chunk("order.created") + b"\x01" + b"[1, 2]",
    "null_body": chunk("order.created") + b"\x01" + b"null",
    "invalid_utf8_body": chunk("order.created") + b"\x01" + b"{\"a\": \"\xff\"}",
    "deep_body": chunk("order.created") + b"\x01" + b"{\"a\":" * 3000 + b"1" + b"}" * 3000,
    "huge_number": chunk("order.created") + b"\x01" + b"{\"a\": 1e999, \"b\": -0.0}",
    "lone_surrogate": chunk("order.created") + b"\x01" + b"{\"a\": \"\\ud800\"}",
}
for name, data in http_request.items():
    write("http_request", name, data)

def headers(*pairs):
    out = bytes([len(pairs)])
    names = ["content-type", "content-length", "authorization", "traceparent", "x-request-id", "transfer-encoding"]
    for name, value in pairs:
        out += bytes([names.index(name)]) + chunk(value)
    return out

http_routes = {
    "publish": b"\x00\x00" + chunk("order.created") + headers(("content-type", "application/json")) + b"{\"id\": 1}",
    "publish_query": b"\x00\x00" + chunk("order.created?mode=sync&aggregate_id=o-1") + headers(("content-type", "application/json")) + b"{}",
    "publish_bad_query": b"\x00\x00" + chunk("order.created?mode=%ff&x=[") + headers() + b"{}",
    "publish_too_large": b"\x00\x00" + chunk("order.created") + headers() + b"{\"a\": \"" + b"x" * 5000 + b"\"}",
    "publish_bad_header": b"\x00\x00" + chunk("order.created") + headers(("content-type", b"application/\xffjson")) + b"{}",
    "publish_get": b"\x01\x00" + chunk("order.created") + headers() + b"",
    "job": b"\x00\x01" + chunk("email.send") + headers(("authorization", "Bearer x")) + b"{\"to\": \"a@b\"}",
    "dlq_show": b"\x01\x02" + chunk("warren.email?limit=5&message_id=nope") + headers() + b"",
    "dlq_replay": b"\x00\x02" + chunk("warren.email/replay") + headers() + b"{\"limit\": 1}",
    "dlq_purge_chunked": b"\x00\x02" + chunk("warren.email/purge") + headers(("transfer-encoding", "chunked")) + b"",
    "order": b"\x00\x03" + chunk("") + headers(("content-type", "application/json")) + b"{\"user_id\": \"u\"}",
    "saga_bad_uuid": b"\x01\x04" + chunk("not-a-uuid") + headers() + b"",
    "intervention_retry": b"\x00\x05" + chunk("0193a8a0-0000-7000-8000-000000000001/retry") + headers() + b"{\"note\": 1}",
    "failed_jobs_query": b"\x01\x06" + chunk("?limit=-1&status=x&unknown=1") + headers() + b"",
    "odd_method": b"\x03" + chunk("BREW") + b"\x07" + chunk("healthz") + headers(("x-request-id", "r" * 200)) + b"",
    "metrics": b"\x01\x07" + chunk("metrics") + headers(("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")) + b"",
}
for name, data in http_routes.items():
    write("http_routes", name, data)
