"""Unit tests of qat.logging.run_reader / wandb_records on record logs built here and fake API runs.

The end-to-end tests on real wandb runs are in test_wandb_logging.py.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import pytest

from qat.logging import by_name, read_api_runs, read_local_runs, record_from_api_run
from qat.logging.wandb_records import (
    BLOCK_SIZE,
    FILE_HEADER,
    RecordLogError,
    iter_payloads,
)

pb = pytest.importorskip("wandb.proto.wandb_internal_pb2")


# -- a writer for the same format (LevelDB log framing after a 7-byte W&B header) -----------------
def _frame(payloads: list[bytes], block_size: int = BLOCK_SIZE) -> bytes:
    out = bytearray(FILE_HEADER)
    for p in payloads:
        first = True
        while True:
            left = block_size - len(out) % block_size
            if left < 7:
                out += b"\0" * left
                continue
            chunk = p[: left - 7]
            p = p[len(chunk):]
            last = not p
            rtype = 1 if first and last else 2 if first else 4 if last else 3
            crc = zlib.crc32(bytes([rtype]) + chunk)
            out += struct.pack("<IHB", crc, len(chunk), rtype) + chunk
            first = False
            if last:
                break
    return bytes(out)


def _run_rec(run_id, name="t/m/r/w4a4/s0", group="t", tags=("m", "r", "w4a4"), config=None,
             start=1000.0):
    r = pb.Record()
    r.run.run_id, r.run.display_name, r.run.run_group, r.run.project = run_id, name, group, "p"
    r.run.tags.extend(tags)
    r.run.start_time.seconds = int(start)
    for k, v in {"_wandb": {}, **(config or {})}.items():
        it = r.run.config.update.add()
        it.key, it.value_json = k, json.dumps(v)
    return r


def _history(step, **values):
    r = pb.Record()
    for k, v in {"_step": step, **values}.items():
        it = r.history.item.add()
        it.nested_key.append(k)
        it.value_json = json.dumps(v)
    r.history.step.num = step
    return r


def _summary(**values):
    r = pb.Record()
    for k, v in values.items():
        it = r.summary.update.add()
        it.key, it.value_json = k, json.dumps(v)
    return r


def _exit(code):
    r = pb.Record()
    r.exit.exit_code = code
    return r


def _write(path: Path, records, block_size=BLOCK_SIZE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_frame([r.SerializeToString() for r in records], block_size))
    return path


# -- framing --------------------------------------------------------------------------------------
def test_payloads_roundtrip_across_blocks_and_padding():
    rng = __import__("random").Random(0)
    # sizes chosen to hit: full records, records spanning 2-4 blocks, block tails < 7 bytes
    payloads = [bytes(rng.randrange(256) for _ in range(n))
                for n in (10, BLOCK_SIZE - 7 - 7 - 10 - 3, 5, 3 * BLOCK_SIZE + 17, 0, 100)]
    data = _frame(payloads)
    assert len(data) > 4 * BLOCK_SIZE
    assert list(iter_payloads(data, strict=True)) == payloads


def test_bad_header_raises():
    with pytest.raises(RecordLogError):
        list(iter_payloads(b"LEVELDB" + b"\0" * 20))


def test_truncated_tail_keeps_complete_records():
    payloads = [b"a" * 50, b"b" * 50, b"c" * 50]
    data = _frame(payloads)
    assert list(iter_payloads(data[:-10])) == payloads[:2]
    assert list(iter_payloads(data[:7])) == []  # header only: a run killed before any flush


def test_corrupt_record_skips_to_next_block():
    payloads = [b"x" * 100, b"y" * 100, b"z" * (BLOCK_SIZE + 10), b"w" * 10]
    data = bytearray(_frame(payloads))
    data[7 + 7 + 100 + 7 + 3] ^= 0xFF  # flip a byte inside the 2nd payload
    # the 2nd record and the rest of block 0 (the first part of the 3rd) are dropped
    assert list(iter_payloads(bytes(data))) == [payloads[0], payloads[3]]
    with pytest.raises(RecordLogError, match="CRC"):
        list(iter_payloads(bytes(data), strict=True))


# -- parsing and merging --------------------------------------------------------------------------
def test_read_local_runs_parses_and_classifies(tmp_path):
    cfg = {"lr": 0.1, "model": {"name": "mbv2", "bits": 4}}
    _write(tmp_path / "wandb/offline-run-20240101_000000-aaa/run-aaa.wandb", [
        _run_rec("aaa", config=cfg),
        _history(0, loss=1.0), _history(1, loss=0.5),
        _summary(top1=0.9, hist={"_type": "histogram", "values": [1, 2], "bins": [0, 1, 2]}),
        _exit(0)])
    _write(tmp_path / "wandb/run-20240101_000000-bbb/run-bbb.wandb", [  # an online run's dir
        _run_rec("bbb", name="t/m/r/w4a4/s1"), _history(0, loss=2.0), _exit(1)])
    _write(tmp_path / "wandb/offline-run-20240101_000000-ccc/run-ccc.wandb", [
        _run_rec("ccc", name="t/m/r/w4a4/s2"), _history(0, loss=3.0)])
    (tmp_path / "wandb/latest-run").symlink_to(tmp_path / "wandb/offline-run-20240101_000000-ccc")

    runs = {r.run_id: r for r in read_local_runs(tmp_path)}
    assert set(runs) == {"aaa", "bbb", "ccc"}  # latest-run symlink not counted twice
    a = runs["aaa"]
    assert (a.name, a.group, a.tags, a.project) == ("t/m/r/w4a4/s0", "t", ["m", "r", "w4a4"], "p")
    assert a.config == cfg  # "_wandb" dropped, nesting kept
    assert a.summary["top1"] == 0.9 and a.summary["hist"]["values"] == [1, 2]
    assert a.metric("loss") == [1.0, 0.5] and [r["_step"] for r in a.history] == [0, 1]
    assert (a.state, a.exit_code, a.finished) == ("finished", 0, True)
    assert (runs["bbb"].state, runs["bbb"].exit_code) == ("crashed", 1)
    assert runs["ccc"].state == "running"  # no exit record, file just written
    assert read_local_runs(tmp_path, running_window_s=0)[2].state == "killed"
    light = {r.run_id: r for r in read_local_runs(tmp_path, with_history=False)}
    assert light["aaa"].history == [] and light["aaa"].config == cfg and light["aaa"].summary == a.summary
    assert [light[i].state for i in ("aaa", "bbb", "ccc")] == ["finished", "crashed", "running"]


def test_resumed_segments_merge(tmp_path):
    _write(tmp_path / "offline-run-20240101_000000-rrr/run-rrr.wandb", [
        _run_rec("rrr", config={"lr": 0.1, "commit": "old"}, start=1000),
        _history(0, loss=1.0), _history(1, loss=0.9), _history(2, loss=0.8),
        _summary(best=0.5, only_first=1)])  # killed: no exit
    _write(tmp_path / "offline-run-20240101_000100-rrr/run-rrr.wandb", [
        _run_rec("rrr", config={"lr": 0.1, "commit": "new"}, start=2000),
        _history(2, loss=0.7), _history(3, loss=0.6), _summary(best=0.6), _exit(0)])
    [r] = read_local_runs(tmp_path)
    assert r.segments == 2 and r.state == "finished"
    assert r.config == {"lr": 0.1, "commit": "new"}
    assert r.summary == {"best": 0.6, "only_first": 1}
    assert [(h["_step"], h["loss"]) for h in r.history] == [(0, 1.0), (1, 0.9), (2, 0.7), (3, 0.6)]
    assert r.start_time == 1000


def test_resume_order_follows_start_time_not_path(tmp_path):
    # the later segment sorts first by path; start_time decides
    _write(tmp_path / "b/run-x.wandb", [_run_rec("x", start=1000), _history(0, v=1), _exit(1)])
    _write(tmp_path / "a/run-x.wandb", [_run_rec("x", start=2000), _history(0, v=2), _exit(0)])
    [r] = read_local_runs(tmp_path)
    assert r.state == "finished" and r.metric("v") == [2]


def test_bad_file_is_skipped_with_warning(tmp_path):
    (tmp_path / "run-bad.wandb").write_bytes(b"not a wandb file")
    _write(tmp_path / "ok/run-ok.wandb", [_run_rec("ok"), _exit(0)])
    with pytest.warns(UserWarning, match="run-bad.wandb"):
        runs = read_local_runs(tmp_path)
    assert [r.run_id for r in runs] == ["ok"]


def test_by_name_prefers_finished_then_latest(tmp_path):
    _write(tmp_path / "1/run-a.wandb", [_run_rec("a", name="n", start=1000), _exit(0)])
    _write(tmp_path / "2/run-b.wandb", [_run_rec("b", name="n", start=3000), _exit(1)])
    _write(tmp_path / "3/run-c.wandb", [_run_rec("c", name="n", start=2000), _exit(0)])
    _write(tmp_path / "4/run-d.wandb", [_run_rec("d", name="m", start=2000), _exit(1)])
    best = by_name(read_local_runs(tmp_path))
    assert best["n"].run_id == "c" and best["m"].run_id == "d"


# -- the API path ---------------------------------------------------------------------------------
class _FakeRun:
    """Only the attributes wandb.apis.public.Run exposes and record_from_api_run uses."""

    def __init__(self, run_id, name, state, summary, rows, config=None):
        self.id, self.name, self.state = run_id, name, state
        self.entity, self.project = "ent", "proj"
        self.group, self.tags = "table5", ["mbv2", "lsq", "w4a4"]
        self.config = {"lr": 0.1, "_wandb": {"x": 1}, **(config or {})}
        self.summary = summary  # a plain mapping: no summary_metrics attribute
        self._rows = rows

    def scan_history(self):
        return iter(self._rows)


def test_record_from_fake_api_run_and_read_api_runs():
    rows = [{"_step": 1, "loss": 0.5}, {"_step": 0, "loss": 1.0}]
    runs = [_FakeRun("id2", "t/b", "failed", {"top1": 0.1}, []),
            _FakeRun("id1", "t/a", "finished", {"top1": 0.9, "nested": {"a": 1}}, rows)]
    seen = {}

    class FakeApi:
        def runs(self, path, filters=None):
            seen.update(path=path, filters=filters)
            return runs

    recs = read_api_runs("ent/proj", {"group": "table5"}, api=FakeApi())
    assert seen == {"path": "ent/proj", "filters": {"group": "table5"}}
    a, b = recs
    assert (a.run_id, a.name, a.state, a.path) == ("id1", "t/a", "finished", "ent/proj/id1")
    assert a.config == {"lr": 0.1} and a.summary == {"top1": 0.9, "nested": {"a": 1}}
    assert a.tags == ["mbv2", "lsq", "w4a4"] and a.group == "table5"
    assert a.metric("loss") == [1.0, 0.5]
    assert b.state == "crashed" and not b.finished  # the API's "failed" = non-zero exit
    assert read_api_runs("ent/proj", api=FakeApi(), history=False)[0].history == []


def test_record_from_real_public_run_object(tmp_path, monkeypatch):
    """A real wandb.apis.public.Run built from GraphQL-shaped attrs (no server is contacted)."""
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    from wandb.apis.public import Run

    attrs = {
        "id": "UnVuOnYxOnN0b3JhZ2U=", "name": "abc123", "displayName": "t5/mbv2/lsq/w4a4/s0",
        "group": "table5", "tags": ["mbv2", "lsq", "w4a4"], "state": "finished",
        "createdAt": "2024-05-01T12:00:00",
        "config": json.dumps({"lr": {"value": 0.1, "desc": None}, "_wandb": {"value": {"t": 1}}}),
        "summaryMetrics": json.dumps({"top1": 0.9, "_step": 3}),
    }
    run = Run(None, "ent", "proj", "abc123", attrs=attrs)
    run.scan_history = lambda: iter([{"_step": 0, "loss": 1.0}])  # the one server call
    rec = record_from_api_run(run)
    assert (rec.run_id, rec.name, rec.group, rec.state) == ("abc123", "t5/mbv2/lsq/w4a4/s0",
                                                             "table5", "finished")
    assert rec.config == {"lr": 0.1} and rec.summary == {"top1": 0.9, "_step": 3}
    assert rec.history == [{"_step": 0, "loss": 1.0}] and rec.path == "ent/proj/abc123"
    assert rec.start_time == pytest.approx(1714564800.0)
