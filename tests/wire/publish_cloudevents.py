"""Publish CloudEvents to warren from Python: the CloudEvents SDK makes the HTTP message
(structured and binary content modes), the standard library sends it.

    python publish_cloudevents.py http://127.0.0.1:8080 [token]

Prints warren's answer to each event, one JSON object a line.
"""

import json
import sys
import urllib.request

from cloudevents.core.bindings import http
from cloudevents.core.v1.event import CloudEvent


def send(base_url, message, token=None):
    headers = dict(message.headers)
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(
        f"{base_url}/v1/events", data=message.body, headers=headers, method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def main(base_url, token=None):
    # Structured: the whole event is the JSON body (application/cloudevents+json).
    order = CloudEvent(
        attributes={
            "type": "com.example.order.created",
            "source": "/shop",
            "id": "order-42",
            "subject": "order-42",
            "datacontenttype": "application/json",
            "tenant": "acme",  # an extension attribute: it travels on
        },
        data={"order_no": "42", "total": 1999},
    )
    print(json.dumps(send(base_url, http.to_structured_event(order), token)))

    # Binary: attributes in ce-* headers (the SDK percent-encodes them), the body is the data.
    note = CloudEvent(
        attributes={
            "type": "com.example.order.noted",
            "source": "/shop",
            "id": "note-7",
            "datacontenttype": "text/plain",
            "comment": 'café, 100% "fresh"',
        },
        data="thanks ✓",
    )
    print(json.dumps(send(base_url, http.to_binary_event(note), token)))


if __name__ == "__main__":
    main(*sys.argv[1:])
