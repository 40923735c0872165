"""Which targets one of N exporter replicas probes: rendezvous (highest random weight) hashing of the URL.

Each replica decides alone from the same target list, with no coordination: a target belongs to the
shard whose (shard, URL) hash is highest. Growing N to N+1 moves only the targets whose new shard wins,
about 1/(N+1) of them, and every module of one whoAsr stays on one replica (its health gate then keeps
/health and the probes of that server apart).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Optional

MAX_SHARDS = 1024
_SPEC = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


class ShardError(ValueError):
    """A shard spec that cannot be used; the message says what is expected."""


def parse_shard(spec: str) -> "Shard":
    """'I/N' (0 <= I < N) -> Shard; raises ShardError naming the expected form."""
    match = _SPEC.match(spec or "")
    if not match:
        raise ShardError(f"expected I/N like 0/3 (shard I of N, counted from 0), got {spec!r}")
    index, count = int(match.group(1)), int(match.group(2))
    if not 1 <= count <= MAX_SHARDS:
        raise ShardError(f"the number of shards must be 1..{MAX_SHARDS}, got {count}")
    if index >= count:
        raise ShardError(f"shard index {index} is out of range for {count} shards (0..{count - 1})")
    return Shard(index, count)


def _weight(shard: int, url: str) -> bytes:
    return hashlib.blake2b(url.encode("utf-8"), digest_size=8, key=shard.to_bytes(4, "big")).digest()


def shard_of(url: str, count: int) -> int:
    """The shard (0..count-1) that owns `url`: the one with the highest weight."""
    if count == 1:
        return 0
    return max(range(count), key=lambda shard: _weight(shard, url))


@dataclass(frozen=True)
class Shard:
    index: int = 0
    count: int = 1
    _owners: dict = field(default_factory=dict, compare=False, repr=False)  # url -> owning shard

    def keeps(self, url: str) -> bool:
        if self.count == 1:
            return True
        owner = self._owners.get(url)
        if owner is None:
            owner = self._owners[url] = shard_of(url, self.count)
        return owner == self.index

    def forget_except(self, urls: set[str]) -> None:
        """Drops cached owners of URLs no longer listed (the cache stays as large as the target list)."""
        for url in [u for u in self._owners if u not in urls]:
            del self._owners[url]

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


NO_SHARD = Shard()


def effective_shard(cli: Optional[str], configured: Optional[str]) -> Shard:
    """`--shard` wins over `exporter.shard`; neither means one shard (keep every target)."""
    spec = cli or configured
    return parse_shard(spec) if spec else Shard()
