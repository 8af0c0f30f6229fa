"""A tiny gRPC service and its client for tests/h2.rs, on grpcio's generic handlers (no protoc).

  echo.py server PORT      serve every method: the reply is the request; a request `fail`
                           ends with NOT_FOUND (grpc-status 5); prints `listening` once up.
  echo.py client PORT MODE  one channel (one HTTP/2 connection) to 127.0.0.1:PORT, then:
    calls N       N unary calls to /demo.Echo/T<trace id>, each with its own traceparent
    channels N    the same N calls, but a new channel (a new connection) per call, closed
                  after it: the channel-per-call anti-pattern that piles up TIME_WAIT
    concurrent N  the same, all N in flight at once
    big           one call with metadata larger than one HTTP/2 frame, traceparent last
    fail          one call that fails with NOT_FOUND
    preexisting N 5 calls, prints `ready`, waits for a line on stdin, then `calls N`
  The client prints one line per call: `<trace id> <status code name>`.
"""

import sys
from concurrent import futures

import grpc

OPTIONS = [("grpc.max_metadata_size", 256 * 1024)]
# A channel of its own per call: grpcio would otherwise hand a new channel the connection of
# a closed one still in its process-wide subchannel pool.
PER_CALL = OPTIONS + [("grpc.use_local_subchannel_pool", 1)]


def trace_id(i):
    return "%032x" % (0x5EED0000000000000000000000000000 + i)


def traceparent(i):
    return "00-%s-00f067aa0ba902b7-01" % trace_id(i)


def handle(request, context):
    if request == b"fail":
        context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
    return request


class Echo(grpc.GenericRpcHandler):
    def service(self, handler_call_details):
        return grpc.unary_unary_rpc_method_handler(handle)


def server(port):
    s = grpc.server(futures.ThreadPoolExecutor(max_workers=16), options=OPTIONS)
    s.add_generic_rpc_handlers((Echo(),))
    s.add_insecure_port("127.0.0.1:%d" % port)
    s.start()
    print("listening", flush=True)
    s.wait_for_termination()


def call(channel, i, body=b"hello", extra=()):
    method = channel.unary_unary("/demo.Echo/T%s" % trace_id(i))
    metadata = list(extra) + [("traceparent", traceparent(i))]
    try:
        method(body, metadata=metadata, timeout=10)
        code = grpc.StatusCode.OK
    except grpc.RpcError as e:
        code = e.code()
    print(trace_id(i), code.name, flush=True)


def client(port, mode, n):
    if mode == "channels":
        for i in range(n):
            with grpc.insecure_channel("127.0.0.1:%d" % port, options=PER_CALL) as channel:
                call(channel, i)
        return
    channel = grpc.insecure_channel("127.0.0.1:%d" % port, options=OPTIONS)
    if mode == "calls":
        for i in range(n):
            call(channel, i)
    elif mode == "concurrent":
        grpc.channel_ready_future(channel).result(timeout=10)
        calls = []
        for i in range(n):
            method = channel.unary_unary("/demo.Echo/T%s" % trace_id(i))
            calls.append((i, method.future(b"x", metadata=[("traceparent", traceparent(i))])))
        for i, f in calls:
            f.result(timeout=10)
            print(trace_id(i), "OK", flush=True)
    elif mode == "big":
        big = [("x-big-%d" % k, "v" * 1000) for k in range(20)]
        call(channel, 7, extra=big)
    elif mode == "fail":
        call(channel, 9, body=b"fail")
    elif mode == "preexisting":
        for i in range(1000, 1005):
            call(channel, i)
        print("ready", flush=True)
        sys.stdin.readline()
        for i in range(n):
            call(channel, i)
    channel.close()


if __name__ == "__main__":
    if sys.argv[1] == "server":
        server(int(sys.argv[2]))
    else:
        n = int(sys.argv[4]) if len(sys.argv) > 4 else 0
        client(int(sys.argv[2]), sys.argv[3], n)
