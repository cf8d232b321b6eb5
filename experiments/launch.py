"""Launch a table's experiments from its config (`experiments/<table>/config.yaml`):
`python -m experiments.launch experiments/table5_ablation/config.yaml` (run_table.sh calls it).

Every (model, bits, seed, recipe) becomes one `python -m qat.train` (classification) or
`python -m qat.detection` (detection) run in its own process: a finished run is skipped (with a warning
when it finished with other training settings than the launcher gives it now), a killed one
resumes (`--resume`), and recipes that share a prefix branch from their parent's checkpoint (the launcher
orders parents first from `Recipe.branch_from`, whatever the config's order). A run that another table of
the same preset has finished with the same training configuration is reused instead of trained again
(experiments/reuse.py): the cell's run directory gets a pointer to that run, from which the table makers
fill the cell. Extra arguments pass through to every run; they are checked with the runs'
own parsers before anything starts. One progress bar with an ETA covers the whole table. A failed run is
reported and the launcher goes on; it exits non-zero at the end if any run failed, and the table maker then
shows that cell as missing.

A run counts as finished when its result.json exists and its W&B record reads back complete
(qat/run_dir.py). A run that another process (a second launcher) is training is waited for, not trained
twice: each run directory is locked by the process training it. The runs die with the launcher
(experiments/child_processes.py).
"""
from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from qat.cli import OneLineErrorParser, device_option, positive_int
from qat.config import FP_TABLE, fp_cache_path, fp_run_dir, run_name, runs_root
from qat.presets import PRESET_NAMES
from qat.recipes import RECIPES, canonical_recipe
from qat.run_dir import WAIT_ENV, locked_by_other, run_finished

from .child_processes import run_child, stop_children_on_signals
from .launch_config import DETECTORS, check_names, known_models, load_config, parse_bits, parse_seeds
from .launch_progress import LaunchProgress
from .reuse import find_identical_run, forget_source, point_to, trained_otherwise

REPO = Path(__file__).resolve().parent.parent  # the runs' working directory: `python -m qat.train` finds qat here


@dataclass(frozen=True)
class RunSpec:
    table: str
    model: str
    recipe: str
    bits: int
    seed: int
    preset: str = "proxy"

    @property
    def name(self) -> str:
        return run_name(self.table, self.model, self.recipe, self.bits, self.seed)

    @property
    def run_dir(self) -> Path:
        return runs_root() / self.preset / self.name

    @property
    def finished(self) -> bool:
        """result.json and a W&B record that reads back complete (a damaged run is not finished)."""
        return run_finished(self.run_dir)


def parents_first(recipes: list[str]) -> list[str]:
    """`recipes` in their order, except that each comes after the recipe it branches from when that is listed
    too (`Recipe.branch_from`): a branch starts from its parent's checkpoint."""
    ordered: list[str] = []

    def add(name: str) -> None:
        if name in ordered:
            return
        parent = RECIPES[name].branch_from
        if parent is not None and parent[0] in recipes:
            add(parent[0])
        ordered.append(name)

    for name in recipes:
        add(name)
    return ordered


def plan(cfg: dict, seeds: list[int], preset: str, models: list[str] | None = None) -> list[RunSpec]:
    """The table's runs, every branch after its parent (parents_first)."""
    chosen = models or cfg["models"]
    return [RunSpec(cfg["table"], m, r, b, s, preset) for m in chosen for b in cfg["bits"] for s in seeds
            for r in parents_first(cfg["recipes"])]


def run_args(spec: RunSpec, preset: str, device: str, extra: list[str]) -> list[str]:
    """The arguments of a run's CLI (`command` without the interpreter and module)."""
    return ["--model", spec.model, "--recipe", spec.recipe, "--bits", str(spec.bits), "--seed", str(spec.seed),
            "--preset", preset, "--table", spec.table, "--device", device, "--resume", *extra]


def command(spec: RunSpec, preset: str, device: str, extra: list[str]) -> list[str]:
    module = "qat.detection" if spec.model in DETECTORS else "qat.train"
    return [sys.executable, "-m", module, *run_args(spec, preset, device, extra)]


def fp_command(model: str, preset: str, device: str) -> list[str]:
    """The FP pretraining run of a model (trained once per preset, shared by every table)."""
    return [sys.executable, "-m", "qat.detection" if model in DETECTORS else "qat.train",
            "--model", model, "--recipe", "fp", "--preset", preset, "--table", FP_TABLE, "--device", device,
            "--resume"]


def run_config(spec: RunSpec, preset: str, device: str, extra: list[str]) -> dict:
    """The configuration the run's own CLI resolves from its command (as it logs it), parsed here with that
    CLI's parser: a bad extra argument ends with its one `error:` line (SystemExit 2) before anything runs.
    The one place the launcher builds a run's configuration (reuse and the stale-run check compare it)."""
    from qat.cli import parse_config
    return parse_config(run_args(spec, preset, device, extra)).to_dict()


