"""Drives a three-broker cluster with kafka-python (its own protocol code, not librdkafka).

Usage: kafka_python_cluster.py BROKER1 BROKER2 BROKER3
Creates an RF=3, 6-partition topic through broker 2, checks Metadata lists the three
brokers with three replicas per partition and leaders on all three, produces with acks=all
bootstrapped at broker 3 and reads everything back bootstrapped at broker 1. Asks for
preferred and unclean leader elections (ElectLeaders) where none is needed.
Exits non-zero with a message on the first failed check.
"""
import faulthandler
import sys
import time

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic

faulthandler.dump_traceback_later(120, exit=True)
b1, b2, b3 = sys.argv[1:4]
TOPIC = "python-rf3"
COUNT = 300


def check(cond, message):
    if not cond:
        print(f"FAIL: {message}", file=sys.stderr)
        sys.exit(1)


admin = KafkaAdminClient(bootstrap_servers=b2, request_timeout_ms=30000)
admin.create_topics([NewTopic(TOPIC, num_partitions=6, replication_factor=3)])
described = admin.describe_topics([TOPIC])[0]
partitions = described["partitions"]
check(len(partitions) == 6, f"6 partitions: {described}")
# kafka-python names these fields after the Metadata schema of its version.
def field(p, *names):
    return next(p[n] for n in names if n in p)


check(
    all(sorted(field(p, "replicas", "replica_nodes")) == [1, 2, 3] for p in partitions),
    f"3 replicas each: {partitions}",
)
leaders = sorted(field(p, "leader", "leader_id") for p in partitions)
check(leaders == [1, 1, 2, 2, 3, 3], f"leaders spread: {leaders}")
cluster = admin.describe_cluster()
ids = sorted(field(b, "node_id", "nodeId", "broker_id") for b in cluster["brokers"])
check(ids == [1, 2, 3], f"three brokers: {cluster}")
# Every partition is led by its preferred replica: no election needed, of either type
# (kafka-python passes ELECTION_NOT_NEEDED through); a partition that does not exist is
# named as such.
for election_type in (0, 1):
    response = admin.elect_leaders(election_type, {TOPIC: list(range(6))})
    codes = sorted(
        p.error_code for r in response.replica_election_results for p in r.partition_result
    )
    check(codes == [84] * 6, f"election type {election_type}: ELECTION_NOT_NEEDED each: {response}")
response = admin.elect_leaders(0, {TOPIC: [6]}, raise_errors=False)
codes = [p.error_code for r in response.replica_election_results for p in r.partition_result]
check(codes == [3], f"UNKNOWN_TOPIC_OR_PARTITION for partition 6: {response}")
admin.close()

producer = KafkaProducer(bootstrap_servers=b3, acks="all", retries=5, request_timeout_ms=30000)
futures = [producer.send(TOPIC, value=f"m-{i}".encode(), partition=i % 6) for i in range(COUNT)]
for f in futures:
    f.get(timeout=30)
producer.close()

consumer = KafkaConsumer(bootstrap_servers=b1, enable_auto_commit=False, consumer_timeout_ms=1000)
consumer.assign([TopicPartition(TOPIC, p) for p in range(6)])
consumer.seek_to_beginning()
seen = set()
deadline = time.time() + 60
while len(seen) < COUNT and time.time() < deadline:
    for records in consumer.poll(timeout_ms=1000).values():
        for r in records:
            seen.add(r.value.decode())
consumer.close()
check(len(seen) == COUNT, f"read back {len(seen)} of {COUNT}")
print(f"ok: {COUNT} messages through three brokers")
