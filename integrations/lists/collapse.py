"""
IP collapsing: merge addresses and networks into the fewest ranges or CIDR
blocks, for IPv4 and IPv6.

Addresses are parsed with the standard library (fast and strict) and kept as
integers in compact arrays, so that a million addresses cost a few
megabytes; the minimal CIDR cover of each merged range comes from netaddr.
"""

from __future__ import annotations

import socket
from array import array
from collections.abc import Iterator

import netaddr

from integrations.lists.settings import Collapse

__all__ = ["AddressCollector"]

_BITS = {4: 32, 6: 128}
_FAMILY = {4: socket.AF_INET, 6: socket.AF_INET6}


class AddressCollector:
    """
    Collects the addresses and networks of one IP version and yields them
    collapsed.

    :ivar version: 4 or 6.
    """

    def __init__(self, version: int) -> None:
        self.version = version
        self._bits = _BITS[version]
        self._family = _FAMILY[version]
        # IPv4 intervals are packed as start << 32 | end into one unsigned
        # 64-bit slot; IPv6 ones do not fit and use a plain list.
        self._packed: array[int] = array("Q")
        self._wide: list[tuple[int, int]] = []

    def __len__(self) -> int:
        return len(self._packed) + len(self._wide)

    def add(self, value: str) -> bool:
        """
        Add an address (C{192.0.2.1}) or network (C{192.0.2.0/24}; host bits
        are ignored).

        :returns: C{False} when C{value} is not an address or network of this
            collector's version; it is then not added.
        """
        address, slash, bits_text = value.strip().partition("/")
        try:
            start = int.from_bytes(socket.inet_pton(self._family, address), "big")
        except (OSError, ValueError):
            return False
        bits = self._bits
        if slash:
            if not bits_text.isdigit() or int(bits_text) > self._bits:
                return False
            bits = int(bits_text)
        host_bits = self._bits - bits
        start = (start >> host_bits) << host_bits
        end = start | ((1 << host_bits) - 1)
        if self.version == 4:
            self._packed.append(start << 32 | end)
        else:
            self._wide.append((start, end))
        return True

    def _merged(self) -> Iterator[tuple[int, int]]:
        if self.version == 4:
            intervals: Iterator[tuple[int, int]] = (
                (packed >> 32, packed & 0xFFFFFFFF) for packed in sorted(self._packed)
            )
        else:
            intervals = iter(sorted(self._wide))
        current: tuple[int, int] | None = None
        for start, end in intervals:
            if current is not None and start <= current[1] + 1:
                if end > current[1]:
                    current = (current[0], end)
                continue
            if current is not None:
                yield current
            current = (start, end)
        if current is not None:
            yield current

    def _text(self, number: int) -> str:
        return socket.inet_ntop(self._family, number.to_bytes(self._bits // 8, "big"))

    def collapsed(self, mode: Collapse) -> Iterator[str]:
        """
        Yield the collected addresses merged, in ascending order: as
        C{start-end} ranges, or as CIDR blocks; a single address is written
        bare in both modes.
        """
        for start, end in self._merged():
            if mode is Collapse.RANGES:
                if start == end:
                    yield self._text(start)
                else:
                    yield f"{self._text(start)}-{self._text(end)}"
                continue
            if start == end:
                yield self._text(start)
                continue
            for network in netaddr.iprange_to_cidrs(
                netaddr.IPAddress(start, self.version),
                netaddr.IPAddress(end, self.version),
            ):
                if network.prefixlen == self._bits:
                    yield self._text(int(network.first))
                else:
                    yield f"{self._text(int(network.first))}/{network.prefixlen}"
