"""Who can reach a server listening on an address: this computer only, the local network, or
anyone (the API server's and the compute server's warnings and refusals)."""

from __future__ import annotations

import ipaddress


def address_kind(host: str) -> str:
    """``loopback``, ``private`` (private, link-local, ``*.local``) or ``public`` (anything else,
    and the unspecified addresses, which listen on every interface)."""
    host = host.strip()
    if host.lower() == "localhost":
        return "loopback"
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return "private" if host.lower().endswith(".local") else "public"
    if address.is_unspecified:
        return "public"
    if address.is_loopback:
        return "loopback"
    return "private" if address.is_private or address.is_link_local else "public"


def is_loopback(host: str) -> bool:
    """True for an address only this computer can reach (127.0.0.1, ::1, localhost)."""
    return address_kind(host) == "loopback"
