"""The pipelines `fraudmon bench` measures next to the worker, each in a process of its own, until SIGTERM:

    python -m fraudmon.tools.bench_peers PEER --bootstrap HOST:PORT --source TOPIC --output TOPIC --group GROUP

- `aiokafka`: bare aiokafka consume-and-produce, each record's bytes and key out unchanged (what Faust sits on);
- `faust`: the worker's own transport with no engine (`stream_app.transport`: Faust, the fetched batches handed
  over whole, the worker's publisher and acks): each record's bytes and key out unchanged, its offset acked once
  the brokers acknowledged it, as the worker does. The most a worker built this way can move here;
- `confluent`: the same with confluent-kafka (librdkafka);
- `quix`: a Quix Streams application doing a simple scoring pipeline's per-event work as a lean Quix user writes
  it: bytes in, the event gate (`parse_event`), the features (`vectorize`), one onnxruntime call per event, and
  the result as `orjson` bytes out (no serializer of Quix's on either side).

Every peer reads its consumer group from the earliest offset and produces with acks=all and a 2 ms linger, as
the worker does. None waits for the acknowledgements before committing its offsets (the worker does): they are
upper bounds of what the transport allows, not equals of the worker's guarantees.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import tempfile
from pathlib import Path

PEERS = ("aiokafka", "faust", "confluent", "quix")
LINGER_MS = 2


async def _aiokafka(args: argparse.Namespace) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    consumer = AIOKafkaConsumer(args.source, bootstrap_servers=args.bootstrap, group_id=args.group,
                                auto_offset_reset="earliest", max_poll_records=args.max_batch)
    producer = AIOKafkaProducer(bootstrap_servers=args.bootstrap, acks="all", linger_ms=LINGER_MS)
    await consumer.start()
    await producer.start()
    try:
        while not stop.is_set():
            for records in (await consumer.getmany(timeout_ms=100)).values():
                for record in records:
                    await producer.send(args.output, record.value, key=record.key)
    finally:
        await producer.stop()
        await consumer.stop()


def _faust(args: argparse.Namespace) -> None:
    import faust

    from stream_app.metrics import WorkerMetrics
    from stream_app.publish import OutputRecord, Publisher
    from stream_app.transport import App, BatchConsumer, ConsumerThread, transport_options

    ConsumerThread.fetch_max_wait_ms = args.fetch_max_wait_ms
    with tempfile.TemporaryDirectory(prefix="bench-faust-") as data_dir:
        app = App(args.group, broker=f"kafka://{args.bootstrap}", datadir=data_dir, web_enabled=False,
                  **transport_options(args.max_batch, args.fetch_max_bytes))
        publisher: Publisher | None = None

        async def on_batch(messages, offsets) -> None:  # as the worker's `_on_fetched`, with no engine
            nonlocal publisher
            if publisher is None:
                publisher = Publisher(app.producer.send, WorkerMetrics(), producer=app.producer._ensure_producer())
            records = [OutputRecord(args.output, m.key, m.value) for m in messages]
            await app.consumer.ack_when_done(publisher.publish(records), offsets)

        BatchConsumer.batch_topics = frozenset({args.source})
        BatchConsumer.on_batch = staticmethod(on_batch)

        @app.agent(app.topic(args.source, key_type=bytes, value_type=bytes))
        async def subscribe(stream: faust.StreamT) -> None:  # holds the subscription; the records go to on_batch
            async for _ in stream:
                pass

        worker = faust.Worker(app, loglevel="WARNING", quiet=True)
        worker.spinner = None  # a terminal animation, in the bench's log file otherwise
        worker.execute_from_commandline()  # until SIGTERM


def _confluent(args: argparse.Namespace) -> None:
    from confluent_kafka import Consumer, KafkaException, Producer

    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    consumer = Consumer({"bootstrap.servers": args.bootstrap, "group.id": args.group,
                         "auto.offset.reset": "earliest"})
    producer = Producer({"bootstrap.servers": args.bootstrap, "acks": "all", "linger.ms": LINGER_MS})
    consumer.subscribe([args.source])
    try:
        while not stopping:
            for message in consumer.consume(num_messages=args.max_batch, timeout=0.1):
                if message.error():
                    raise KafkaException(message.error())
                while True:
                    try:
                        producer.produce(args.output, message.value(), message.key())
                        break
                    except BufferError:  # the local queue is full: serve delivery reports, then retry
                        producer.poll(0.05)
            producer.poll(0)
    finally:
        producer.flush(10)
        consumer.close()


def _quix(args: argparse.Namespace) -> None:
    import orjson
    from quixstreams import Application

    from fraudmon.core.errors import InvalidEvent
    from fraudmon.core.events import parse_event
    from fraudmon.core.modelcard import ONNX_INPUT, ONNX_SCORE
    from stream_app.features import vectorize
    from stream_app.scoring import load_model

    model = load_model(args.model)
    names, threshold, run = model.feature_names, model.threshold, model.session.run
    outputs = [ONNX_SCORE]  # the score only

    def score(raw: bytes) -> bytes:
        try:
            event = parse_event(raw)
        except InvalidEvent as exc:
            return orjson.dumps({"error": str(exc)})
        value = float(run(outputs, {ONNX_INPUT: vectorize([event], names)})[0][0])
        return orjson.dumps({"transaction_id": event.transaction_id, "account_id": event.account_id,
                             "score": round(value, 6), "is_outlier": value > threshold})

    with tempfile.TemporaryDirectory(prefix="bench-quix-") as state_dir:
        app = Application(
            broker_address=args.bootstrap, consumer_group=args.group, auto_offset_reset="earliest",
            producer_extra_config={"acks": "all", "linger.ms": LINGER_MS}, state_dir=state_dir,
            use_changelog_topics=False, loglevel="WARNING",
        )
        source = app.topic(args.source, value_deserializer="bytes", key_deserializer="bytes")
        output = app.topic(args.output, value_serializer="bytes", key_serializer="bytes")
        app.dataframe(source).apply(score).to_topic(output)
        app.run()  # until SIGTERM, which Quix Streams handles itself


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fraudmon.tools.bench_peers", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("peer", choices=PEERS)
    parser.add_argument("--bootstrap", required=True, help="Kafka host:port.")
    parser.add_argument("--source", required=True, help="Topic to consume.")
    parser.add_argument("--output", required=True, help="Topic to produce to.")
    parser.add_argument("--group", required=True, help="Consumer group.")
    parser.add_argument("--max-batch", type=int, default=250, help="Records taken per poll (aiokafka, confluent).")
    parser.add_argument("--model", type=Path, default=Path("models/default.onnx"), help="ONNX model (quix).")
    parser.add_argument("--fetch-max-bytes", type=int, default=8 << 20, help="Per partition and fetch (faust).")
    parser.add_argument("--fetch-max-wait-ms", type=int, default=20, help="A fetch's longest wait (faust).")
    args = parser.parse_args(argv)
    if args.peer == "aiokafka":
        asyncio.run(_aiokafka(args))
    elif args.peer == "faust":
        _faust(args)
    elif args.peer == "confluent":
        _confluent(args)
    else:
        _quix(args)


if __name__ == "__main__":
    main()
