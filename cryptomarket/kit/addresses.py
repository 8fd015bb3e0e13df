"""Client addresses as the unit that limits count: an IPv6 client is its /64."""

import ipaddress


def address_key(address: str) -> str:
    """The bucket of a client address: an IPv6 client is its /64 (one subscriber gets a whole
    /64 and could otherwise take a fresh address per attempt)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address[:64]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)
