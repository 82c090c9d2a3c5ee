"""Drives the broker with kafka-python, a pure-Python client (its own protocol code).

Usage: kafka_python_check.py BOOTSTRAP DATA_DIR
Exits non-zero with a message on the first failed check.
"""
import faulthandler
import os
import struct
import subprocess
import sys
import threading
import time

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

bootstrap, data_dir = sys.argv[1], sys.argv[2]
CODECS = {"gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}
# A hang must fail with a trace, not stall the test run: past this, every thread's stack
# goes to stderr and the process exits non-zero.
faulthandler.dump_traceback_later(180, exit=True)
children = []


def check(cond, message):
    if not cond:
        print(f"FAIL: {message}", file=sys.stderr)
        for child in children:
            child.kill()
        # Not sys.exit: that would wait for the threads still reading the children.
        os._exit(1)


def stored_codecs(topic):
    with open(f"{data_dir}/{topic}-0/00000000000000000000.log", "rb") as f:
        log = f.read()
    codecs, at = [], 0
    while at + 61 <= len(log):
        codecs.append(struct.unpack(">h", log[at + 21:at + 23])[0] & 7)
        at += struct.unpack(">i", log[at + 8:at + 12])[0] + 12
    return codecs


def consume(topic, partitions, count):
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                             consumer_timeout_ms=10000)
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    got = []
    deadline = time.time() + 20
    while len(got) < count and time.time() < deadline:
        for records in consumer.poll(timeout_ms=500).values():
            got.extend(records)
    consumer.close()
    check(len(got) == count, f"{topic}: consumed {len(got)} of {count}")
    return got


admin = KafkaAdminClient(bootstrap_servers=bootstrap)
admin.create_topics([NewTopic("py-orders", num_partitions=3, replication_factor=1)])
try:
    admin.create_topics([NewTopic("py-orders", num_partitions=3, replication_factor=1)])
    check(False, "creating an existing topic must fail")
except TopicAlreadyExistsError:
    pass
check("py-orders" in admin.list_topics(), "topic listed")

# kafka-python 3 is idempotent by default (InitProducerId, sequence numbers).
producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
for i in range(300):
    producer.send("py-orders", key=f"k{i % 7}".encode(), value=f"order {i}".encode(),
                  headers=[("source", b"python")], timestamp_ms=1_700_000_000_000 + i)
producer.flush()
records = consume("py-orders", 3, 300)
by_key = {}
for r in records:
    check(r.headers == [("source", b"python")], f"headers {r.headers}")
    check(by_key.setdefault(r.key, r.partition) == r.partition, f"key {r.key} moved partition")
last = {}
for r in records:
    n = int(r.value.split()[1])
    check(last.get(r.partition, -1) < n, "per-partition order")
    last[r.partition] = n

for codec, code in CODECS.items():
    topic = f"py-{codec}"
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    p = KafkaProducer(bootstrap_servers=bootstrap, compression_type=codec, linger_ms=50, batch_size=1 << 20)
    values = [f"{codec} {i} ".encode() + b"x" * 100 for i in range(500)]
    for v in values:
        p.send(topic, value=v)
    p.flush()
    p.close()
    got = [r.value for r in consume(topic, 1, 500)]
    check(got == values, f"{codec}: values differ")
    codecs = stored_codecs(topic)
    check(code in codecs and all(c in (0, code) for c in codecs), f"{codec}: stored codecs {codecs}")
    with open(f"{data_dir}/{topic}-0/00000000000000000000.log", "rb") as f:
        head = f.read(61)
    producer_id = struct.unpack(">q", head[43:51])[0]
    check(producer_id >= 0, f"{codec}: batches come from an idempotent producer (id {producer_id})")

consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
tp = TopicPartition("py-orders", 0)
end = consumer.end_offsets([tp])[tp]
check(end == sum(1 for r in records if r.partition == 0), "end offset")
check(consumer.beginning_offsets([tp])[tp] == 0, "beginning offset")
found = consumer.offsets_for_times({tp: 1_700_000_000_000})[tp]
check(found is not None and found.offset == 0, f"offset for time {found}")
consumer.close()