def launcher_set_keys(spec: RunSpec, preset: str, device: str, config: dict) -> list[str]:
    """The settings the launcher gives each run itself that `config` (a run_config) has otherwise: extra
    arguments that set them (`--table`, `--seed`, an abbreviation of one...) would put the run where the
    launcher does not look for it."""
    wanted = {"model": spec.model, "recipe": spec.recipe, "seed": spec.seed, "preset": preset, "table": spec.table,
              "device": device, "out": None, "resume": True}
    if spec.recipe != "fp":
        wanted["bits"] = spec.bits
    return [key for key, value in wanted.items() if config.get(key) != value]


def _error_line(log: Path) -> str:
    """The last `error:` line a run wrote to its log, for the launcher's FAILED line."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return next((f": {line.strip()}" for line in reversed(lines) if line.startswith("error:")), "")


def default_jobs(device: str) -> int:
    """One run at a time on a GPU; on a CPU one single-threaded run per core (up to 4), which on small
    proxy models is faster than one run using every core."""
    if device.startswith("cuda"):
        return 1
    if device in ("auto", ""):
        import torch
        if torch.cuda.is_available():
            return 1
    return max(1, min(4, os.cpu_count() or 1))


def main(argv=None) -> int:
    p = OneLineErrorParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", type=Path)
    p.add_argument("--preset", default=os.environ.get("PRESET", "proxy"), help=f"$PRESET; {', '.join(PRESET_NAMES)}")
    p.add_argument("--seeds", default=os.environ.get("SEEDS"), help="$SEEDS, space/comma separated; default: the config's")
    p.add_argument("--device", default=os.environ.get("DEVICE", "auto"), type=device_option(),
                   help="$DEVICE: auto, cpu, cuda or cuda:N")
    p.add_argument("--models", default=os.environ.get("MODELS"), help="restrict to these models (comma separated)")
    p.add_argument("--bits", default=os.environ.get("BITS"), help="$BITS: restrict to these of the config's bits")
    p.add_argument("--recipes", default=os.environ.get("RECIPES"),
                   help="restrict to these recipes (comma separated; a branch still trains its parent)")
    p.add_argument("--jobs", type=positive_int, default=os.environ.get("JOBS") or None,
                   help="run this many (model, bits, seed) groups at once (each group stays in order); "
                        "default: 1 on a GPU, else one per CPU core up to 4")
    p.add_argument("--dry-run", action="store_true")
    args, extra = p.parse_known_args(argv)
    try:  # everything checked before anything trains or is written
        cfg = load_config(args.config)
        if args.preset not in PRESET_NAMES:
            raise ValueError(f"--preset / PRESET: unknown preset {args.preset!r}; allowed: {', '.join(PRESET_NAMES)}")
        seeds = parse_seeds(args.seeds) if args.seeds else cfg.get("seeds", [0])
        if args.bits:
            cfg = dict(cfg, bits=parse_bits(args.bits, cfg["bits"]))
        models = args.models.split(",") if args.models else None
        check_names("model in --models / MODELS", models or [], known_models())
        recipes = [canonical_recipe(r) for r in args.recipes.split(",")] if args.recipes else None
        check_names("recipe in --recipes / RECIPES", recipes or [], cfg["recipes"])
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.jobs is None:
        args.jobs = default_jobs(args.device)
    runs = plan(cfg, seeds, args.preset, models)
    if recipes:
        runs = [r for r in runs if r.recipe in recipes]
    extra = list(cfg.get("extra_args", {}).get(args.preset, [])) + extra
    try:  # every run's configuration as its CLI resolves it; a bad extra argument stops here
        expected = {r: run_config(r, args.preset, args.device, extra) for r in runs}
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 2
    taken = sorted({k for r in runs for k in launcher_set_keys(r, args.preset, args.device, expected[r])})
    if taken:
        print(f"error: the extra arguments {' '.join(extra)} set {', '.join(taken)}, which the launcher sets for "
              f"each run (choose runs with MODELS, RECIPES, SEEDS, PRESET, DEVICE)", file=sys.stderr)
        return 2

    def reusable(r: RunSpec) -> Path | None:
        """An identical finished run of another table. A branch recipe still finds its parent
        through its own table (Trainer.parent_checkpoint): when the branch itself is not reusable, its parent
        is trained again in this table even if it was reused here."""
        return find_identical_run(r.preset, r.table, r.model, r.recipe, r.bits, r.seed, expected[r])

    otherwise = [r for r in runs if r.finished and
                 trained_otherwise(r.preset, r.table, r.model, r.recipe, r.bits, r.seed, expected[r])]
    if extra and otherwise:  # the user asks for other settings than these runs have: refuse, never skip them
        print(f"error: {len(otherwise)} finished run(s) were trained with other settings than the extra arguments "
              f"{' '.join(extra)} give them ({', '.join(r.name for r in otherwise[:3])}"
              f"{', ...' if len(otherwise) > 3 else ''}): delete their directories under "
              f"{runs_root() / args.preset} to train them with these settings", file=sys.stderr)
        return 2
    for r in runs:
        if r in otherwise:  # (a preset or default edited since the run finished)
            print(f"[{cfg['table']}] warning: {r.name} finished with other training settings than this "
                  f"launch gives it (a preset or default edited since?); it is kept as finished: delete "
                  f"{r.run_dir} to train it again", file=sys.stderr, flush=True)
        elif not r.finished and (r.run_dir / "result.json").is_file():
            print(f"[{cfg['table']}] warning: {r.name} finished, but its W&B record cannot be read: it does "
                  f"not count as finished ({r.run_dir})", file=sys.stderr, flush=True)
    todo = [r for r in runs if not r.finished]
    reuse = {r: reusable(r) for r in todo}
    print(f"[{cfg['table']}] preset {args.preset}: {len(runs)} runs, {len(runs) - len(todo)} finished already, "
          f"{sum(map(bool, reuse.values()))} reusable from other tables", flush=True)
    if args.dry_run:
        for r in runs:
            if reuse.get(r):
                print(f"reuse {r.name} from {reuse[r]}")
            else:
                print(("done " if r.finished else "todo ") + " ".join(command(r, args.preset, args.device, extra)))
        return 0
    log_dir = runs_root() / args.preset / cfg["table"] / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    groups: dict[tuple, list[RunSpec]] = {}
    # seed-major order: with a partial budget every (model, bits) gets its first seed before any second one
    for r in sorted(todo, key=lambda r: (r.seed, runs.index(r))):  # runs of one (model, bits, seed) share prefixes, so they run in order
        groups.setdefault((r.model, r.bits, r.seed), []).append(r)
    failed: list[str] = []
    lock = threading.Lock()
    job_env = {**os.environ, "TQDM_DISABLE": "1", WAIT_ENV: "1"}  # a run another launcher trains is waited for
    stop_children_on_signals()
    if args.jobs > 1 and "OMP_NUM_THREADS" not in os.environ:
        # parallel jobs share the cores: OpenMP threads beyond a job's share only wait on each other
        job_env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // args.jobs))

    def run_group(group: list[RunSpec]) -> None:
        for r in group:
            source = None if r.finished else reusable(r)  # checked again: another table may have finished it
            if source is not None:
                point_to(r.run_dir, source)  # what the table makers read for this cell
                with lock:
                    tqdm.write(f"[{cfg['table']}] reused {r.name} from {source}")
            elif not r.finished:  # a branch may have trained its parent already
                forget_source(r.run_dir)  # a run reused here before no longer fits: this cell trains its own
                log = log_dir / (r.name.replace("/", "__") + ".log")
                t0 = time.time()
                progress.start(r.name)
                if locked_by_other(r.run_dir):
                    with lock:
                        tqdm.write(f"[{cfg['table']}] waiting for {r.name}: another process is training it")
                with open(log, "a") as f:
                    code = run_child(command(r, args.preset, args.device, extra), f, cwd=REPO, env=job_env)
                with lock:
                    if code != 0:
                        failed.append(r.name)
                        tqdm.write(f"[{cfg['table']}] FAILED {r.name} (exit {code}{_error_line(log)}); log: {log}")
                    else:
                        tqdm.write(f"[{cfg['table']}] done {r.name} in {time.time() - t0:.0f} s")
            progress.done(r.name)

    # FP models first, each model once (parallel groups must not train the same cached FP model twice),
    # different models at the same time; FP models trained already are skipped. FP runs are submitted
    # before every group, so a group waiting for its FP model holds a worker only while that FP run is
    # already running in another.
    def train_fp(model: str) -> None:
        tqdm.write(f"[{cfg['table']}] the FP {model} ({args.preset}) first")
        t0 = time.time()
        progress.start(f"FP {model}")
        with open(log_dir / f"fp__{model}.log", "a") as f:
            code = run_child(fp_command(model, args.preset, args.device), f, cwd=REPO, env=job_env)
        tqdm.write(f"[{cfg['table']}] FP {model}: " + (f"done in {time.time() - t0:.0f} s" if code == 0
                   else f"FAILED (exit {code}); log: {log_dir / f'fp__{model}.log'}"))
        progress.done(f"FP {model}")

    def fp_trained(model: str) -> bool:  # a detector's cache name depends on its data: its FP run's result instead
        if model in DETECTORS:
            return (fp_run_dir(args.preset, model) / "result.json").is_file()
        return fp_cache_path(model, args.preset).is_file()

    fp_models = [m for m in dict.fromkeys(r.model for r in todo if not reuse[r])
                 if args.preset != "paper" and not fp_trained(m)]
    progress = LaunchProgress(cfg["table"], total=len(fp_models) + len(todo))  # FP models are work too
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        # A group starts as soon as its own model's FP is trained, while other FP models still train.
        fp_done = {m: pool.submit(train_fp, m) for m in fp_models}

        def after_fp(group: list[RunSpec]) -> None:
            if group[0].model in fp_done:
                fp_done[group[0].model].result()
            run_group(group)

        for future in [pool.submit(after_fp, g) for g in groups.values()]:
            future.result()
    progress.close()
    if failed:
        print(f"[{cfg['table']}] {len(failed)} run(s) failed: " + ", ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
