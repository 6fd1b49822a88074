"""How many visitors one app serves: N simulated visitors against `python app.py` on loopback.

Each visitor (tests/helpers/visitors.py) opens a new image every 2 minutes (fresh JPEGs of 1024-1600 px;
every 4th one of the shared examples), hovers at 5 previews a second while the image is open, clicks
every 3 s where it hovered and adds an object after every 10 clicks. `--pages` of them are the real page
in headless Chromium (click -> mask drawn, hover -> preview drawn, timed by the page), the rest speak the
page's protocol without a browser (click -> answer received). The app is started afresh for each N, with
random weights of the real size served by a loopback Hub, its default precision and decoding threads;
`--decode server` (the default) turns the page's own decoding off; with `--decode browser` the pages decode
hovers and clicks with ONNX Runtime Web, and the protocol visitors do what such a page asks of the server:
each image's embedding once, clicks only recorded (`local`), no hovers.

Per N: p50/p95 of each latency, upload -> ready, errors, the server's CPU (cores used on average) and
peak resident memory, the whole machine's busy cores and its load average before and after. Capacity is
the largest N with p95 click <= 200 ms (drawn and answered), p95 upload -> ready <= 15 s and no errors,
searched upward (1, 2, 4, ...) and then by bisection.

python benchmarks/bench_capacity.py [--models sam-vit-base mobile-sam] [--duration 180] [--time-scale 1]
    [--pages 2] [--decode server|browser] [--n 1 2 3] [--max-n 32] [--out capacity.json] [--cache DIR]
"""

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.machine import cpu_name  # noqa: E402
from tests.helpers.browser import app_on_hub, app_pid, rss_mb  # noqa: E402
from tests.helpers.hub import Checkpoints  # noqa: E402
from tests.helpers.visitors import (  # noqa: E402
    LocalDecode,
    PageVisitor,
    Samples,
    Schedule,
    ServerDecode,
    Transport,
    plan,
    pool_image,
    run_visitor,
)

CLICK_P95_MS = 200
UPLOAD_P95_S = 15


def percentiles(values: list[float], scale: float = 1.0) -> dict[str, float] | None:
    if not values:
        return None
    v = np.asarray(values, dtype=float) * scale
    return {"n": len(v), "p50": round(float(np.percentile(v, 50)), 3), "p95": round(float(np.percentile(v, 95)), 3)}