# Consumer groups: two members share a topic; a later member resumes at the commit.
admin.create_topics([NewTopic("py-shared", num_partitions=4, replication_factor=1)])
producer = KafkaProducer(bootstrap_servers=bootstrap)


def group_member():
    # Learns the partitions before subscribing, as kafka_python_member.py does (why: there).
    member = KafkaConsumer(bootstrap_servers=bootstrap, group_id="py-group",
                           auto_offset_reset="earliest", enable_auto_commit=False,
                           session_timeout_ms=6000, heartbeat_interval_ms=500)
    member.partitions_for_topic("py-shared")
    member.subscribe(["py-shared"])
    return member


# The two members run in processes of their own (kafka_python_member.py), as real members
# do; this process reads what they print.
seen = {}
assigned = [None, None]
committed = [threading.Event(), threading.Event()]
failures = []
lock = threading.Lock()
member_script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kafka_python_member.py")
members = [subprocess.Popen([sys.executable, member_script, bootstrap], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True) for _ in range(2)]
children.extend(members)


def read_member(i, proc):
    for line in proc.stdout:
        kind, _, rest = line.rstrip("\n").partition(" ")
        with lock:
            if kind == "V":
                seen[rest] = seen.get(rest, 0) + 1
            elif kind == "A":
                assigned[i] = set(int(p) for p in rest.split(",") if p)
            elif kind == "C":
                committed[i].set()
            elif kind == "E":
                failures.append(rest)
                committed[i].set()


readers = [threading.Thread(target=read_member, args=(i, p), daemon=True)
           for i, p in enumerate(members)]
for t in readers:
    t.start()


def balanced():
    with lock:
        a1, a2 = assigned
        return bool(a1) and bool(a2) and not (a1 & a2) and len(a1 | a2) == 4


def tell(proc, line):
    proc.stdin.write(line + "\n")
    proc.stdin.flush()


# Produce once the group is balanced, so no rebalance moves a partition mid-stream
# (which, without commits, may legitimately redeliver).
deadline = time.time() + 30
while time.time() < deadline and not balanced():
    time.sleep(0.1)
for i in range(200):
    producer.send("py-shared", value=f"s{i}".encode(), partition=i % 4)
producer.flush()
deadline = time.time() + 30
while time.time() < deadline:
    with lock:
        done = len(seen) >= 200
    if done and balanced():
        break
    time.sleep(0.1)
with lock:
    check(len(seen) == 200 and all(n == 1 for n in seen.values()), f"group consumed {len(seen)} distinct")
check(balanced(), f"disjoint assignments: {assigned}")
# Both commit while both are still members, then both leave.
for p in members:
    tell(p, "stop")
for c in committed:
    check(c.wait(30), "a member never committed")
check(not failures, f"commits: {failures}")
for p in members:
    tell(p, "close")
for p in members:
    try:
        code = p.wait(30)
    except subprocess.TimeoutExpired:
        code = None
    check(code == 0, f"a member did not exit cleanly: {code}")
for t in readers:
    t.join(10)
for i in range(10):
    producer.send("py-shared", value=f"late{i}".encode(), partition=i % 4)
producer.flush()
m3 = group_member()
late = []
deadline = time.time() + 30
while len(late) < 10 and time.time() < deadline:
    for records in m3.poll(timeout_ms=1000).values():
        late.extend(r.value for r in records)
check(sorted(late) == sorted(f"late{i}".encode() for i in range(10)), f"resumed at the commit: {late[:5]}")
m3.close()
listed = admin.list_groups()
check("py-group" in str(listed), f"group listed: {listed}")

