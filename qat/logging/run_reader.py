"""Read W&B runs back for the table makers: from local run directories or from the W&B API.

`read_local_runs(root)` parses every `run-<id>.wandb` record log under `root` (offline
`offline-run-*` and online `run-*` directories) with wandb's protobuf classes; no server needed.
Segments of one run id (a killed run and its resumes) are merged: config and summary updated in
start order (later values win), history rows merged by `_step` (a later segment's row replaces an
earlier one with the same step).

`read_api_runs("ENTITY/PROJECT")` reads the same fields through `wandb.Api()` (needs a server);
`record_from_api_run` does the conversion and works on anything shaped like
`wandb.apis.public.Run`.

State: "finished" (exit record with code 0), "crashed" (non-zero exit code; the API's "failed" and
"crashed" both map here), "running" (no exit record, file written within `running_window_s`),
"killed" (no exit record, file older than that). Only "finished" runs should fill a table cell.
A record whose file holds a corrupt record (CRC mismatch, a fragment crossing its block, an undecodable
payload) lists it in `damage` and does not count as finished: the lost records may hold its results.
(A file cut mid-record is not damage by itself: a killed run leaves one; a finished run whose file lost its
end reads as killed or running, see qat/run_dir.py for the run directory's view.)
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .wandb_records import RecordLogError, iter_records

# Config keys wandb adds itself; the public API also moves these out of `Run.config`.
WANDB_INTERNAL_KEYS = frozenset({"_wandb", "wandb_version"})
# wandb-core rewrites the file at least every stats interval (15 s) while the run lives.
RUNNING_WINDOW_S = 120.0


@dataclass
class RunRecord:
    run_id: str
    name: str
    group: str
    tags: list[str]
    config: dict[str, Any]
    summary: dict[str, Any]
    history: list[dict[str, Any]]
    state: str  # "finished" | "crashed" | "running" | "killed" (API runs: also W&B's other states)
    path: str  # the .wandb file (several, ";"-joined, for a resumed run) or "entity/project/id"
    exit_code: int | None = None
    project: str = ""
    segments: int = 1  # number of .wandb files merged (1 + number of resumes)
    start_time: float = 0.0  # unix time the (first segment of the) run started; 0 if unknown
    damage: list[str] = field(default_factory=list)  # corrupt records found in its files (none: intact)

    @property
    def finished(self) -> bool:
        """Ended with exit code 0 and read without damage: only such a run fills a table cell."""
        return self.state == "finished" and not self.damage

    def metric(self, key: str) -> list[Any]:
        """The values of one history key in step order (rows that lack it are skipped)."""
        return [row[key] for row in self.history if key in row]


# ------------------------------------------------------------------------------------------------
# local .wandb files
# ------------------------------------------------------------------------------------------------
def _loads(value_json: str) -> Any:
    try:
        return json.loads(value_json)  # accepts NaN / Infinity as wandb writes them
    except ValueError:
        return value_json


def _item_path(item) -> list[str]:
    return list(item.nested_key) if len(item.nested_key) else [item.key]


def _set_path(d: dict, path: list[str], value: Any) -> None:
    for k in path[:-1]:
        nxt = d.get(k)
        if not isinstance(nxt, dict):
            nxt = d[k] = {}
        d = nxt
    d[path[-1]] = value


def _del_path(d: dict, path: list[str]) -> None:
    for k in path[:-1]:
        d = d.get(k)
        if not isinstance(d, dict):
            return
    d.pop(path[-1], None)


def _history_value(item) -> Any:
    if item.value_json:
        return _loads(item.value_json)
    kind = item.WhichOneof("value")
    if kind is None or kind == "none":
        return None
    if kind == "json":
        return _loads(item.json)
    return getattr(item, kind)


def _apply_config(config: dict, rec) -> None:
    for item in rec.update:
        _set_path(config, _item_path(item), _loads(item.value_json))
    for item in rec.remove:
        _del_path(config, _item_path(item))


@dataclass
class _Segment:
    """What one .wandb file says."""

    path: Path
    run_id: str
    name: str = ""
    group: str = ""
    tags: list[str] = field(default_factory=list)
    project: str = ""
    start_time: float = 0.0
    config: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    exit_code: int | None = None
    mtime: float = 0.0
    damage: list[str] = field(default_factory=list)


def read_run_file(path: str | Path, *, with_history: bool = True) -> _Segment:
    """Parse one `run-<id>.wandb` file into a segment (no merging, no state). Without history, the rows
    are not built (most of the parsing time): for callers that need only config, summary and state."""
    path = Path(path)
    run_id = path.stem[len("run-"):] if path.stem.startswith("run-") else path.stem
    seg = _Segment(path=path, run_id=run_id, mtime=path.stat().st_mtime)
    summary_ops: dict[tuple[str, ...], tuple[str, str]] = {}
    for rec in iter_records(path, problems=seg.damage):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            r = rec.run
            seg.run_id = r.run_id or seg.run_id
            seg.name = r.display_name or seg.name
            seg.group = r.run_group or seg.group
            seg.tags = list(r.tags) or seg.tags
            seg.project = r.project or seg.project
            if r.HasField("start_time"):
                seg.start_time = r.start_time.seconds + r.start_time.nanos * 1e-9
            _apply_config(seg.config, r.config)
        elif kind == "config":
            _apply_config(seg.config, rec.config)
        elif kind == "summary":
            # A run re-sends its summary keys with every log: keep each path's last operation and parse its
            # JSON once at the end (half the reading time otherwise). Applied in order, the kept operations
            # give what all of them would: a later one on a path overrides everything earlier on it.
            for ops, items in (("set", rec.summary.update), ("del", rec.summary.remove)):
                for item in items:
                    path = tuple(_item_path(item))
                    summary_ops.pop(path, None)
                    summary_ops[path] = (ops, item.value_json)
        elif kind == "history" and with_history:
            row: dict[str, Any] = {}
            for item in rec.history.item:
                _set_path(row, _item_path(item), _history_value(item))
            if "_step" not in row and rec.history.HasField("step"):
                row["_step"] = rec.history.step.num
            seg.history.append(row)
        elif kind == "exit":
            seg.exit_code = rec.exit.exit_code
    for path, (op, value_json) in summary_ops.items():
        if op == "set":
            _set_path(seg.summary, list(path), _loads(value_json))
        else:
            _del_path(seg.summary, list(path))
    for k in WANDB_INTERNAL_KEYS:
        seg.config.pop(k, None)
    return seg


def _state(exit_code: int | None, mtime: float, now: float, running_window_s: float) -> str:
    if exit_code is None:
        return "running" if now - mtime < running_window_s else "killed"
    return "finished" if exit_code == 0 else "crashed"


def _merge(segments: list[_Segment], now: float, running_window_s: float) -> RunRecord:
    segments = sorted(segments, key=lambda s: (s.start_time, s.mtime))
    config: dict = {}
    summary: dict = {}
    rows: dict[Any, dict] = {}
    unstepped: list[dict] = []
    name = group = project = ""
    tags: list[str] = []
    for seg in segments:
        name, group, project = seg.name or name, seg.group or group, seg.project or project
        tags = seg.tags or tags
        config.update(seg.config)
        summary.update(seg.summary)
        for row in seg.history:
            if "_step" in row:
                rows[row["_step"]] = row
            else:
                unstepped.append(row)
    last = segments[-1]
    damage = [f"{s.path}: {p}" for s in segments for p in s.damage]
    history = [rows[s] for s in sorted(rows)] + unstepped
    return RunRecord(
        run_id=last.run_id,
        name=name,
        group=group,
        tags=tags,
        config=config,
        summary=summary,
        history=history,
        state=_state(last.exit_code, last.mtime, now, running_window_s),
        path=";".join(str(s.path) for s in segments),
        exit_code=last.exit_code,
        project=project,
        segments=len(segments),
        start_time=segments[0].start_time,
        damage=damage,
    )


def find_run_files(root: str | Path) -> list[Path]:
    """Every `run-*.wandb` under `root` once (the `latest-run` symlink is not followed twice)."""
    root = Path(root)
    if root.is_file():
        return [root]
    seen: dict[Path, Path] = {}
    for p in sorted(root.rglob("run-*.wandb")):
        if p.is_file():
            seen.setdefault(p.resolve(), p)
    return sorted(seen.values())


def read_local_runs(
    root: str | Path | Iterable[str | Path],
    *,
    running_window_s: float = RUNNING_WINDOW_S,
    with_history: bool = True,
) -> list[RunRecord]:
    """All runs whose `.wandb` files lie under `root` (a directory, a file, or several of them).

    A file that is not a W&B record log is skipped with a warning. Runs come back sorted by name.
    `with_history=False` leaves every record's history empty (see `read_run_file`).
    """
    roots = [root] if isinstance(root, (str, Path)) else list(root)
    files: list[Path] = []
    for r in roots:
        files.extend(find_run_files(r))
    by_id: dict[str, list[_Segment]] = {}
    for f in dict.fromkeys(files):
        try:
            seg = read_run_file(f, with_history=with_history)
        except (RecordLogError, OSError) as e:
            warnings.warn(f"skipping {f}: {e}", stacklevel=2)
            continue
        by_id.setdefault(seg.run_id, []).append(seg)
    now = time.time()
    runs = [_merge(segs, now, running_window_s) for segs in by_id.values()]
    return sorted(runs, key=lambda r: (r.name, r.run_id))


def by_name(records: Iterable[RunRecord]) -> dict[str, RunRecord]:
    """One run per name: the most recently started finished run, else the most recent run.

    (A run restarted from scratch gets a new id and so a second record with the same name.)
    """
    best: dict[str, RunRecord] = {}
    for r in records:
        cur = best.get(r.name)
        if cur is None or (r.finished, r.start_time) > (cur.finished, cur.start_time):
            best[r.name] = r
    return best



# ------------------------------------------------------------------------------------------------
# Run directories (runs/<preset>/<table>/<model>/<recipe>/w<b>a<b>/s<seed>; qat/run_dir.py writes them)
# ------------------------------------------------------------------------------------------------
RESULT_NAME = "result.json"  # written when a run has finished
CONFIG_NAME = "config.json"  # the configuration the directory's run was trained with
# Left by the launcher (experiments/reuse.py) in a cell whose run it did not train because another table of the
# same preset finished an identical one: {"run": "<table>/<model>/<recipe>/w<b>a<b>/s<seed>"}, relative to
# runs/<preset>/.
REUSED_FROM_NAME = "reused_from.json"


def read_run_dir(run_dir: str | Path) -> tuple[list[RunRecord], list[str]]:
    """The W&B runs under `run_dir` (no history) and the messages of the files that could not be read at all."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        records = read_local_runs(run_dir, with_history=False)
    return records, [str(w.message) for w in caught]


