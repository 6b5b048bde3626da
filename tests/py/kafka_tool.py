"""An independent Kafka client for the Rust integration tests (confluent-kafka, the Python binding of
librdkafka; nothing here imports vigil code). Every command prints one JSON document on stdout.

  create BROKERS TOPIC PARTITIONS
  produce BROKERS TOPIC FILE          each line of FILE (NDJSON or not) becomes one message keyed by its
                                      agent_id when it parses, else by "unparsed"
  consume BROKERS TOPIC [IDLE_S]      every record from the beginning, with key, headers, partition, offset
  committed BROKERS GROUP TOPIC       the group's committed offset per partition
"""
import json
import sys
import time
import uuid

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic


def create(bs, topic, partitions):
    admin = AdminClient({"bootstrap.servers": bs})
    for _, f in admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)]).items():
        f.result(timeout=30)
    # Wait until the topic's metadata shows every partition.
    for _ in range(100):
        md = admin.list_topics(topic, timeout=10)
        t = md.topics.get(topic)
        if t is not None and t.error is None and len(t.partitions) == partitions:
            return {"topic": topic, "partitions": partitions}
        time.sleep(0.1)
    raise SystemExit(f"topic {topic} did not appear")


def produce(bs, topic, path):
    # One record per batch: tansu 0.6.0 answers a fetch from an offset inside a multi-record batch with
    # later records and some twice (seen with this client and with librdkafka in vigil alike), so a
    # consumer resuming from a committed offset would see a gap. With single-record batches every
    # committed offset is a batch boundary and resuming is exact.
    p = Producer({"bootstrap.servers": bs, "linger.ms": 5, "enable.idempotence": True,
                  "batch.num.messages": 1})
    failed = []
    n = 0
    with open(path, "rb") as f:
        for raw in f:
            line = raw.rstrip(b"\n")
            try:
                key = json.loads(line).get("agent_id", "unparsed")
            except Exception:
                key = "unparsed"
            while True:
                try:
                    p.produce(topic, key=str(key), value=line,
                              on_delivery=lambda err, msg: err and failed.append(str(err)))
                    break
                except BufferError:
                    p.poll(0.05)
            n += 1
            if n % 1000 == 0:
                p.poll(0)
    # One record per batch is slow to drain on a busy machine (seen: 4,677 records still queued after
    # 60 s while two builds ran beside the suite); the flush returns as soon as all are acknowledged, so
    # the bound only decides how long a broker that really stopped answering is waited for.
    left = p.flush(300)
    if left or failed:
        raise SystemExit(f"{left} undelivered, failures: {failed[:3]}")
    return {"produced": n}


def consume(bs, topic, idle_s=3.0):
    c = Consumer({"bootstrap.servers": bs, "group.id": "reader-" + uuid.uuid4().hex,
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.subscribe([topic])
    out = []
    last = time.time()
    while time.time() - last < idle_s:
        m = c.poll(0.2)
        if m is None:
            continue
        if m.error():
            continue
        last = time.time()
        headers = {k: (v.decode() if v is not None else None) for k, v in (m.headers() or [])}
        out.append({"key": m.key().decode() if m.key() else None,
                    "value": m.value().decode("utf-8", "replace") if m.value() is not None else None,
                    "headers": headers, "partition": m.partition(), "offset": m.offset()})
    c.close()
    return {"records": out}


def committed(bs, group, topic):
    c = Consumer({"bootstrap.servers": bs, "group.id": group, "enable.auto.commit": False})
    md = c.list_topics(topic, timeout=10)
    tps = [TopicPartition(topic, p) for p in md.topics[topic].partitions]
    res = c.committed(tps, timeout=10)
    c.close()
    return {str(tp.partition): tp.offset for tp in res}


def main():
    cmd = sys.argv[1]
    if cmd == "create":
        out = create(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    elif cmd == "produce":
        out = produce(sys.argv[2], sys.argv[3], sys.argv[4])
    elif cmd == "consume":
        out = consume(sys.argv[2], sys.argv[3], float(sys.argv[4]) if len(sys.argv) > 4 else 3.0)
    elif cmd == "committed":
        out = committed(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        raise SystemExit(f"unknown command {cmd}")
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
