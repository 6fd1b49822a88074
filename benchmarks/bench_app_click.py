"""Click -> mask drawn, and hover -> preview drawn, measured inside the page (performance.now()).

Starts `python app.py` (sam-vit-base by default, served with random weights of the real size by a
loopback Hub, or --url for an app already running), opens it in headless Chromium, uploads an image and
times clicks and hover moves from the input event to the end of drawing the answer on the canvas:

- click: from the pointer release to the candidate masks drawn (server decode, PNG masks, transfer,
  PNG decoding and drawing in the page). Clicks come in groups of three on one object (the first gives
  three candidates, the next two refine with one mask), then the object is cleared (not timed).
- hover: from the last pointer move (the page waits 30 ms of rest before asking) to the preview drawn.
- click on the preview: the pointer rests, the preview is drawn, then a click at the same place (how
  people click); the server answers with the preview's decode instead of decoding again. In groups of
  three as above.

With --browser-decode the page decodes hovers and clicks itself (ONNX Runtime Web, wasm, from
node_modules: `npm install --no-save onnxruntime-web@VERSION`, see .ci/run): the times then include the
local decode, "server_ms" is the server's work of recording a click, and the result adds the bytes the page
fetched for it (the decoder graph once per model, the float16 embedding once per image) and the browser's
memory: the JS heap (DevTools' Runtime.getHeapUsage) and the resident memory of Chromium's renderer
processes, which holds the WebAssembly memory of ONNX Runtime as well.

python benchmarks/bench_app_click.py [--clicks 50] [--hovers 50] [--previewed 30] [--image examples/coffee.jpg]
    [--url URL] [--browser-decode]
"""

import argparse
import json
import os
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.machine import cpu_name  # noqa: E402
from tests.helpers.browser import (  # noqa: E402  (the loopback Hub and app launcher the tests use)
    DEBUG,
    act,
    app_on_hub,
    app_pid,
    image_to_page,
    launch_chromium,
    open_app,
    rss_mb,
    upload,
)
from tests.helpers.hub import Checkpoints  # noqa: E402


def percentiles(values: list[float | None]) -> dict[str, float] | None:
    v = np.asarray([x for x in values if x is not None], dtype=float)
    if not len(v):
        return None  # e.g. the server's time of hovers the page answered itself
    return {"n": len(v), "p50": float(np.percentile(v, 50)), "p95": float(np.percentile(v, 95)), "max": float(v.max())}


def renderer_rss_mb() -> float:
    """Resident memory of the Chromium renderer processes this process started (the pages, with their
    WebAssembly memory); other browsers on the machine are not counted."""
    parents = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            parents[int(pid)] = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    ours, total = {os.getpid()}, 0.0
    for _ in range(6):  # this process -> Playwright's driver -> Chromium -> its renderers
        ours |= {pid for pid, parent in parents.items() if parent in ours}
    for pid in ours:
        try:
            if b"--type=renderer" in Path(f"/proc/{pid}/cmdline").read_bytes():
                total += rss_mb(pid)
        except (OSError, RuntimeError):
            continue
    return round(total)


def fetched_bytes(page) -> dict[str, int]:
    """Bytes of the page's decoder graph, embedding and ORT Web responses (Content-Length), from now on."""
    sizes = {"decoder_graph": 0, "embedding": 0, "ort_web": 0}

    def on_response(response) -> None:
        kind = next((k for k, part in (("decoder_graph", "/sam/decoder/"), ("embedding", "/sam/embedding"),
                                       ("ort_web", "/sam/ort/")) if part in response.url), None)
        if kind:
            sizes[kind] += int(response.headers.get("content-length") or 0)

    page.on("response", on_response)
    return sizes


