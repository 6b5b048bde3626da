"""A webhook receiver for the tests: an independent check of vigil's Standard Webhooks deliveries.

    receiver.py SECRET LOG [--port N] [--fail-first N] [--status CODE] [--redirect URL]

Listens on 127.0.0.1 (port 0 picks one), prints "listening PORT", and appends one JSON line per request
to LOG: the webhook-id, the event type, the breaker it moved, whether the signature verified (with the
`standardwebhooks` package), and the status answered. --fail-first answers 503 to the first N requests
(with Retry-After: 0); --status answers CODE to every request; --redirect answers 302 to URL.
"""

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

args = sys.argv[1:]
secret, log = args[0], args[1]
opts = {args[i]: args[i + 1] for i in range(2, len(args) - 1, 2)}
port = int(opts.get("--port", "0"))
fail_first = int(opts.get("--fail-first", "0"))
status = int(opts.get("--status", "0"))
redirect = opts.get("--redirect")
wh = Webhook(secret)
seen = {"n": 0}


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            payload = wh.verify(body, headers)
            verified = True
        except WebhookVerificationError:
            payload = json.loads(body or b"{}")
            verified = False
        seen["n"] += 1
        if redirect:
            code = 302
        elif status:
            code = status
        elif seen["n"] <= fail_first:
            code = 503
        else:
            code = 204 if verified else 400
        data = payload.get("data", {})
        key = data.get("agent_id") or (
            f"{data.get('factor')}={data.get('value')}" if data.get("factor") else "fleet"
        )
        with open(log, "a") as f:
            f.write(
                json.dumps(
                    {
                        "id": headers.get("webhook-id"),
                        "type": payload.get("type"),
                        "key": key,
                        "mode": data.get("mode"),
                        "transition_id": data.get("transition_id"),
                        "verified": verified,
                        "status": code,
                    }
                )
                + "\n"
            )
        self.send_response(code)
        if code == 503:
            self.send_header("Retry-After", "0")
        if redirect:
            self.send_header("Location", redirect)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *a):
        pass


server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
print(f"listening {server.server_address[1]}", flush=True)
server.serve_forever()
