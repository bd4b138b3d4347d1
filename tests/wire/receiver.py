"""A subscription receiver in Python: verify, parse, answer. The example in
docs/subscriptions.md, run by the Rust test `subscriptions::wire::the_python_receiver_example`.

Usage: receiver.py WHSEC_SECRET   (listens on 127.0.0.1, a free port, printed on the first line)
Prints one JSON line per accepted event; answers 204, or 401 when the signature is wrong.
"""

import json
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

from cloudevents.core.bindings.http import HTTPMessage, from_http
from cloudevents.core.formats.json import JSONFormat
from standardwebhooks.webhooks import Webhook

hook = Webhook(sys.argv[1])


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["content-length"]))
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            hook.verify(body, headers)  # the exact bytes, before parsing; raises if bad or stale
        except Exception:
            self.send_response(401)  # a 4xx other than 408/409/425/429: parked at once
            self.end_headers()
            return
        event = from_http(HTTPMessage(headers, body), JSONFormat())
        print(json.dumps({"id": event.get_id(), "type": event.get_type(),
                          "subject": event.get_subject(), "data": event.get_data()}), flush=True)
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass  # stdout carries the events only


server = HTTPServer(("127.0.0.1", 0), Receiver)
print(server.server_address[1], flush=True)
server.serve_forever()
