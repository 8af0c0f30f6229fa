"""middle: the hop under test. `middle.py PORT BACK_PORT`.

Routes (an optional `/<tag>` suffix is passed on to back, so a test can tell which inbound
request each outbound call serves):
- /propagate[/tag]: calls back /work/propagate[/tag] with the inbound traceparent (and
  tracestate) copied;
- /drop[/tag]: calls back /work/drop[/tag] with no trace headers;
- /restart[/tag]: calls back /work/restart[/tag] with a freshly minted random traceparent.
"""

import secrets

from flask import Flask, request

from common import get, port_arg, serve

app = Flask("middle")
BACK = None


def call_back(route, tag, headers):
    suffix = f"/{tag}" if tag else ""
    status, _ = get(f"http://127.0.0.1:{BACK}/work/{route}{suffix}", headers)
    return f"{route} -> back {status}\n", 200 if status == 200 else 502


@app.route("/propagate", defaults={"tag": ""})
@app.route("/propagate/<tag>")
def propagate(tag):
    headers = {}
    for name in ("traceparent", "tracestate"):
        if name in request.headers:
            headers[name] = request.headers[name]
    return call_back("propagate", tag, headers)


@app.route("/drop", defaults={"tag": ""})
@app.route("/drop/<tag>")
def drop(tag):
    return call_back("drop", tag, {})


@app.route("/restart", defaults={"tag": ""})
@app.route("/restart/<tag>")
def restart(tag):
    minted = f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"
    return call_back("restart", tag, {"traceparent": minted})


if __name__ == "__main__":
    BACK = port_arg(2)
    serve(app, port_arg(1))
