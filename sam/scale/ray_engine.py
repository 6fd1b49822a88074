"""Batch jobs (auto_annotate, segment everything) on Ray Data: one model per actor, outputs written by the workers.

The driver lists the images and leaves out those whose outputs are complete; Ray Data streams the list
to a pool of actors (`ActorPoolStrategy(size=actors)`), each of which loads the model once and runs torch
on the CPUs Ray gives it. Each actor reads its images, writes their outputs to the output folder (a
temporary name, then a rename) and hands back one small row per image, so nothing large travels back.
A worker that dies is restarted and its batch retried; an image that fails is reported in the summary
file and the job goes on.

Needs ray (`pip install .[scale]`); nothing else in `sam` imports it.
"""

import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .files import Summary, write_summary

RETRIES = 3  # times a batch is run again after the worker running it died
MAX_BLOCKS = 10_000  # above this many images, blocks hold several (a retried block skips its complete outputs)
CPUS_PER_ACTOR = 4  # default torch threads per actor (fewer on nodes with fewer CPUs)


class Job(Protocol):
    """What a batch job does for one image; picklable, sent to every actor (see sam.scale.everything)."""

    output: Path
    device: str

    def targets(self, paths: list[Path]) -> list[str]: ...  # output names, relative to output

    def complete(self, target: str) -> bool: ...

    def load(self) -> None: ...  # the model(s): once per worker

    def run(self, path: Path, image: np.ndarray, target: str) -> int: ...  # writes outputs; returns masks


def ray_module() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        raise ImportError("engine='ray' (--ray) needs Ray Data: pip install 'sam-app[scale]' (or 'ray[data]')") from e
    return ray


