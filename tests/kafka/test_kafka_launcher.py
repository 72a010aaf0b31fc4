"""keystone_ingest.dev.kafka: Apache Kafka nodes as child JVMs that start on
metadata, move leadership when killed, come back, and never outlive their owner."""

from __future__ import annotations

import base64
import json
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient
from kafkautil import KafkaCluster, read_all
from keystone_ingest.dev.kafka import KafkaUnavailable
from keystone_ingest.dev.kafka.cluster import cluster_id
from waiting import wait_until


def jvm_alive(pid: int) -> bool:
    try:
        return b"kafka.Kafka" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all"})
    for value in values:
        producer.produce(topic, value, key=b"k")
    assert producer.flush(30) == 0


def test_one_node_starts_takes_records_and_leaves_no_jvm_or_directory():
    with KafkaCluster(nodes=1) as cluster:
        pid = cluster.pids()[1]
        root = cluster.root
        topic = cluster.new_topic("t", partitions=2)
        assert cluster.metadata(topic).topics[topic].partitions[0].replicas == [1]
        produce(cluster.bootstrap, topic, [b"a", b"b"])
        assert [r.value for r in read_all(cluster.bootstrap, topic)] == [b"a", b"b"]
    assert not jvm_alive(pid)
    assert not root.exists()


def test_a_kept_data_dir_survives_a_restart_with_its_records(tmp_path):
    with KafkaCluster(nodes=1, data_dir=tmp_path) as cluster:
        cluster.create_topic("kept", partitions=1)
        produce(cluster.bootstrap, "kept", [b"before"])
    with KafkaCluster(nodes=1, data_dir=tmp_path) as cluster:  # formatted already: not formatted again
        produce(cluster.bootstrap, "kept", [b"after"])
        assert [r.value for r in read_all(cluster.bootstrap, "kept")] == [b"before", b"after"]
    assert (tmp_path / "node-1" / "logs" / "server.log").exists()


def test_three_nodes_replicate_and_a_killed_leader_hands_over_and_comes_back(breakable_kafka: KafkaCluster):
    cluster = breakable_kafka
    topic = cluster.new_topic("leader", partitions=1)
    partition = cluster.metadata(topic).topics[topic].partitions[0]
    assert len(partition.replicas) == 3 and sorted(partition.isrs) == sorted(partition.replicas)
    produce(cluster.bootstrap, topic, [b"1"])
    old = cluster.kill_leader(topic, 0)
    assert not jvm_alive(cluster.pids().get(old, -1))
    # The controller fences the silent node after broker.session.timeout.ms and elects another.
    wait_until(lambda: cluster.leader(topic, 0) != old, 30, what="a new leader")
    produce(cluster.bootstrap, topic, [b"2"])  # acks=all with min.insync.replicas 2 of the 2 left
    cluster.start_node(old)
    cluster.wait_in_sync([topic])
    assert sorted(cluster.in_sync(topic, 0)) == [1, 2, 3]
    assert [r.value for r in read_all(cluster.bootstrap, topic)] == [b"1", b"2"]


def test_a_node_that_fails_to_start_raises_with_its_own_log():
    cluster = KafkaCluster(nodes=1)
    host, port = cluster.bootstrap.split(":")
    with socket.create_server((host, int(port))):  # its port, taken
        with pytest.raises(KafkaUnavailable) as failed:
            cluster.start()
    message = str(failed.value)
    assert "Kafka node 1 exited with code 1 during start-up; its log:" in message
    assert f"Socket server failed to bind to {host}:{port}: Address already in use" in message
    assert not cluster.pids()


def test_cluster_ids_are_16_bytes_in_url_safe_base64_and_never_look_like_an_option():
    ids = [cluster_id() for _ in range(5000)]
    assert all(len(i) == 22 and not i.startswith("-") for i in ids)
    assert all(len(base64.urlsafe_b64decode(i + "==")) == 16 for i in ids)
    assert any(i.startswith("_") for i in ids)  # 1 in 64 would have started with '-': those are drawn again


def test_missing_jars_are_named_with_the_command_that_fetches_them(tmp_path):
    with pytest.raises(KafkaUnavailable, match=r"no Apache Kafka jars in .*nothing: run `make kafka`"):
        KafkaCluster(nodes=1, libs=tmp_path / "nothing")


OWNER = textwrap.dedent("""
    import sys, threading, time
    from keystone_ingest.dev.kafka import KafkaCluster
    def start():
        cluster = KafkaCluster(nodes=1, data_dir=sys.argv[1]).start()
        print(cluster.pids()[1], flush=True)
    if sys.argv[2] == "thread":   # started from a thread that then ends
        t = threading.Thread(target=start); t.start(); t.join()
    else:
        start()
    time.sleep(600)  # alive until the test kills it: no synchronisation
""")


@pytest.mark.parametrize("from_thread", [False, True], ids=["main-thread", "ended-thread"])
def test_the_jvm_dies_with_the_process_that_started_it(tmp_path, from_thread: bool):
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER, str(tmp_path), "thread" if from_thread else "main"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        pid = int(owner.stdout.readline())
        assert jvm_alive(pid)  # a thread that ended did not take the JVM with it
        owner.kill()
        owner.wait()
        wait_until(lambda: not jvm_alive(pid), 10, step_s=0.05, what=f"Kafka JVM {pid} gone with its parent")
    finally:
        owner.kill()


def test_a_jvm_left_on_a_data_dir_by_an_earlier_owner_is_killed_before_the_node_starts(tmp_path):
    owner = subprocess.Popen([sys.executable, "-c", OWNER, str(tmp_path), "main"], stdout=subprocess.PIPE, text=True)
    try:
        stale = int(owner.stdout.readline())
        with KafkaCluster(nodes=1, data_dir=tmp_path) as cluster:  # would not get the data dir's lock otherwise
            assert not jvm_alive(stale)
            assert cluster.pids()[1] != stale
    finally:
        owner.kill()
        owner.wait()


def test_the_command_line_prints_the_bootstrap_creates_topics_and_stops_on_sigterm():
    process = subprocess.Popen(
        [sys.executable, "-m", "keystone_ingest.dev.kafka", "--nodes", "1", "--topic", "orders:3"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        info = json.loads(process.stdout.readline())
        pid = info["nodes"]["1"]
        topics = AdminClient({"bootstrap.servers": info["bootstrap"]}).list_topics(timeout=10).topics
        assert len(topics["orders"].partitions) == 3
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        assert not jvm_alive(pid)
    finally:
        process.kill()
