"""Where a client connects: one server, or several interchangeable replicas.

    target, options = channel_target("10.0.0.5:50051,10.0.0.6:50051")
    channel = grpc.aio.insecure_channel(target, options=options)

- `host:port`, or any gRPC target URI (`unix:...`): as given, on gRPC's
  default policy (one connection).
- `host:port,host:port,...`: the replicas. Each host is resolved once, here
  (a name with the system resolver, every address it has), into one static
  `ipv4:`/`ipv6:` address list for gRPC.
- `dns:///name:port`: gRPC's own DNS resolver, which re-resolves the name when
  connections fail (a Kubernetes headless Service, for example); `ipv4:` and
  `ipv6:` address lists as gRPC reads them.

Several addresses get gRPC's `round_robin` policy: the channel keeps a
connection to every replica, each new stream goes to the next one that is
ready, and a replica that is down is skipped until it answers again. So when
a replica dies or drains, the client's next stream (and the unacked batches
it resends on it, with the same batch_ids) goes to another one.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

ROUND_ROBIN = ("grpc.lb_policy_name", "round_robin")


def _split_host_port(address: str) -> tuple[str, int]:
    host, sep, port = address.strip().rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"target {address!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


def _resolve(host: str, port: int) -> list[str]:
    """`ip:port` strings (IPv6 in brackets) for every address of `host`."""
    try:
        ipaddress.ip_address(host)
        infos = [(socket.AF_INET6 if ":" in host else socket.AF_INET, None, None, None, (host, port))]
    except ValueError:
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
    options: list[tuple[str, Any]] = [ROUND_ROBIN]
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