def connect(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Ray for this process: the one it already has, the cluster at `address`, or (None, "local") a new local
    Ray whose workers import this very `sam` package. True when this call started or joined it."""
    ray = ray_module()
    if ray.is_initialized():
        return False
    if address in (None, "", "local"):
        import sam

        code = str(Path(sam.__file__).resolve().parents[1])
        path = os.pathsep.join(p for p in (code, os.environ.get("PYTHONPATH", "")) if p)
        env = {"env_vars": {"PYTHONPATH": path}}
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, runtime_env=env)
    else:
        ray.init(address=address)
    return True


def plan(actors: int | None, cpus_per_actor: int | None) -> tuple[int, int]:
    """(actors, CPUs per actor): by default CPUS_PER_ACTOR each (or a whole smaller node), as many as fit."""
    nodes = [int(n["Resources"].get("CPU", 0)) for n in ray_module().nodes() if n.get("Alive")]
    cpus = cpus_per_actor or max(1, min(CPUS_PER_ACTOR, max(nodes, default=1)))
    return actors or max(1, sum(n // cpus for n in nodes)), cpus


def read_files(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A batch of rows with a `path` -> the same with the bytes of each file (`data`), or why not (`error`)."""
    data, errors = [], []
    for path in batch["path"]:
        try:
            data.append(Path(path).read_bytes())
            errors.append("")
        except OSError as e:
            data.append(b"")
            errors.append(f"cannot read image {path}: {e.strerror or e}")
    return {**batch, "data": np.array(data, dtype=object), "error": np.array(errors, dtype=object)}


def run_image(job: Job, path: str, target: str, data: bytes) -> tuple[int, str]:
    """(masks, "") once the image's outputs are written, or (0, why not). Never raises: the job goes on."""
    from ..images import ImageError, load_image

    try:
        image = load_image(data)
    except ImageError as e:
        return 0, f"cannot read image {path}: {e}"
    try:
        return job.run(Path(path), image, target), ""
    except Exception as e:  # one image's failure is reported, not the job's end
        return 0, f"{path}: {type(e).__name__}: {e}"


class Worker:
    """The callable class of `map_batches`: loads the job's model once, then runs one image per call."""

    def __init__(self, job: Job) -> None:
        import ray
        import torch

        from ..allocator import reuse_freed_memory

        reuse_freed_memory()  # as `sam` does for the command line's own process: see sam/allocator.py
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
        torch.set_num_threads(max(1, int(cpus)))
        job.load()
        self.job = job

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch = read_files(batch)  # here rather than in tasks of their own: the actors may hold every CPU
        paths, targets, masks, errors, seconds = [], [], [], [], []
        for path, target, data, error in zip(batch["path"], batch["target"], batch["data"], batch["error"]):
            start = time.perf_counter()
            n, error = (0, error) if error else run_image(self.job, str(path), str(target), data)
            paths.append(str(path))
            targets.append(str(target))
            masks.append(n)
            errors.append(error)
            seconds.append(time.perf_counter() - start)
        return {
            "path": np.array(paths, dtype=object),
            "target": np.array(targets, dtype=object),
            "masks": np.array(masks, dtype=np.int64),
            "error": np.array(errors, dtype=object),
            "seconds": np.array(seconds, dtype=np.float64),
        }


def _dataset(ray: Any, job: Job, todo: list[tuple[Path, str]], actors: int, cpus: int) -> Any:
    """The Ray dataset of one row per image of todo: listed, read, then run by a pool of actors."""
    items = [{"path": str(p), "target": t} for p, t in todo]
    ds = ray.data.from_items(items, override_num_blocks=min(len(items), MAX_BLOCKS))
    with warnings.catch_warnings():  # Ray 2.60 takes max_task_retries only as a "ray_remote_arg", which it deprecates
        warnings.filterwarnings("ignore", message=".*ray_remote_args. is deprecated")
        return ds.map_batches(
            Worker, fn_constructor_args=(job,), batch_size=1,
            # one block per actor at a time: blocks queued on a worker that dies fail with it and use up a
            # retry, so an image that kills every worker would also lose the images waiting behind it
            compute=ray.data.ActorPoolStrategy(size=actors, max_tasks_in_flight_per_actor=1),
            num_cpus=cpus, num_gpus=1 if job.device.startswith("cuda") else 0, max_restarts=-1,
            max_task_retries=RETRIES,  # Ray Data's default retries forever: an image that kills workers would too
        )  # fmt: skip


def run_job(
    job: Job,
    paths: list[Path],
    address: str | None = None,
    actors: int | None = None,
    cpus_per_actor: int | None = None,
    overwrite: bool = False,
    on_image: Callable[[dict[str, Any]], None] | None = None,
) -> Summary:
    """Run job on every image of paths with Ray Data; writes and returns the summary (OUTPUT/_summary.json).

    Images whose outputs are complete are skipped unless overwrite. on_image gets each image's row
    ({"path", "target", "masks", "error", "seconds"}) as it comes back to the driver.
    """
    ray = ray_module()
    for name, value in (("actors", actors), ("cpus_per_actor", cpus_per_actor)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    start = time.perf_counter()
    todo = [(p.absolute(), t) for p, t in zip(paths, job.targets(paths)) if overwrite or not job.complete(t)]
    summary = Summary(str(job.output), "ray", images=len(paths), skipped=len(paths) - len(todo), workers=0)
    job.output.mkdir(parents=True, exist_ok=True)
    returned = set()
    if todo:
        started = connect(address)
        context = ray.data.DataContext.get_current()
        errored_blocks, context.max_errored_blocks = context.max_errored_blocks, -1  # a lost block: report, go on
        try:
            summary.workers, cpus = plan(actors, cpus_per_actor)
            for row in _dataset(ray, job, todo, summary.workers, cpus).iter_rows():
                returned.add(row["path"])
                if row["error"]:
                    summary.failures.append({"path": row["path"], "error": row["error"]})
                else:
                    summary.done += 1
                if on_image is not None:
                    on_image(row)
        finally:
            context.max_errored_blocks = errored_blocks
            if started:
                ray.shutdown()
    for path, _ in todo:
        if str(path) not in returned:
            lost = f"lost: the worker running its batch died {RETRIES + 1} times (out of memory?)"
            summary.failures.append({"path": str(path), "error": lost})
    summary.seconds = time.perf_counter() - start
    write_summary(summary)
    return summary