class ServerLoad:
    """The app's CPU time and peak resident memory, and the machine's busy CPU time, from /proc."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak_mb, self._stop = pid, rss_mb(pid), threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _cpu_s(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime

    @staticmethod
    def _machine_busy_s() -> float:
        values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        return (sum(values[:8]) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait

    def _sample(self) -> None:
        while not self._stop.wait(1.0):
            self.peak_mb = max(self.peak_mb, rss_mb(self.pid))

    def __enter__(self) -> "ServerLoad":
        self.start = (time.perf_counter(), self._cpu_s(), self._machine_busy_s())
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        wall, cpu, busy = (now - then for now, then in zip((time.perf_counter(), self._cpu_s(), self._machine_busy_s()),
                                                          self.start))
        self.result = {"server_cpu_cores": round(cpu / wall, 2), "server_rss_mb": round(self.peak_mb),
                       "machine_busy_cores": round(busy / wall, 2)}


def warm_up(url: str) -> None:
    """One upload, hover and click before the clock starts: the model loaded, first-call costs paid."""
    visitor = ServerDecode(url)
    image = pool_image(np.random.default_rng(12345), example=False, last=None)
    now = time.perf_counter()
    if not visitor.open(image, now):
        raise RuntimeError(f"the app did not open an image: {visitor.samples.errors}")
    visitor.hover(0.5, 0.5, now)
    visitor.click(0.5, 0.5, now)
    visitor.close()


def measure(url: str, n: int, pages: int, schedule: Schedule, duration_s: float, seed: int = 0,
            protocol: type[Transport] = ServerDecode) -> dict:
    """Run n visitors (the first `pages` of them real pages, the rest `protocol` clients) for duration_s seconds
    -> the row for n."""
    start = time.perf_counter()
    warm_up(url)
    warm_s = time.perf_counter() - start
    print(f"N={n}: warmed up in {warm_s:.0f} s, measuring for {duration_s:.0f} s", file=sys.stderr, flush=True)
    load_before = os.getloadavg()
    pages = min(pages, n)
    samples: list[Samples | None] = [None] * n
    clock: dict[str, float] = {}

    def start_clock() -> None:
        clock["t0"] = time.perf_counter() + 0.2
        clock["end"] = clock["t0"] + duration_s

    ready = threading.Barrier(n, action=start_clock)

    def visitor(i: int) -> None:
        visits = plan(schedule, i, n, duration_s, seed)  # images made before the clock starts
        try:
            transport = PageVisitor(url) if i < pages else protocol(url)
        except Exception as e:
            samples[i] = Samples(errors=[f"visitor {i} could not start: {type(e).__name__}: {e}"[:300]])
            ready.wait()
            return
        ready.wait()
        samples[i] = run_visitor(transport, visits, clock["t0"], clock["end"])

    threads = [threading.Thread(target=visitor, args=(i,)) for i in range(n)]
    with ServerLoad(app_pid(url)) as load:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    return {**row(n, pages, samples, load.result, load_before, os.getloadavg()), "warm_up_s": round(warm_s, 1)}


def row(n: int, pages: int, samples: list[Samples], load: dict, before, after) -> dict:
    """The report for one N, and whether it meets the capacity criteria (`pass`, `why` not)."""
    page, protocol = samples[:pages], samples[pages:]

    def pooled(group: list[Samples], kind: str) -> list[float]:
        return [v for s in group for v in s.ms.get(kind, [])]

    errors = [e for s in samples for e in s.errors]
    out = {
        "n": n, "page_visitors": pages, "protocol_visitors": n - pages,
        "click_drawn_ms": percentiles(pooled(page, "point")),
        "click_answered_ms": percentiles(pooled(protocol, "point")),
        "click_decode_ms": percentiles(pooled(page, "point_decode")),  # the pages' time in ONNX Runtime
        "hover_drawn_ms": percentiles(pooled(page, "hover")),
        "hover_answered_ms": percentiles(pooled(protocol, "hover")),
        "add_ms": percentiles(pooled(samples, "add")),
        "upload_ready_s": percentiles(pooled(samples, "upload"), scale=1 / 1000),
        "sent": {k: sum(s.sent.get(k, 0) for s in samples) for k in ("upload", "hover", "point", "add")},
        "page_decode": sorted({m for s in page for m in s.decode}),
        "embedding_ms": percentiles(pooled(protocol, "embedding")),
        "received_bytes": {k: sum(s.received.get(k, 0) for s in samples) for k in ("graph", "embedding")},
        "errors": len(errors), "error_examples": errors[:5],
        **load,
        "load_before": [round(v, 2) for v in before], "load_after": [round(v, 2) for v in after],
    }
    why = [f"p95 {k} {out[k]['p95']:.0f} ms > {CLICK_P95_MS}" for k in ("click_drawn_ms", "click_answered_ms")
           if out[k] and out[k]["p95"] > CLICK_P95_MS]
    if not (out["click_drawn_ms"] or out["click_answered_ms"]):
        why.append("no click answered")
    if out["upload_ready_s"] is None or out["upload_ready_s"]["p95"] > UPLOAD_P95_S:
        why.append(f"p95 upload -> ready {out['upload_ready_s']['p95'] if out['upload_ready_s'] else '-'} s "
                   f"> {UPLOAD_P95_S}")
    if errors:
        why.append(f"{len(errors)} errors")
    out["pass"], out["why"] = not why, why
    return out


def search(measure_n, max_n: int, ns: list[int] | None = None) -> tuple[int, list[dict]]:
    """Capacity by doubling N from 1 while it passes, then bisecting; or just the given `ns`."""
    rows: dict[int, dict] = {}

    def passes(n: int) -> bool:
        rows[n] = measure_n(n)
        print(json.dumps(rows[n]), flush=True)
        return rows[n]["pass"]

    if ns:
        for n in ns:
            passes(n)
        return max([n for n in ns if rows[n]["pass"]], default=0), [rows[n] for n in sorted(rows)]
    good, bad, n = 0, None, 1
    while n <= max_n:
        if not passes(n):
            bad = n
            break
        good, n = n, n * 2
    while bad is not None and bad - good > 1:
        mid = (good + bad) // 2
        good, bad = (mid, bad) if passes(mid) else (good, mid)
    return good, [rows[n] for n in sorted(rows)]


def _fmt(p: dict | None, digits: int = 0) -> str:
    return f"{p['p50']:.{digits}f} / {p['p95']:.{digits}f}" if p else "-"


def markdown(report: dict) -> str:
    """The report as markdown tables, one per model."""
    lines = []
    for model, res in report["models"].items():
        lines += [f"**{model}**: capacity {res['capacity']} visitors", "",
                  "| N | click drawn p50 / p95 ms | click answered p50 / p95 ms | hover drawn | hover answered | "
                  "upload -> ready p50 / p95 s | errors | server cores | server RSS MB | machine busy cores | "
                  "load before -> after | meets |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in res["rows"]:
            meets = "yes" if r["pass"] else "no: " + "; ".join(r["why"])
            lines.append(
                f"| {r['n']} | {_fmt(r['click_drawn_ms'])} | {_fmt(r['click_answered_ms'])} | "
                f"{_fmt(r['hover_drawn_ms'])} | {_fmt(r['hover_answered_ms'])} | {_fmt(r['upload_ready_s'], 1)} | "
                f"{r['errors']} | {r['server_cpu_cores']} | {r['server_rss_mb']} | {r['machine_busy_cores']} | "
                f"{r['load_before'][0]} -> {r['load_after'][0]} | {meets} |"
            )
        lines.append("")
    return "\n".join(lines)


def commit() -> str:
    """The code measured: HEAD, and "+changes" when the working tree differs from it."""
    import subprocess

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()

    return git("rev-parse", "--short", "HEAD") + ("+changes" if git("status", "--porcelain", "--untracked-files=no")
                                                  else "")


def decode_env(mode: str) -> dict[str, str]:
    """The app's environment for `mode`: server (every hover and click decoded by the server) or browser
    (the page decodes, ONNX Runtime Web from node_modules/onnxruntime-web when it is there, else the CDN)."""
    if mode == "server":
        return {"SAM_BROWSER_DECODE": "0"}
    ort = REPO / "node_modules" / "onnxruntime-web" / "dist"
    return {"SAM_BROWSER_DECODE": "1", **({"SAM_ORT_URL": str(ort)} if (ort / "ort.min.js").is_file() else {})}


def machine() -> dict:
    model = cpu_name()
    cores = len(os.sched_getaffinity(0))
    return {"cpu": model, "cores": cores, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "commit": commit()}


def app_overrides(model: str, checkpoints: Checkpoints) -> dict[str, Path]:
    """Random checkpoints of the real size for the published repos (MobileSAM's is always real size)."""
    return {"facebook/sam-vit-base": checkpoints.transformers("vit_b", 0)} if model == "sam-vit-base" else {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["sam-vit-base", "mobile-sam"])
    parser.add_argument("--duration", type=float, default=180, help="seconds each N runs (default 180)")
    parser.add_argument("--time-scale", type=float, default=1.0,
                        help="multiplies every interval of the visitors' schedule (below 1: a faster, shorter run)")
    parser.add_argument("--pages", type=int, default=2, help="visitors that are real pages in Chromium (default 2)")
    parser.add_argument("--decode", choices=("server", "browser"), default="server",
                        help="where the pages decode prompts (default: server); the protocol visitors do as the page "
                        "does: ask the server to decode, or fetch each embedding and only report their prompts")
    parser.add_argument("--n", type=int, nargs="+", help="measure these N only (default: search for the capacity)")
    parser.add_argument("--max-n", type=int, default=32)
    parser.add_argument("--out", type=Path, help="write the JSON report here too")
    parser.add_argument("--cache", type=Path, help="folder for the random checkpoints (default: a temporary one)")
    args = parser.parse_args()
    schedule = Schedule(time_scale=args.time_scale)
    report = {"machine": machine(), "decode": args.decode, "duration_s": args.duration, "schedule": schedule.__dict__,
              "models": {}}
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-capacity-")))
        root = args.cache or tmp / "checkpoints"
        root.mkdir(parents=True, exist_ok=True)
        checkpoints = Checkpoints(root)
        for model in args.models:
            def measure_n(n: int, model: str = model) -> dict:
                run_dir = Path(tempfile.mkdtemp(dir=tmp, prefix=f"{model}-{n}-"))
                env = {"SAM_PRECISION": "auto", "SAM_DECODE_THREADS": "0", **decode_env(args.decode)}
                with app_on_hub(checkpoints, run_dir, ["--model", model], app_overrides(model, checkpoints),
                                extra_env=env) as url:
                    protocol = LocalDecode if args.decode == "browser" else ServerDecode
                    return measure(url, n, args.pages, schedule, args.duration, protocol=protocol)

            capacity, rows = search(measure_n, args.max_n, args.n)
            report["models"][model] = {"capacity": capacity, "rows": rows}
            if args.out:
                args.out.write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    print(markdown(report))


if __name__ == "__main__":
    main()
