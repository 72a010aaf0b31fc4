"""The mock broker process (librdkafka's mock cluster): its control protocol, fault injection against a real
client, and that it never outlives whoever started it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap

import pytest
from aiokafka import AIOKafkaProducer
from kafkautil import partition_count, read_all
from keystone_ingest.dev.mockbroker import API_KEYS, MockBroker, MockBrokerError
from waiting import wait_until

BROKER_CMD = [sys.executable, "-m", "keystone_ingest.dev.mockbroker"]


def alive(pid: int) -> bool:
    """True while `pid` runs (a zombie waiting to be reaped counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def refuses_connections(bootstrap: str) -> bool:
    for address in bootstrap.split(","):
        host, port = address.rsplit(":", 1)
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
            return False
        except OSError:
            pass
    return True


def start_cli(*args: str) -> tuple[subprocess.Popen, dict]:
    proc = subprocess.Popen(
        [*BROKER_CMD, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        bufsize=1,
    )
    return proc, json.loads(proc.stdout.readline())


def ask(proc: subprocess.Popen, line: str) -> dict:
    proc.stdin.write(line + "\n")
    proc.stdin.flush()
    return json.loads(proc.stdout.readline())


def test_cli_prints_bootstrap_then_answers_each_command_line():
    proc, hello = start_cli("--brokers", "2", "--partitions", "5", "--topics", "a,b")
    try:
        addresses = hello["bootstrap"].split(",")
        assert hello["brokers"] == [1, 2]
        assert len(addresses) == 2 and all(a.startswith("127.0.0.1:") for a in addresses)
        assert ask(proc, '{"op": "ping"}') == {"ok": True}
        assert ask(proc, '{"op": "info"}') == {
            "ok": True,
            "bootstrap": hello["bootstrap"],
            "brokers": [1, 2],
            "topics": {"a": 5, "b": 5},
        }
        assert ask(proc, '{"op": "topic_create", "topic": "c", "partitions": 3}') == {
            "ok": True,
            "topic": "c",
            "partitions": 3,
            "replication": 2,
        }
        assert partition_count(hello["bootstrap"], "a") == 5
        assert partition_count(hello["bootstrap"], "c") == 3
    finally:
        proc.stdin.close()
        assert proc.wait(5) == 0


def test_a_bad_command_is_answered_with_an_error_and_the_broker_carries_on():
    proc, _ = start_cli("--brokers", "3")
    try:
        answers = {
            "not json": "not a JSON line",
            '["ping"]': 'a command is a JSON object with a string "op"',
            '{"op": "explode"}': "unknown op 'explode'",
            '{"op": "broker_down", "broker": 7}': "no broker 7; brokers are [1, 2, 3] or -1",
            '{"op": "broker_down"}': "bad arguments",
            '{"op": "push_request_errors", "api": "Nope", "errors": ["REQUEST_TIMED_OUT"]}': "unknown Kafka API 'Nope'",
            (
                '{"op": "push_request_errors", "api": "Produce", "errors": ["NO_SUCH_ERROR"]}'
            ): "unknown Kafka error 'NO_SUCH_ERROR'",
            (
                '{"op": "broker_push_request_error_rtts", "broker": 1, "api": "Produce", "errors": [["NO_ERROR"]]}'
            ): "expected [error, rtt_ms]",
        }
        for line, error in answers.items():
            answer = ask(proc, line)
            assert answer["ok"] is False, line
            assert answer["error"].startswith(error), (line, answer)
        assert ask(proc, '{"op": "ping"}') == {"ok": True}
    finally:
        proc.stdin.close()
        assert proc.wait(5) == 0


def test_error_and_api_names_map_to_kafka_protocol_numbers():
    # A broker of its own: once a broker has had broker-level errors for an
    # API, the mock ignores cluster-level errors for that API on that broker.
    with MockBroker(brokers=1) as broker:
        assert API_KEYS["Produce"] == 0 and API_KEYS["Metadata"] == 3 and API_KEYS["InitProducerId"] == 22
        # NOT_LEADER_OR_FOLLOWER is Kafka's newer name for librdkafka's NOT_LEADER_FOR_PARTITION (6).
        broker.broker_push_request_error_rtts(1, "Produce", [("NOT_LEADER_OR_FOLLOWER", 0), (6, 0), ("NO_ERROR", 5)])
        assert broker.error_stack_count(1, "Produce") == 3
        assert broker.error_stack_count(1, 0) == 3
        with pytest.raises(MockBrokerError, match="unknown Kafka error"):
            broker.push_request_errors("Produce", ["NOT_A_REAL_ERROR"])
        # Two retriable failures, then the record goes through: the stack is served in order.
        produce(broker.bootstrap, "served", [b"x"])
        assert broker.error_stack_count(1, "Produce") == 0
        assert [r.value for r in read_all(broker.bootstrap, "served")] == [b"x"]


def produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    """Send `values` one by one to partition 0 with an idempotent aiokafka producer."""

    async def run() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, acks="all")
        await producer.start()
        try:
            for value in values:
                await asyncio.wait_for(producer.send_and_wait(topic, value, partition=0), 10)
        finally:
            await producer.stop()

    asyncio.run(run())


def test_all_brokers_down_stalls_idempotent_produce_and_up_resumes_it_without_duplicates(mock_broker: MockBroker):
    topic = "stall"
    mock_broker.create_topic(topic, partitions=1)

    async def scenario() -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=mock_broker.bootstrap, enable_idempotence=True, acks="all", compression_type="zstd"
        )
        await producer.start()
        try:
            await producer.send_and_wait(topic, b"before", partition=0)
            mock_broker.all_down()
            try:
                stalled = await producer.send(topic, b"during", partition=0)
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(stalled), 1.0)
            finally:
                mock_broker.all_up()
            await asyncio.wait_for(stalled, 10)  # delivered once the brokers are back
            await asyncio.wait_for(producer.send_and_wait(topic, b"after", partition=0), 10)
        finally:
            await producer.stop()

    asyncio.run(scenario())
    assert [r.value for r in read_all(mock_broker.bootstrap, topic)] == [b"before", b"during", b"after"]


