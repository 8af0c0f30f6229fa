// A @grpc/grpc-js client of tests/services/grpc/echo.py for tests/grpc_node.rs: grpc-js has
// its own HTTP/2 stack (Node's nghttp2) and HPACK encoder, unlike gRPC C-core.
//
//   node client.js PORT N   one channel to 127.0.0.1:PORT, N unary calls one after the other
//                           to /demo.Echo/T<trace id>, each with its own traceparent in the
//                           metadata; prints `<trace id> <status code>` per call.
// Trace id of call i: 5eed0000000000000000000000000000 + FIRST_CALL + i (echo.py's numbering).
"use strict";

const grpc = require("@grpc/grpc-js");

const FIRST_CALL = 2000n;
const BASE = 0x5eed0000000000000000000000000000n;

function traceId(i) {
  return (BASE + FIRST_CALL + BigInt(i)).toString(16).padStart(32, "0");
}

const identity = (b) => b;

async function main() {
  const [port, n] = process.argv.slice(2).map(Number);
  const client = new grpc.Client(`127.0.0.1:${port}`, grpc.credentials.createInsecure());
  for (let i = 0; i < n; i++) {
    const id = traceId(i);
    const metadata = new grpc.Metadata();
    metadata.set("traceparent", `00-${id}-00f067aa0ba902b7-01`);
    const code = await new Promise((resolve) => {
      client.makeUnaryRequest(
        `/demo.Echo/T${id}`,
        identity,
        identity,
        Buffer.from("hello"),
        metadata,
        { deadline: Date.now() + 10000 },
        (err) => resolve(err ? err.code : grpc.status.OK),
      );
    });
    console.log(id, code);
  }
  client.close();
}

main();