def finished_record(run_dir: str | Path) -> RunRecord | None:
    """The newest finished W&B run in a run directory that holds result.json; None otherwise (no history)."""
    if not (Path(run_dir) / RESULT_NAME).is_file():
        return None
    done = [r for r in read_local_runs(run_dir, with_history=False) if r.finished]
    return max(done, key=lambda r: r.start_time) if done else None


def _under(record: RunRecord, run_dir: Path) -> bool:
    return any(Path(p).is_relative_to(run_dir) for p in record.path.split(";"))


def _logs_wandb(run_dir: Path) -> bool:
    """Whether the configuration recorded in `run_dir` logs to W&B (a ValueError when it is unreadable)."""
    path = run_dir / CONFIG_NAME
    if not path.is_file():
        return False
    try:
        config = json.loads(path.read_text())
    except ValueError:
        raise ValueError(f"{path} is unreadable: delete the run directory {run_dir} to train it again") from None
    return bool(config and config.get("wandb", False))


def run_problem(run_dir: str | Path, records: list[RunRecord] | None = None) -> str | None:
    """Why a run directory holding result.json is not a finished run the tables can read (its W&B record is
    damaged, cut short or absent); None when it is one, or when it logged no W&B run. `records`: the W&B runs
    read already (those under `run_dir` are used), else its files are read here."""
    run_dir = Path(run_dir)
    if records is None:
        records, unreadable = read_run_dir(run_dir)
    else:
        records, unreadable = [r for r in records if _under(r, run_dir)], []
    if any(r.finished for r in records):
        return None
    damage = [d for r in records for d in r.damage]
    if damage:
        return f"its W&B file is damaged ({damage[0]})"
    if unreadable:
        return f"its W&B file is unreadable ({unreadable[0]})"
    if records:
        last = max(records, key=lambda r: r.start_time)
        return f"its W&B file {last.path.split(';')[-1]} ends before the run's end (truncated?)"
    if _logs_wandb(run_dir):
        return "it holds no W&B run file"
    return None


