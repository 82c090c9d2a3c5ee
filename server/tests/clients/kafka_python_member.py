"""One kafka-python consumer-group member, in its own process, driven over stdin/stdout.

Usage: kafka_python_member.py BOOTSTRAP
Prints `A p,p,...` when its assignment changes, `R` each time a rebalance assigns it
partitions, and `V value` per record. On `stop` it commits (retrying while the group
rebalances) and prints `C`; on `close` it leaves; on `exit` it closes at once (a static
member does not leave then: KIP-345).
Environment: KAFKA_PYTHON_MEMBER_GROUP (py-group), KAFKA_PYTHON_MEMBER_TOPIC (py-shared),
KAFKA_PYTHON_MEMBER_INSTANCE (a group.instance.id: a static member),
KAFKA_PYTHON_MEMBER_SESSION_MS (6000), KAFKA_PYTHON_MEMBER_COMMIT_EVERY (0: when set, prints
`D partition offset value` per record instead of `V`, and commits its positions after every
that many records, printing `K p:o,...` for each commit the coordinator acknowledged),
KAFKA_PYTHON_MEMBER_MAX_POLL_RECORDS (500) and KAFKA_PYTHON_MEMBER_PAUSE_MS (0: a pause
after each poll, to pace the member).
Two kafka-python consumers in one process share its network thread, and under load that
thread was seen to stall both (no heartbeats, sessions expiring); real members are
separate processes anyway.
"""
import logging
import os
import select
import sys

from kafka import ConsumerRebalanceListener, KafkaConsumer
from kafka.errors import RebalanceInProgressError


def say(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def command(timeout):
    ready, _, _ = select.select([sys.stdin], [], [], timeout)
    return sys.stdin.readline().strip() if ready else None


if os.environ.get("KAFKA_PYTHON_MEMBER_LOG"):
    logging.basicConfig(level=getattr(logging, os.environ["KAFKA_PYTHON_MEMBER_LOG"]), stream=sys.stderr,
                        format=f"%(asctime)s member {os.getpid()} %(name)s: %(message)s")
topic = os.environ.get("KAFKA_PYTHON_MEMBER_TOPIC", "py-shared")
member = KafkaConsumer(bootstrap_servers=sys.argv[1],
                       group_id=os.environ.get("KAFKA_PYTHON_MEMBER_GROUP", "py-group"),
                       group_instance_id=os.environ.get("KAFKA_PYTHON_MEMBER_INSTANCE"),
                       auto_offset_reset="earliest", enable_auto_commit=False,
                       session_timeout_ms=int(os.environ.get("KAFKA_PYTHON_MEMBER_SESSION_MS", "6000")),
                       max_poll_records=int(os.environ.get("KAFKA_PYTHON_MEMBER_MAX_POLL_RECORDS", "500")),
                       heartbeat_interval_ms=500)


class Rebalances(ConsumerRebalanceListener):
    def on_partitions_revoked(self, revoked):
        pass

    def on_partitions_assigned(self, assigned):
        say("R")

# Two guards against a kafka-python 3.0.12 bug, seen with this broker under CPU load: when
# a poll's timeout ends while the member's own JoinGroup/SyncGroup is in flight, and the
# rejoin was caused by a metadata change, the finished join is never applied (the member
# keeps an empty assignment, stops heartbeating, and is expired). So the member learns the
# topic's partitions before it subscribes (no metadata-driven rejoin after its first
# join), and polls with a timeout long enough for a join to finish inside one poll.
member.partitions_for_topic(topic)
member.subscribe([topic], listener=Rebalances())
shown = None
commit_every = int(os.environ.get("KAFKA_PYTHON_MEMBER_COMMIT_EVERY", "0"))
since_commit = 0


def commit_positions():
    """Commits the positions; prints `K p:o,...` once the coordinator acknowledged them."""
    at = {tp: member.position(tp) for tp in member.assignment()}
    member.commit()
    say("K " + ",".join(f"{tp.partition}:{o}" for tp, o in sorted(at.items()) if o is not None))


pause = int(os.environ.get("KAFKA_PYTHON_MEMBER_PAUSE_MS", "0")) / 1000
while True:
    polled = member.poll(timeout_ms=1000)
    if pause:
        select.select([], [], [], pause)
    # The assignment first: it changed inside this poll, before its records were fetched.
    assignment = ",".join(str(p) for p in sorted(tp.partition for tp in member.assignment()))
    if assignment != shown:
        say("A " + assignment)
        shown = assignment
    for records in polled.values():
        for r in records:
            if commit_every:
                say(f"D {r.partition} {r.offset} {r.value.decode()}")
                since_commit += 1
            else:
                say("V " + r.value.decode())
    if commit_every and since_commit >= commit_every:
        try:
            commit_positions()
            since_commit = 0
        except Exception as e:  # refused or timed out: not acknowledged, try later
            logging.getLogger("member").info("commit failed: %r", e)
    said = command(0)
    if said == "stop":
        break
    if said == "exit":
        member.close()
        sys.exit(0)
    if said == "":  # the driving process is gone
        member.close()
        sys.exit(1)
# As with any Kafka broker, a commit during a rebalance is refused; poll and retry.
for _ in range(50):
    try:
        if commit_every:
            commit_positions()
        else:
            member.commit()
        say("C")
        break
    except RebalanceInProgressError:
        member.poll(timeout_ms=100)
    except Exception as e:  # a coordinator moving: find it again and retry
        if not commit_every:
            raise
        logging.getLogger("member").info("final commit failed: %r", e)
        member.poll(timeout_ms=100)
else:
    say("E commit kept failing")
while command(30) not in ("close", ""):
    pass
member.close()
