"""An idempotent acks=all kafka-python producer for the fault-injection suite.

Usage: kafka_python_faults.py BOOTSTRAP TOPIC PARTITIONS PREFIX LIMIT_S [ACKS]
Sends PREFIX-0, PREFIX-1, ... round robin over the partitions, one every 10 ms, until its
stdin closes; then flushes and exits. ACKS is "all" (the default: idempotent, acks=all)
or "1" (acks=1, not idempotent: the suite's negative control). Prints one line per outcome, as it happens:
  ack VALUE PARTITION OFFSET      the broker acknowledged VALUE at that offset
  fail VALUE ERROR                the producer gave VALUE up (in doubt: it may be stored)
  done SENT                       the last line, after the flush
Past LIMIT_S seconds every thread's stack goes to stderr and it exits non-zero.
"""
import faulthandler
import sys
import threading
import time

from kafka import KafkaProducer

bootstrap, topic, partitions, prefix, limit_s = sys.argv[1:6]
acks = sys.argv[6] if len(sys.argv) > 6 else "all"
partitions = int(partitions)
faulthandler.dump_traceback_later(int(limit_s), exit=True)

stop = threading.Event()


def watch_stdin():
    sys.stdin.read()
    stop.set()


threading.Thread(target=watch_stdin, daemon=True).start()

out = threading.Lock()


def emit(line):
    with out:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


producer = KafkaProducer(
    bootstrap_servers=bootstrap.split(","),
    acks="all" if acks == "all" else 1,
    enable_idempotence=acks == "all",
    linger_ms=5,
    # A request to a frozen or cut-off leader is given up after this and retried
    # (idempotence makes the retry safe); the message itself waits up to the delivery
    # timeout, longer than any fault lasts.
    request_timeout_ms=10000,
    delivery_timeout_ms=120000,
    max_in_flight_requests_per_connection=5,
    retry_backoff_ms=100,
    reconnect_backoff_ms=50,
    reconnect_backoff_max_ms=1000,
    metadata_max_age_ms=5000,
)


def on_ack(value):
    return lambda md: emit(f"ack {value} {md.partition} {md.offset}")


def on_fail(value):
    return lambda e: emit(f"fail {value} {type(e).__name__}:{e}".replace("\n", " "))


sent = 0
while not stop.is_set():
    value = f"{prefix}-{sent}"
    future = producer.send(topic, value=value.encode(), partition=sent % partitions)
    future.add_callback(on_ack(value))
    future.add_errback(on_fail(value))
    sent += 1
    time.sleep(0.01)

producer.flush(timeout=90)
producer.close(timeout=10)
emit(f"done {sent}")