def reused_source(run_dir: str | Path) -> Path | None:
    """The run directory the launcher reused for this cell (its REUSED_FROM_NAME pointer), else None."""
    run_dir = Path(run_dir)
    try:
        pointer = json.loads((run_dir / REUSED_FROM_NAME).read_text())
    except (OSError, ValueError):
        return None
    run = pointer.get("run") if isinstance(pointer, dict) else None
    return run_dir.parents[4] / run if isinstance(run, str) and len(run_dir.parents) > 4 else None


# ------------------------------------------------------------------------------------------------
# W&B API
# ------------------------------------------------------------------------------------------------
_API_STATE = {"failed": "crashed"}


def _plain_dict(obj: Any) -> dict:
    """A plain dict from a dict, `HTTPSummary`/`SummarySubDict`, or a JSON string."""
    if obj is None:
        return {}
    if isinstance(obj, (str, bytes, bytearray)):
        return json.loads(obj)
    if isinstance(obj, Mapping):
        return {k: _plain_dict(v) if isinstance(v, Mapping) else v for k, v in obj.items()}
    json_dict = getattr(obj, "_json_dict", None)  # wandb's summary objects
    if isinstance(json_dict, Mapping):
        return _plain_dict(json_dict)
    return dict(obj)


def record_from_api_run(run: Any, *, history: bool = True) -> RunRecord:
    """Convert a `wandb.apis.public.Run` (or an object with the same attributes) to a RunRecord.

    Uses `run.id`, `.name`, `.group`, `.tags`, `.config`, `.summary_metrics` (else `.summary`),
    `.state`, `.entity`/`.project`, and `.scan_history()` for the history rows.
    """
    summary_src = getattr(run, "summary_metrics", None)
    if summary_src is None:
        summary_src = getattr(run, "summary", None)
    config = {k: v for k, v in _plain_dict(getattr(run, "config", None)).items()
              if k not in WANDB_INTERNAL_KEYS}
    rows = [dict(r) for r in run.scan_history()] if history else []
    rows.sort(key=lambda r: r.get("_step", float("inf")))
    state = str(getattr(run, "state", "") or "").lower()
    state = _API_STATE.get(state, state)
    entity, project = getattr(run, "entity", ""), getattr(run, "project", "")
    attrs = getattr(run, "_attrs", None) or {}
    created = getattr(run, "created_at", None) or attrs.get("createdAt")
    return RunRecord(
        run_id=run.id,
        name=getattr(run, "name", None) or "",
        group=getattr(run, "group", None) or "",
        tags=list(getattr(run, "tags", None) or []),
        config=config,
        summary=_plain_dict(summary_src),
        history=rows,
        state=state,
        path="/".join(str(p) for p in (entity, project, run.id)),
        exit_code=None,
        project=project or "",
        start_time=_iso_time(created),
    )


def _iso_time(value: Any) -> float:
    """The API's `createdAt` (ISO time, UTC unless it names a zone) as unix time; 0 if absent."""
    if not value:
        return 0.0
    from datetime import datetime, timezone

    try:
        t = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return 0.0
    if t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)
    return t.timestamp()


def read_api_runs(
    path: str,
    filters: Mapping[str, Any] | None = None,
    *,
    history: bool = True,
    api: Any = None,
) -> list[RunRecord]:
    """Runs of `ENTITY/PROJECT` through `wandb.Api()` (needs a reachable server and a login).

    `filters` is W&B's MongoDB-style run filter, e.g. `{"group": "table5"}`.
    """
    if api is None:
        import wandb

        api = wandb.Api()
    runs = api.runs(path, filters=dict(filters) if filters else None)
    records = [record_from_api_run(r, history=history) for r in runs]
    return sorted(records, key=lambda r: (r.name, r.run_id))
