"""Sends logs to LogPipeline the way services do: through OpenTelemetry's Python SDK
(the logging bridge, the batch processor) and its OTLP exporter, over HTTP (protobuf)
or gRPC, gzip-compressed. Used by e2e/tests/otlp.rs.

    export.py --protocol http --endpoint http://127.0.0.1:8080 --run RUN --count 1000
    export.py --protocol grpc --endpoint 127.0.0.1:50051 --garbage

Prints one JSON line with the trace and span ids the logs carry. With --garbage, sends
one undecodable Export call instead and prints the gRPC status code it got.
"""

import argparse
import json
import logging
import sys

LEVELS = [logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL]


def exporter(protocol, endpoint, headers):
    if protocol == "http":
        from opentelemetry.exporter.otlp.proto.http import Compression
        from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter

        return OTLPLogExporter(
            endpoint=f"{endpoint}/v1/logs",
            headers=headers,
            timeout=60,
            compression=Compression.Gzip,
        )
    import grpc
    from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter

    return OTLPLogExporter(
        endpoint=endpoint,
        insecure=True,
        headers=headers,
        timeout=60,
        compression=grpc.Compression.Gzip,
    )


def garbage(endpoint, headers):
    import grpc

    with grpc.insecure_channel(endpoint) as channel:
        export = channel.unary_unary(
            "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
            request_serializer=None,
            response_deserializer=None,
        )
        try:
            export(b"\x0a\xff\xff\xff\xff\x0f", metadata=list(headers.items()), timeout=10)
            code = "OK"
        except grpc.RpcError as error:
            code = error.code().name
    print(json.dumps({"code": code}))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--protocol", choices=["http", "grpc"], required=True)
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--run", default="")
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--service", default="otel-e2e")
    parser.add_argument("--key", default="")
    parser.add_argument("--garbage", action="store_true")
    args = parser.parse_args()
    headers = {"authorization": f"Bearer {args.key}"} if args.key else {}
    if args.garbage:
        garbage(args.endpoint, headers)
        return

    from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider

    resource = Resource.create(
        {"service.name": args.service, "deployment.environment": "e2e"}
    )
    provider = LoggerProvider(resource=resource)
    provider.add_log_record_processor(
        BatchLogRecordProcessor(
            exporter(args.protocol, args.endpoint, headers),
            schedule_delay_millis=100,
            max_export_batch_size=200,
            max_queue_size=max(args.count, 2048),
        )
    )
    logger = logging.getLogger("e2e.otlp")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(LoggingHandler(level=logging.DEBUG, logger_provider=provider))
    tracer = TracerProvider(resource=resource).get_tracer("e2e.otlp")
    with tracer.start_as_current_span("export") as span:
        for seq in range(args.count):
            logger.log(
                LEVELS[seq % len(LEVELS)],
                "log %d of %s",
                seq,
                args.run,
                extra={"run": args.run, "seq": seq},
            )
        context = span.get_span_context()
    flushed = provider.force_flush(timeout_millis=180_000)
    provider.shutdown()
    print(
        json.dumps(
            {
                "trace_id": format(context.trace_id, "032x"),
                "span_id": format(context.span_id, "016x"),
                "flushed": flushed,
            }
        )
    )
    sys.exit(0 if flushed else 1)


if __name__ == "__main__":
    main()
