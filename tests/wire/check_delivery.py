"""Checks one captured warren subscription delivery with code warren's authors did not write.

Usage: check_delivery.py CAPTURE.json

CAPTURE.json (written by the Rust test `subscriptions::wire`):
  {"headers": {name: value}, "body_b64": "...", "secrets": ["whsec_..."],
   "expect": {"mode", "id", "source", "type", "time", "subject", "data"}}

The delivery is parsed by the CloudEvents Python SDK (PyPI `cloudevents`, its 2.x
`cloudevents.core.bindings.http.from_http`, which percent-decodes `ce-*` headers as the HTTP
binding's section 3.1.3.2 says) and its signature verified by the Standard Webhooks reference
library (PyPI `standardwebhooks`) with each secret in turn. Exits 0 when everything matches,
1 with the reason on stderr otherwise.
"""

import base64
import json
import sys
from datetime import datetime

from cloudevents.core.bindings.http import HTTPMessage, from_http
from cloudevents.core.formats.json import JSONFormat
from standardwebhooks.webhooks import Webhook


def fail(reason):
    print(f"check_delivery: {reason}", file=sys.stderr)
    sys.exit(1)


def main(path):
    with open(path, encoding="utf-8") as f:
        capture = json.load(f)
    headers = capture["headers"]
    body = base64.b64decode(capture["body_b64"])
    expect = capture["expect"]

    # A receiver verifies before it parses: every secret must accept the delivery.
    for i, secret in enumerate(capture["secrets"]):
        try:
            Webhook(secret).verify(body, headers)
        except Exception as e:
            fail(f"signature with secret {i + 1} of {len(capture['secrets'])}: {type(e).__name__}: {e}")

    mode_is_binary = any(k.lower().startswith("ce-") for k in headers)
    if mode_is_binary != (expect["mode"] == "binary"):
        fail(f"expected {expect['mode']} mode, headers say otherwise: {sorted(headers)}")

    # What the binding (section 3.1.3.2) requires of the raw values and the SDK does not
    # check (it decodes leniently): printable ASCII only, no space or double quote, and every
    # percent sign the start of a %XY escape.
    for name, value in headers.items():
        if not name.lower().startswith("ce-"):
            continue
        if any(not 0x21 <= ord(c) <= 0x7E or c == '"' for c in value):
            fail(f"header {name}: {value!r} has a character the binding says to percent-encode")
        for i, c in enumerate(value):
            if c == "%" and not all(h in "0123456789ABCDEFabcdef" for h in value[i + 1:i + 3]) \
                    or c == "%" and len(value) < i + 3:
                fail(f"header {name}: {value!r} has a % that starts no escape")

    try:
        event = from_http(HTTPMessage(headers=headers, body=body), JSONFormat())
    except Exception as e:  # the SDK's own refusal is the finding
        fail(f"the CloudEvents SDK refused the delivery: {type(e).__name__}: {e}")

    got = {
        "specversion": event.get_specversion(),
        "id": event.get_id(),
        "source": event.get_source(),
        "type": event.get_type(),
        "subject": event.get_subject(),
        "datacontenttype": event.get_datacontenttype(),
        "data": event.get_data(),
    }
    want = {
        "specversion": "1.0",
        "id": expect["id"],
        "source": expect["source"],
        "type": expect["type"],
        "subject": expect["subject"],
        "datacontenttype": "application/json",
        "data": expect["data"],
    }
    for key, value in want.items():
        if got[key] != value:
            fail(f"attribute {key}: got {got[key]!r}, want {value!r}")
    want_time = datetime.fromisoformat(expect["time"].replace("Z", "+00:00"))
    if event.get_time() != want_time:
        fail(f"attribute time: got {event.get_time()!r}, want {want_time!r}")

    print(f"check_delivery: {expect['mode']} delivery {expect['id']} parsed and verified "
          f"with {len(capture['secrets'])} secret(s)")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        fail("usage: check_delivery.py CAPTURE.json")
    main(sys.argv[1])
