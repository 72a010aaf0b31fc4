"""Client targets: one server as given, several replicas as one round_robin channel."""

from __future__ import annotations

import pytest
from keystone_ingest.client.targets import PICK_FIRST, ROUND_ROBIN, channel_target


def test_one_address_or_uri_is_passed_on_as_given():
    assert channel_target("127.0.0.1:50051") == ("127.0.0.1:50051", [])
    assert channel_target("unix:/run/keystone.sock") == ("unix:/run/keystone.sock", [])


def test_replicas_become_one_static_address_list_each_client_starting_at_the_next_one():
    replicas = ["127.0.0.1:1", "127.0.0.2:2", "127.0.0.3:3"]
    firsts = []
    for _ in range(6):
        target, options = channel_target(" , ".join(replicas))
        assert options == [PICK_FIRST]
        scheme, _, addresses = target.partition(":")
        listed = addresses.split(",")
        assert scheme == "ipv4" and sorted(listed) == replicas
        start = replicas.index(listed[0])
        assert listed == replicas[start:] + replicas[:start]  # the rest in order: where failover goes next
        firsts.append(listed[0])
    # Consecutive clients start at consecutive replicas: six streams, two on each.
    assert sorted(firsts) == sorted(replicas * 2)
    target, _ = channel_target("[::1]:1,[::1]:2")
    assert target in ("ipv6:[::1]:1,[::1]:2", "ipv6:[::1]:2,[::1]:1")


def test_a_name_is_resolved_to_its_addresses_and_kept_as_the_tls_authority():
    target, options = channel_target("localhost:7001,localhost:7002")
    assert target.startswith(("ipv4:", "ipv6:"))
    assert "7001" in target and "7002" in target
    assert options == [PICK_FIRST, ("grpc.default_authority", "localhost:7001")]


def test_dns_and_address_list_uris_get_round_robin():
    assert channel_target("dns:///ingest.keystone.svc:50051") == ("dns:///ingest.keystone.svc:50051", [ROUND_ROBIN])
    assert channel_target("ipv4:10.0.0.1:1,10.0.0.2:1") == ("ipv4:10.0.0.1:1,10.0.0.2:1", [ROUND_ROBIN])


@pytest.mark.parametrize(
    "target, message",
    [
        ("127.0.0.1:1,[::1]:2", "mixes IPv4 and IPv6"),
        ("127.0.0.1:1,nohost", "expected HOST:PORT"),
        ("127.0.0.1:1,no-such-host.invalid:5", "cannot resolve 'no-such-host.invalid'"),
    ],
)
def test_bad_replica_lists_are_refused_with_what_is_wrong(target, message):
    with pytest.raises(ValueError, match=message):
        channel_target(target)
