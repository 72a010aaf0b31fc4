"""A Bronze worker that was paused past its session timeout (a long GC, a
frozen VM, SIGSTOP) wakes up holding rows of partitions the group has since
given to another worker, which consumed and wrote the same offsets. Its flush
must not reach Bronze: the fence (a group offset commit before the commit
marker) fails, and it deletes its files instead."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import urllib.request

from bronzeutil import bronze_rows, caught_up, expected_rows, make_batches, publish, read_bronze, worker_config
from kafkautil import KafkaCluster
from keystone_ingest.server.bronze.commits import COMMITS, PENDING
from keystone_ingest.server.bronze.storage import LocalStore
from keystone_ingest.server.bronze.worker import BronzeWorker
from waiting import wait_until_async


def metric(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{") or line.startswith(name + " ")
    )


def test_a_worker_paused_past_its_session_deletes_its_flush_and_bronze_holds_each_row_once(
    kafka_cluster: KafkaCluster, tmp_path
):
    topic, dlq = kafka_cluster.new_topic("zombie", partitions=3), kafka_cluster.new_topic("zombie-dlq", partitions=1)
    batches = make_batches(4, orders=250, invalid_ratio=0.0)
    asyncio.run(publish(kafka_cluster.bootstrap, topic, dlq, batches))
    accepted = sum(b.accepted for b in batches)
    root = tmp_path / "bronze"
    config = worker_config(kafka_cluster.bootstrap, topic, dlq, str(root))  # B's; A runs as a process, same group
    ready = tmp_path / "a.ready"
    log = open(tmp_path / "a.log", "wb")  # noqa: SIM115 - closed after worker A is gone
    # Worker A consumes everything into its open files (it would publish them
    # only after 600 s), then freezes.
    a = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "keystone_ingest.server.cli",
            "bronze",
            "--kafka-bootstrap",
            kafka_cluster.bootstrap,
            "--topic",
            topic,
            "--dlq-topic",
            dlq,
            "--bronze-uri",
            f"file://{root}",
            "--bronze-group",
            config.bronze_group,
            "--roll-age-s",
            "600",
            "--bronze-session-timeout-s",
            "2",
            "--metrics-listen",
            "127.0.0.1:0",
            "--ready-file",
            str(ready),
            "--log-format",
            "text",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:

        async def scenario() -> None:
            async with asyncio.timeout(90):

                def a_ready() -> bool:
                    assert a.poll() is None, "worker A exited"
                    return ready.exists()

                await wait_until_async(a_ready, 60, what="worker A's ready file")
                port = json.loads(ready.read_text())["metrics_port"]
                await wait_until_async(
                    lambda: metric(port, "keystone_bronze_records_total") >= accepted,
                    60,
                    what=f"worker A consumed all {accepted} records",
                )
                assert metric(port, "keystone_bronze_flushes_total") == 0
                a.send_signal(signal.SIGSTOP)
                # Worker B joins; once A's session expires the group gives B
                # every partition, and B writes all of it to Bronze.
                b = BronzeWorker(config)
                await b.start()
                try:
                    await caught_up(b)
                    # A wakes up and stops, which flushes what it holds: the
                    # fence must refuse it while B is the owner.
                    a.send_signal(signal.SIGCONT)
                    a.send_signal(signal.SIGTERM)
                    assert await asyncio.to_thread(a.wait, 60) == 0
                finally:
                    await b.stop()

        asyncio.run(scenario())
    finally:
        if a.poll() is None:
            a.send_signal(signal.SIGCONT)
            a.kill()
            a.wait(10)
        log.close()

    output = (tmp_path / "a.log").read_text()
    assert "flush abandoned, the partitions belong to another worker now" in output, output[-3000:]
    assert bronze_rows(read_bronze(root)) == expected_rows(batches)
    store = LocalStore(str(root))
    assert store.list_keys(PENDING) == []
    # Every commit marker's files exist: the abandoned flush left none behind.
    for key in store.list_keys(COMMITS):
        assert all((root / f).exists() for f in json.loads(store.get(key))["files"])
    assert not [
        p
        for p in root.rglob("*.parquet")
        if not p.name.startswith(".")
        and all(
            p.relative_to(root).as_posix() not in json.loads(store.get(k))["files"] for k in store.list_keys(COMMITS)
        )
    ]
