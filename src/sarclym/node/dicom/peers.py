"""Who may associate with the listener: the called AE and the allow-list of calling peers.

Peers are checked when they ask to associate (PS3.8 7.1.1.3): the called AE must be ours and the
calling AE (optionally with its host) must be allowed, else the listener sends A-ASSOCIATE-RJ
rejected-permanent from the service user with a :class:`RejectReason`. An allow-list host is an
IP address, a network (CIDR) or a host name; host names are resolved when a peer asks and trusted
for ``_RESOLVE_TTL_S`` (docs/conformance-statement.md, 4.2.1).
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from enum import IntEnum

from sarclym.node.config import ListenerConfig

__all__ = ["RejectReason", "check_peer", "host_is_named"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: How long a host name of the allow-list is trusted to keep its addresses.
_RESOLVE_TTL_S = 30.0
_resolved: dict[str, tuple[float, frozenset[IPAddress]]] = {}
_resolved_lock = threading.Lock()


class RejectReason(IntEnum):
    """A-ASSOCIATE-RJ diagnostics for source "DICOM UL service-user" (PS3.8 9.3.4)."""

    CALLING_AE_NOT_RECOGNIZED = 3
    CALLED_AE_NOT_RECOGNIZED = 7


def _plain(ip: IPAddress) -> IPAddress:
    """``::ffff:10.0.0.9`` as ``10.0.0.9`` (a dual-stack socket's view of an IPv4 peer)."""
    mapped = getattr(ip, "ipv4_mapped", None)
    return mapped if mapped is not None else ip


def _addresses(name: str) -> frozenset[IPAddress]:
    """The addresses a host name resolves to now (cached for 30 s; empty when it does not)."""
    now = time.monotonic()
    with _resolved_lock:
        hit = _resolved.get(name)
        if hit is not None and now - hit[0] < _RESOLVE_TTL_S:
            return hit[1]
    try:
        infos = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
    except OSError:
        found: frozenset[IPAddress] = frozenset()
    else:
        found = frozenset(_plain(ipaddress.ip_address(str(i[4][0]).split("%")[0])) for i in infos)
    with _resolved_lock:
        _resolved[name] = (now, found)
    return found


def _same_host(allowed: str, address: str) -> bool:
    """Whether ``address`` is the allow-list's host: an IP address, a network (CIDR), or a
    host name that resolves to it (as in Compose or Kubernetes, where addresses change)."""
    try:
        peer = _plain(ipaddress.ip_address(address))
    except ValueError:
        return allowed == address
    try:
        if "/" in allowed:
            return peer in ipaddress.ip_network(allowed, strict=False)
        return peer == _plain(ipaddress.ip_address(allowed))
    except ValueError:
        return peer in _addresses(allowed)


def check_peer(
    config: ListenerConfig, *, calling_ae: str, called_ae: str, address: str
) -> RejectReason | None:
    """Whether an association request may proceed.

    Parameters
    ----------
    config
        The listener's configuration (AE title, allow-list).
    calling_ae, called_ae
        AE titles from the A-ASSOCIATE-RQ (trailing spaces are ignored).
    address
        IP address the request came from.

    Returns
    -------
    RejectReason or None
        None to accept; otherwise the diagnostic to reject with. The called AE is checked
        first; a calling AE allowed only from another host counts as not recognized.
    """
    if config.require_called_ae and called_ae.strip() != config.ae_title:
        return RejectReason.CALLED_AE_NOT_RECOGNIZED
    if config.allow_any_peer:
        return None
    calling = calling_ae.strip()
    for peer in config.allowed_peers:
        if peer.ae_title == calling and (peer.host is None or _same_host(peer.host, address)):
            return None
    return RejectReason.CALLING_AE_NOT_RECOGNIZED


def host_is_named(config: ListenerConfig, address: str, *, resolve: bool = True) -> bool | None:
    """Whether an association from ``address`` could be accepted, judging by its host alone.

    True with ``allow_any_peer``, or when an allowed peer names no host or names this one. The
    listener asks before the association request arrives, to close the connections of hosts
    that no allowed peer names first when too many connections wait (their request would be
    rejected anyway: A-ASSOCIATE-RJ, calling AE not recognized).

    Parameters
    ----------
    config
        The listener's configuration (allow-list).
    address
        IP address the connection came from.
    resolve
        Whether host names of the allow-list may be resolved (a DNS query, cached 30 s).

    Returns
    -------
    bool or None
        None when ``resolve`` is False and only a host name of the allow-list could still
        name ``address``.
    """
    if config.allow_any_peer:
        return True
    undecided = False
    for peer in config.allowed_peers:
        if peer.host is None:
            return True
        if not resolve and _is_host_name(peer.host):
            undecided = True
        elif _same_host(peer.host, address):
            return True
    return None if undecided else False


def _is_host_name(host: str) -> bool:
    """Whether an allow-list host is a name (resolved), not an address or a network."""
    try:
        if "/" in host:
            ipaddress.ip_network(host, strict=False)
        else:
            ipaddress.ip_address(host)
    except ValueError:
        return True
    return False
