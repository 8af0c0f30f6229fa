"""front: the edge. `front.py PORT MIDDLE_PORT`.

GET /go/<route> calls middle /<route> (e.g. /go/drop/7 -> /drop/7), forwarding the inbound
traceparent (and tracestate) unchanged.
"""

from flask import Flask, request

from common import get, port_arg, serve

app = Flask("front")
MIDDLE = None


@app.route("/go/<path:route>")
def go(route):
    headers = {}
    for name in ("traceparent", "tracestate"):
        if name in request.headers:
            headers[name] = request.headers[name]
    status, body = get(f"http://127.0.0.1:{MIDDLE}/{route}", headers)
    return body, status


if __name__ == "__main__":
    MIDDLE = port_arg(2)
    serve(app, port_arg(1))
