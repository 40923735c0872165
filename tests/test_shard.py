"""Shard selection: rendezvous hashing of the target URL, its balance and its stability when growing."""

from __future__ import annotations

import subprocess
import sys

import pytest

from exporter.config import ConfigError, parse_config
from exporter.shard import Shard, ShardError, effective_shard, parse_shard, shard_of
from tests.support import ROOT

URLS = [f"http://asr-{i}.example.internal:8000" for i in range(3000)]


@pytest.mark.parametrize("spec, expected", [("0/1", (0, 1)), ("2/3", (2, 3)), (" 1 / 4 ", (1, 4))])
def test_parse_shard(spec, expected):
    shard = parse_shard(spec)
    assert (shard.index, shard.count) == expected


@pytest.mark.parametrize("spec, message", [
    ("3/3", "out of range for 3 shards (0..2)"),
    ("1", "expected I/N like 0/3"),
    ("a/b", "expected I/N like 0/3"),
    ("0/0", "must be 1..1024"),
    ("-1/2", "expected I/N"),
])
def test_parse_shard_rejects_with_the_expected_form(spec, message):
    with pytest.raises(ShardError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        parse_shard(spec)


def test_every_target_has_exactly_one_shard_and_shards_are_balanced():
    for count in (2, 3, 5, 8):
        shards = [Shard(i, count) for i in range(count)]
        per_shard = [sum(1 for url in URLS if shard.keeps(url)) for shard in shards]
        assert sum(per_shard) == len(URLS), "every target is kept by exactly one shard"
        for url in URLS[:200]:
            assert [shard.keeps(url) for shard in shards].count(True) == 1
        assert max(per_shard) / (len(URLS) / count) < 1.15, per_shard


def test_growing_moves_only_targets_to_the_new_shard_and_about_one_in_n_plus_one():
    for count in (1, 2, 4, 7):
        before = {url: shard_of(url, count) for url in URLS}
        after = {url: shard_of(url, count + 1) for url in URLS}
        moved = [url for url in URLS if before[url] != after[url]]
        assert all(after[url] == count for url in moved), "a target only ever moves to the new shard"
        share = len(moved) / len(URLS)
        assert abs(share - 1 / (count + 1)) < 0.03, (count, share)


def test_the_owner_is_stable_across_processes():
    """The hash is no per-process random hash(): every replica must compute the same owner."""
    code = ("import sys; from exporter.shard import shard_of; "
            "print(','.join(str(shard_of(u, 5)) for u in sys.argv[1:]))")
    sample = URLS[:50]
    out = subprocess.run([sys.executable, "-c", code, *sample], capture_output=True, text=True, cwd=ROOT,
                         timeout=60, env={"PYTHONHASHSEED": "123", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ",".join(str(shard_of(u, 5)) for u in sample)


def test_cli_flag_wins_over_config_and_config_is_validated():
    assert effective_shard("1/2", "0/4") == Shard(1, 2)
    assert effective_shard(None, "3/4") == Shard(3, 4)
    assert effective_shard(None, None) == Shard(0, 1)
    assert parse_config({"exporter": {"shard": "2/3"}}).exporter.shard == "2/3"
    with pytest.raises(ConfigError, match=r"exporter\.shard: shard index 3 is out of range"):
        parse_config({"exporter": {"shard": "3/3"}}, "x.yaml")


def test_serve_refuses_a_bad_shard_flag(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("targets: []\n")
    out = subprocess.run([sys.executable, "-m", "exporter", "serve", "--config", str(config), "--shard", "2/2"],
                         capture_output=True, text=True, cwd=ROOT, timeout=60, stdin=subprocess.DEVNULL)
    assert out.returncode == 2
    assert "--shard: shard index 2 is out of range for 2 shards" in out.stderr