# Static membership (KIP-345): two static members share a topic; one process exits (a
# static member sends no LeaveGroup) and a new one with the same group_instance_id starts
# within the session timeout: it gets the same partitions, and the other member is not
# reassigned.
admin.create_topics([NewTopic("py-static", num_partitions=4, replication_factor=1)])


def static_member(instance):
    env = dict(os.environ, KAFKA_PYTHON_MEMBER_GROUP="py-static-group",
               KAFKA_PYTHON_MEMBER_TOPIC="py-static", KAFKA_PYTHON_MEMBER_INSTANCE=instance,
               KAFKA_PYTHON_MEMBER_SESSION_MS="30000")
    proc = subprocess.Popen([sys.executable, member_script, bootstrap], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env)
    children.append(proc)
    state = {"assigned": None, "rebalances": 0}

    def read():
        for line in proc.stdout:
            kind, _, rest = line.rstrip("\n").partition(" ")
            with lock:
                if kind == "A":
                    state["assigned"] = set(int(p) for p in rest.split(",") if p)
                elif kind == "R":
                    state["rebalances"] += 1

    threading.Thread(target=read, daemon=True).start()
    return proc, state


def wait_until(what, ok, limit=60):
    deadline = time.time() + limit
    while time.time() < deadline:
        with lock:
            if ok():
                return
        time.sleep(0.1)
    check(False, f"timed out waiting for {what}")


# b first, alone, so that it leads the group; a (a follower) restarts first, then b (the
# leader). kafka-python joins below JoinGroup v9, so the broker does not tell the
# returning leader that it leads (as Kafka: it would compute an assignment the stable
# group ignores, and kafka-python then rejoined, a rebalance).
b_proc, b = static_member("b")
wait_until("the first static member assigned", lambda: b["assigned"] is not None and len(b["assigned"]) == 4)
a_proc, a = static_member("a")
wait_until("both static members assigned", lambda: bool(a["assigned"]) and bool(b["assigned"])
           and not (a["assigned"] & b["assigned"]) and len(a["assigned"] | b["assigned"]) == 4)
# Settled: no member reassigned for 3 s (a leader may rejoin once after its first
# assignment, when its metadata of the new topic catches up).
deadline = time.time() + 60
while True:
    with lock:
        counts = (a["rebalances"], b["rebalances"])
    time.sleep(3)
    with lock:
        if counts == (a["rebalances"], b["rebalances"]):
            a_before, b_rebalances = set(a["assigned"]), b["rebalances"]
            break
    check(time.time() < deadline, "the static group never settled")
tell(a_proc, "exit")
check(a_proc.wait(30) == 0, "the static member did not exit cleanly")
a2_proc, a2 = static_member("a")
wait_until("the restarted static member assigned", lambda: bool(a2["assigned"]))
time.sleep(3)
with lock:
    check(a2["assigned"] == a_before, f"restarted static member got {a2['assigned']}, had {a_before}")
    check(b["rebalances"] == b_rebalances,
          f"the other member was reassigned {b['rebalances'] - b_rebalances} more time(s)")
with lock:
    b_before, a2_rebalances = set(b["assigned"]), a2["rebalances"]
tell(b_proc, "exit")
check(b_proc.wait(30) == 0, "the static leader did not exit cleanly")
b2_proc, b2 = static_member("b")
wait_until("the restarted static leader assigned", lambda: bool(b2["assigned"]))
time.sleep(3)
with lock:
    check(b2["assigned"] == b_before, f"restarted static leader got {b2['assigned']}, had {b_before}")
    check(a2["rebalances"] == a2_rebalances,
          f"the other member was reassigned {a2['rebalances'] - a2_rebalances} more time(s) when the leader restarted")
for p in (a2_proc, b2_proc):
    tell(p, "exit")
    p.wait(30)
described = admin.describe_groups(["py-group"])
check("py-group" in str(described), f"group described: {described}")

admin.delete_topics(["py-orders"])
check("py-orders" not in admin.list_topics(), "topic deleted")
admin.close()
print("kafka-python: all checks passed")
