"""A tiny ASGI app for tests/h2c.rs, served by hypercorn on 127.0.0.1, where a plain-text
HTTP/1.1 request with `Upgrade: h2c` is answered `101 Switching Protocols` and the
connection goes on in HTTP/2 (RFC 7540 section 3.2).

  app.py PORT   serve on 127.0.0.1:PORT; every request is answered 200 with a short body
                that names the HTTP version it arrived in. `/api/two` also sets a cookie
                (SET_COOKIE): over HTTP/2, a secret in an HPACK block (Huffman-coded by
                hpack), which a recording must mask.
"""

import asyncio
import sys

from hypercorn.asyncio import serve
from hypercorn.config import Config


SET_COOKIE = b"c=~~~~SECRETH2CSET^^^^{}{}"


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = ("HTTP/%s %s\n" % (scope["http_version"], scope["path"])).encode()
    headers = [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))]
    if scope["path"] == "/api/two":
        headers.append((b"set-cookie", SET_COOKIE))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


if __name__ == "__main__":
    config = Config()
    config.bind = ["127.0.0.1:%d" % int(sys.argv[1])]
    config.accesslog = None
    asyncio.run(serve(app, config))