def test_injected_produce_errors_are_retried_by_the_idempotent_producer_exactly_once(mock_broker: MockBroker):
    topic = "injected"
    mock_broker.create_topic(topic, partitions=1)
    mock_broker.track_requests(True)
    mock_broker.requests(clear=True)
    mock_broker.push_request_errors("Produce", ["NOT_LEADER_OR_FOLLOWER", "REQUEST_TIMED_OUT"])
    try:
        produce(mock_broker.bootstrap, topic, [b"one", b"two"])
        produce_requests = [r for r in mock_broker.requests() if r[1] == API_KEYS["Produce"]]
    finally:
        mock_broker.track_requests(False)
        mock_broker.clear_request_errors("Produce")
    assert len(produce_requests) == 4, produce_requests  # two failed attempts, then one per record
    assert [r.value for r in read_all(mock_broker.bootstrap, topic)] == [b"one", b"two"]


def test_closing_stdin_stops_the_brokers_and_the_process():
    broker = MockBroker(brokers=2)
    bootstrap, pid = broker.bootstrap, broker.pid
    broker.close()
    assert broker.proc.returncode == 0
    assert not alive(pid)
    assert refuses_connections(bootstrap)
    with pytest.raises(MockBrokerError, match="not running"):
        broker.ping()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_termination_signal_stops_the_process_cleanly(signum: int):
    with MockBroker(brokers=1) as broker:
        broker.ping()
        os.kill(broker.pid, signum)
        assert broker.proc.wait(5) == 0


@pytest.mark.parametrize("from_thread", [False, True], ids=["main-thread", "worker-thread"])
def test_the_broker_dies_with_the_process_that_started_it(from_thread: bool):
    # The parent starts a MockBroker (from its main thread: PR_SET_PDEATHSIG;
    # from a worker thread: stdin EOF and the parent-pid watch), reports the
    # broker's pid, and is then killed without any chance to clean up.
    parent_code = textwrap.dedent(f"""
        import sys, threading, time
        from keystone_ingest.dev.mockbroker import MockBroker
        holder = []
        if {from_thread}:
            t = threading.Thread(target=lambda: holder.append(MockBroker(brokers=1)))
            t.start(); t.join()
        else:
            holder.append(MockBroker(brokers=1))
        print(holder[0].pid, flush=True)
        time.sleep(60)  # alive until the test kills it: no synchronisation
    """)
    parent = subprocess.Popen([sys.executable, "-c", parent_code], stdout=subprocess.PIPE, text=True)
    try:
        broker_pid = int(parent.stdout.readline())
        assert alive(broker_pid)
        parent.kill()
        parent.wait(5)
        wait_until(lambda: not alive(broker_pid), 5, what=f"mock broker {broker_pid} gone with its parent")
    finally:
        parent.kill()
        parent.wait()


def test_a_broker_that_cannot_start_reports_its_stderr():
    with pytest.raises(MockBrokerError, match="--brokers must be at least 1"):
        MockBroker(brokers=0)