def run(url: str, image: Path, clicks: int, hovers: int, previewed: int, browser_decode: bool = False) -> dict:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = launch_chromium(p)
        page = open_app(browser, url)
        sizes = fetched_bytes(page)
        start = time.perf_counter()
        upload(page, image, timeout_ms=600_000)
        if browser_decode:
            page.wait_for_function(f"{DEBUG}.state().decode === 'browser'", timeout=600_000, polling=100)
        upload_s = time.perf_counter() - start
        status = page.inner_text("#sam-status")
        w, h = page.evaluate(f"[{DEBUG}.state().width, {DEBUG}.state().height]")
        rng = np.random.default_rng(0)
        for i in range(clicks):
            if i and i % 3 == 0:
                act(page, "clear", lambda: page.click(".sam-clear"))
            x, y = image_to_page(page, rng.uniform(0.1, 0.9) * w, rng.uniform(0.1, 0.9) * h)
            act(page, "point", lambda x=x, y=y: page.mouse.click(x, y))
        for _ in range(hovers):
            x, y = image_to_page(page, rng.uniform(0.1, 0.9) * w, rng.uniform(0.1, 0.9) * h)
            act(page, "hover", lambda x=x, y=y: page.mouse.move(x, y, steps=2))
        for i in range(previewed):
            if i % 3 == 0:
                act(page, "clear", lambda: page.click(".sam-clear"))
            x, y = image_to_page(page, rng.uniform(0.1, 0.9) * w, rng.uniform(0.1, 0.9) * h)
            act(page, "hover", lambda x=x, y=y: page.mouse.move(x, y, steps=2))
            act(page, "point", lambda: (page.mouse.down(), page.mouse.up()))
        timings = page.evaluate(f"{DEBUG}.timings()")
        assert page.errors == [], page.errors
        cdp = page.context.new_cdp_session(page)
        heap = cdp.send("Runtime.getHeapUsage")
        memory = {"js_heap_used_mb": round(heap["usedSize"] / 2**20, 1), "renderers_rss_mb": renderer_rss_mb()}
        browser.close()
    out = {"status": status, "image": f"{image.name} ({w}x{h})", "upload_and_embed_s": round(upload_s, 2),
           "decode": sorted({t["decode"] for t in timings if t["type"] in ("point", "hover")}),
           "browser_memory": memory, "fetched_bytes": sizes}
    points = [t for t in timings if t["type"] == "point"]
    hovers_only = [t for t in timings if t["type"] == "hover"][:hovers]
    for kind, rows in (("point", points[:clicks]), ("hover", hovers_only), ("click_on_preview", points[clicks:])):
        out[kind] = {
            "page_ms": percentiles([t["ms"] for t in rows]),
            "answer_ms": percentiles([t["answer_ms"] for t in rows]),
            "server_ms": percentiles([t["server_ms"] for t in rows]),
            "browser_decode_ms": percentiles([t.get("decode_ms") for t in rows]),  # ONNX Runtime's runs alone
        }
    firsts = [t["ms"] for t in points[:clicks:3]]
    out["point"]["first_click_page_ms"] = percentiles(firsts)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clicks", type=int, default=50)
    parser.add_argument("--hovers", type=int, default=50)
    parser.add_argument("--previewed", type=int, default=30, help="clicks where the hover preview is shown")
    parser.add_argument("--image", type=Path, default=REPO / "examples" / "coffee.jpg")
    parser.add_argument("--url", help="an app already running (default: start one on a loopback Hub)")
    parser.add_argument("--browser-decode", action="store_true",
                        help="the page decodes itself (ONNX Runtime Web from node_modules; default: the server)")
    parser.add_argument("--cache", type=Path, help="folder for the random checkpoints (default: a temporary one)")
    parser.add_argument("--decode-threads", type=int, default=_cores(),
                        help="SAM_DECODE_THREADS of the app started here (default: every core, as the app's default)")
    args = parser.parse_args()
    with ExitStack() as stack:
        url = args.url
        if url is None:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-app-")))
            root = args.cache or tmp / "checkpoints"
            root.mkdir(parents=True, exist_ok=True)
            checkpoints = Checkpoints(root)
            vit_b = checkpoints.transformers("vit_b", 0)  # full size, random weights
            env = {"SAM_DECODE_THREADS": str(args.decode_threads), "SAM_BROWSER_DECODE": "0"}
            if args.browser_decode:
                env.update(SAM_BROWSER_DECODE="1", SAM_ORT_URL=str(REPO / "node_modules" / "onnxruntime-web" / "dist"))
            url = stack.enter_context(
                app_on_hub(checkpoints, tmp, ["--model", "sam-vit-base"], overrides={"facebook/sam-vit-base": vit_b},
                           extra_env=env)
            )
        result = run(url, args.image.resolve(), args.clicks, args.hovers, args.previewed, args.browser_decode)
        if args.url is None:  # the app's resident memory with the model loaded, after the embedding and clicks
            result["server_rss_mb"] = round(rss_mb(app_pid(url)))
    result["machine"] = f"{cpu_name()}, {_cores()} cores"
    result["decode_threads"] = args.decode_threads if args.url is None else "as the app at --url"
    print(json.dumps(result, indent=1))
    for kind in ("point", "hover", "click_on_preview"):
        page, answer, server = (result[kind][k] for k in ("page_ms", "answer_ms", "server_ms"))
        on_server = f"server p50 {server['p50']:.0f} ms, p95 {server['p95']:.0f} ms" if server else "not on the server"
        print(f"{kind}: page p50 {page['p50']:.0f} ms, p95 {page['p95']:.0f} ms (n={page['n']}); "
              f"answer received p50 {answer['p50']:.0f} ms; {on_server}")
    if "server_rss_mb" in result:
        print(f"server resident memory: {result['server_rss_mb']} MB")


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


if __name__ == "__main__":
    main()
