"""Hostile prompt lines: each one becomes a counted reject with a reason; none crashes a load or hangs it."""

from __future__ import annotations

import gzip
import time
from pathlib import Path

import pytest

from tao_trainer.prompts import iter_lines_capped, load_prompts
from tao_trainer.spec.loop import PromptsSpec

GOOD = b'{"prompt": "fine"}\n'

# name -> (line, what the reason says)
HOSTILE: dict[str, tuple[bytes, str]] = {
    "deep nesting in a field": (b'{"prompt": "x", "m": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested"),
    "deep nesting as the prompt": (b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested"),
    "deep object nesting": (b'{"a":' * 50_000 + b"1" + b"}" * 50_000, "nested"),
    "lone high surrogate in the prompt": (b'{"prompt": "a \\ud800 b"}', "lone surrogate"),
    "lone low surrogate in a field": (b'{"prompt": "a", "f": "\\udfff"}', "lone surrogate"),
    "lone surrogate in a key": (b'{"prompt": "a", "\\ud9ff": 1}', "lone surrogate"),
    "lone surrogate in messages": (
        b'{"prompt": [{"role": "user", "content": "\\udc80"}]}',
        "lone surrogate",
    ),
    "invalid utf-8": (b'{"prompt": "\xff\xfe"}', "not valid JSON"),
    "NaN number": (b'{"prompt": NaN}', "must be"),
    "huge integer": (b'{"prompt": "x", "n": ' + b"9" * 5000 + b"}", "not valid JSON"),
    "line over the cap": (b'{"prompt": "' + b"a" * 5000 + b'"}', "longer than maxLineBytes"),
    "NUL bytes": (b'{"prompt": "a\\u0000b"}\x00', "not valid JSON"),
    "a bare string": (b'"prompt"', "not a JSON object"),
    "prompt is an object": (b'{"prompt": {"role": "user"}}', "must be"),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_each_hostile_line_is_a_counted_reject_and_the_rest_loads(tmp_path: Path, name: str) -> None:
    line, reason = HOSTILE[name]
    path = tmp_path / "p.jsonl"
    path.write_bytes(GOOD + line + b"\n" + b'{"prompt": "after"}\n')
    result = load_prompts(path.as_uri(), max_line_bytes=4096 if "cap" in name else 16 << 20)
    assert [r.prompt for r in result.records] == ["fine", "after"]
    assert len(result.rejects) == 1, result.rejects
    reject = result.rejects[0]
    assert reject.line == 2 and reason in reject.reason, reject.reason
    reject.raw.encode("utf-8")  # the reject itself can be written and shown


def test_surrogate_pairs_are_not_lone_surrogates(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_bytes(b'{"prompt": "smile \\ud83d\\ude00"}\n')
    result = load_prompts(path.as_uri())
    assert [r.prompt for r in result.records] == ["smile \U0001f600"] and not result.rejects


def test_an_over_long_line_is_never_held_whole(tmp_path: Path) -> None:
    """A 4 MiB line past a 64 KiB cap: reported with its length; the lines around it load."""
    path = tmp_path / "p.jsonl.gz"
    with gzip.open(path, "wb") as f:
        f.write(GOOD + b'{"prompt": "' + b"a" * (4 << 20) + b'"}\r\n' + GOOD.replace(b"fine", b"end"))
    lines = list(iter_lines_capped(path.as_uri(), 64 << 10))
    assert [size for _, size in lines] == [18, (4 << 20) + 15, 17]
    assert lines[1][0] == b""
    result = load_prompts(path.as_uri(), max_line_bytes=64 << 10)
    assert [r.prompt for r in result.records] == ["fine", "end"]
    assert "longer than maxLineBytes (65536)" in result.rejects[0].reason


def _load_seconds(path: Path, size: int) -> float:
    path.write_bytes(b'{"prompt": "' + b"a" * size + b'"}\n')
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        assert len(load_prompts(path.as_uri(), max_line_bytes=64 << 20).records) == 1
        best = min(best, time.perf_counter() - started)
    return best


def test_long_lines_are_read_in_linear_time(tmp_path: Path) -> None:
    """By ratio, not wall clock: 8x the line, at most half the 64x time quadratic reading gives (lines of a few
    MiB, so that fixed costs and a loaded machine's noise do not decide the ratio)."""
    small = _load_seconds(tmp_path / "s.jsonl", 4 << 20)
    large = _load_seconds(tmp_path / "l.jsonl", 32 << 20)
    assert large / small < 32, (small, large)


def test_max_line_bytes_is_a_bounded_spec_field() -> None:
    assert PromptsSpec(uri="s3://b/p/").max_line_bytes == 16 << 20
    assert PromptsSpec.model_validate({"uri": "s3://b/p/", "maxLineBytes": 1 << 20}).max_line_bytes == 1 << 20
    for bad in (0, 10, 2 << 30):
        with pytest.raises(ValueError):
            PromptsSpec.model_validate({"uri": "s3://b/p/", "maxLineBytes": bad})
