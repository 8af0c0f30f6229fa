"""A three-service gRPC chain for tests/grpc_chain.rs: front client -> middle -> back, on
grpcio's generic handlers (no protoc) with the OpenTelemetry gRPC instrumentation, which
propagates W3C `traceparent` in the call metadata.

  chain.py back PORT          serve every method: the reply is the request.
  chain.py middle PORT BACK   serve /chain.Middle/{Propagate,Drop,Restart}; each makes one call
                              to back, named after the inbound call it serves:
                              /chain.Back/<Method>For<inbound trace id>.
                                Propagate  through the instrumented channel, in the context the
                                           call came with: the same trace id goes on;
                                Drop       through a plain channel without metadata: no context;
                                Restart    through the instrumented channel in a new root
                                           context: a new trace id.
  chain.py front PORT N       N calls to each method of the middle at 127.0.0.1:PORT, one
                              channel, one after the other; each call starts a trace whose id is
                              front_trace_id(method index, i). Prints `<method> <trace id>
                              <status>` per call.
Servers print `listening` once up.
"""

import sys
from concurrent import futures

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.instrumentation.grpc import (
    client_interceptor,
    intercept_channel,
    server_interceptor,
)
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator

METHODS = ["Propagate", "Drop", "Restart"]
TIMEOUT = 10


def front_trace_id(method, i):
    """The trace id of the front's call `i` to METHODS[method]."""
    return 0xF0E1_0000_0000_0000_0000_0000_0000_0000 + (method << 32) + i + 1


class NextTraceId(IdGenerator):
    """Hands out the trace ids the test expects, in the order the front calls."""

    def __init__(self):
        self.next = None
        self.spans = RandomIdGenerator()

    def generate_span_id(self):
        return self.spans.generate_span_id()

    def generate_trace_id(self):
        return self.next


def provider(ids=None):
    return TracerProvider(id_generator=ids) if ids else TracerProvider()


def serve(port, handler):
    tracer_provider = provider()
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=8),
        interceptors=[server_interceptor(tracer_provider=tracer_provider)],
    )
    server.add_generic_rpc_handlers((handler(tracer_provider),))
    server.add_insecure_port("127.0.0.1:%d" % port)
    server.start()
    print("listening", flush=True)
    server.wait_for_termination()


class Back(grpc.GenericRpcHandler):
    def __init__(self, _tracer_provider):
        pass

    def service(self, handler_call_details):
        return grpc.unary_unary_rpc_method_handler(lambda request, context: request)


class Middle(grpc.GenericRpcHandler):
    def __init__(self, tracer_provider):
        self.tracer = tracer_provider.get_tracer("chain-middle")
        target = "127.0.0.1:%d" % BACK_PORT
        self.traced = intercept_channel(
            grpc.insecure_channel(target), client_interceptor(tracer_provider=tracer_provider)
        )
        self.plain = grpc.insecure_channel(target)

    def service(self, handler_call_details):
        method = handler_call_details.method.rsplit("/", 1)[-1]
        if method not in METHODS:
            return None
        return grpc.unary_unary_rpc_method_handler(lambda request, context: self.handle(method, request))

    def handle(self, method, request):
        inbound = trace.get_current_span().get_span_context().trace_id
        path = "/chain.Back/%sFor%032x" % (method, inbound)
        if method == "Propagate":
            return self.traced.unary_unary(path)(request, timeout=TIMEOUT)
        if method == "Drop":
            return self.plain.unary_unary(path)(request, timeout=TIMEOUT)
        # Restart: a new root span, detached from the inbound context.
        with self.tracer.start_as_current_span("restart", context=otel_context.Context()):
            return self.traced.unary_unary(path)(request, timeout=TIMEOUT)


def front(port, n):
    ids = NextTraceId()
    channel = intercept_channel(
        grpc.insecure_channel("127.0.0.1:%d" % port),
        client_interceptor(tracer_provider=provider(ids)),
    )
    for m, method in enumerate(METHODS):
        call = channel.unary_unary("/chain.Middle/%s" % method)
        for i in range(n):
            ids.next = front_trace_id(m, i)
            try:
                call(b"hello", timeout=TIMEOUT)
                code = grpc.StatusCode.OK
            except grpc.RpcError as e:
                code = e.code()
            print(method, "%032x" % ids.next, code.name, flush=True)


if __name__ == "__main__":
    role, port = sys.argv[1], int(sys.argv[2])
    if role == "back":
        serve(port, Back)
    elif role == "middle":
        BACK_PORT = int(sys.argv[3])
        serve(port, Middle)
    else:
        front(port, int(sys.argv[3]))
