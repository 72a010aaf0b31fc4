"""Where a client connects: one server, or several interchangeable replicas.

    target, options = channel_target("10.0.0.5:50051,10.0.0.6:50051")
    channel = grpc.aio.insecure_channel(target, options=options)

- `host:port`, or any gRPC target URI (`unix:...`): as given, on gRPC's
  default policy (one connection).
- `host:port,host:port,...`: the replicas. Each host is resolved once, here
  (a name with the system resolver, every address it has), into one static
  `ipv4:`/`ipv6:` address list, which each client of the process starts at
  the next place in (from a random first one): gRPC's `pick_first` then
  connects a client to its own replica, so the streams of `load --streams N`
  spread evenly, and when that replica is down or draining the client's next
  stream connects to the next address in the list.
- `dns:///name:port`: gRPC's own DNS resolver, which re-resolves the name when
  connections fail (a Kubernetes headless Service, for example), with
  `round_robin` over every address it returns; `ipv4:` and `ipv6:` address
  lists as gRPC reads them get `round_robin` too.

Either way, the unacked batches of a broken stream are resent (same
batch_ids) on the next one, so they reach a replica that is up.
"""

from __future__ import annotations

import ipaddress
import itertools
import random
import socket
from collections.abc import Sequence
from typing import Any

ROUND_ROBIN = ("grpc.lb_policy_name", "round_robin")
PICK_FIRST = ("grpc.lb_policy_name", "pick_first")
_starts = itertools.count(random.randrange(1 << 16))  # where the next client starts in a replica list


def _split_host_port(address: str) -> tuple[str, int]:
    host, sep, port = address.strip().rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"target {address!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


def _resolve(host: str, port: int) -> list[str]:
    """`ip:port` strings (IPv6 in brackets) for every address of `host`."""
    # Only the family and the address are read.
    infos: Sequence[tuple[socket.AddressFamily, object, object, object, tuple[object, ...]]]
    if _is_ip(host):
        infos = [(socket.AF_INET6 if ":" in host else socket.AF_INET, None, None, None, (host, port))]
    else:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise ValueError(f"target {host}:{port}: cannot resolve {host!r}: {exc}") from exc
    out: list[str] = []
    for family, _, _, _, sockaddr in infos:
        address = f"[{sockaddr[0]}]:{port}" if family == socket.AF_INET6 else f"{sockaddr[0]}:{port}"
        if address not in out:
            out.append(address)
    return out


def channel_target(target: str) -> tuple[str, list[tuple[str, Any]]]:
    """The gRPC target string and the channel options for `target` (see the module docstring)."""
    target = target.strip()
    if target.startswith(("dns:", "ipv4:", "ipv6:")):
        return target, [ROUND_ROBIN]
    if "," not in target:
        return target, []
    hosts = [_split_host_port(part) for part in target.split(",") if part.strip()]
    addresses = [a for host, port in hosts for a in _resolve(host, port)]
    v6 = [a.startswith("[") for a in addresses]
    if any(v6) and not all(v6):
        raise ValueError(f"target {target!r}: mixes IPv4 and IPv6 addresses; list one family, or use dns:///NAME:PORT")
    scheme = "ipv6" if all(v6) else "ipv4"
    start = next(_starts) % len(addresses)
    addresses = addresses[start:] + addresses[:start]
    options: list[tuple[str, Any]] = [PICK_FIRST]
    names = {host for host, _ in hosts}
    if len(names) == 1 and not _is_ip(next(iter(names))):
        # TLS checks the server's certificate against the authority: the name
        # given, not the address it resolved to.
        options.append(("grpc.default_authority", f"{hosts[0][0]}:{hosts[0][1]}"))
    return f"{scheme}:{','.join(addresses)}", options


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False
