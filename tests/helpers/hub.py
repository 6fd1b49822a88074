"""A Hugging Face Hub on loopback, and random checkpoints in each published layout.

`LocalHub` answers what huggingface_hub's `hf_hub_download` and `snapshot_download` ask: HEAD/GET
`/{repo}/resolve/{revision}/{path}` with X-Repo-Commit, ETag (sha256 for weight files, a git blob hash
for small text files, as the Hub does), Content-Length and Range requests; `/api/models/{repo}` (with
`/revision/{rev}`) and `/api/models/{repo}/tree/{rev}`; and the error headers (X-Error-Code) that
huggingface_hub turns into RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError and
GatedRepoError. `faults` breaks one file on purpose: "truncate" (serves the first half, consistently),
"corrupt" (flips bytes) or "drop" (closes the connection after 3/4 of the file, once, so that the client
resumes with a Range request).

In-process use: the `local_hub` fixture (conftest.py) points huggingface_hub at the server by patching the
constants it reads at import (ENDPOINT, HUGGINGFACE_CO_URL_TEMPLATE, cache paths) as well as the
environment. Subprocesses (e.g. `python app.py`) only need `hub_env(url, home)` in their environment.
"""

import hashlib
import json
import os
import socket
import threading
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import torch

from sam.build import SamConfig
from tests.helpers.reference import TINY, meta_sam, random_state_dict

LFS_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")  # served with a sha256 ETag, like the Hub's LFS files


def commit_hash(repo_id: str, revision: str) -> str:
    return hashlib.sha1(f"{repo_id}@{revision}".encode()).hexdigest()


@cache
def etag(path: Path, size: int, mtime: float) -> str:
    """sha256 for weight files; git's blob sha1 for the rest. size and mtime invalidate the cache."""
    digest = hashlib.sha256() if path.suffix in LFS_SUFFIXES else hashlib.sha1(b"blob %d\0" % size)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class Repo:
    revisions: dict[str, dict[str, Path]]  # revision name -> {path in the repo: local file}
    token: str | None = None  # gated: requests must carry "Authorization: Bearer <token>"


def repo_files(source: Path | dict[str, Path]) -> dict[str, Path]:
    """A folder (every file under it, by relative path), a single file (by its name) or a ready mapping."""
    if isinstance(source, dict):
        return {k: Path(v) for k, v in source.items()}
    source = Path(source)
    if source.is_file():
        return {source.name: source}
    return {p.relative_to(source).as_posix(): p for p in sorted(source.rglob("*")) if p.is_file()}


@dataclass
class LocalHub:
    repos: dict[str, Repo] = field(default_factory=dict)
    faults: dict[tuple[str, str], str] = field(default_factory=dict)  # (repo_id, path) -> truncate|corrupt|drop
    requests: list[tuple[str, str]] = field(default_factory=list)  # (method, path) of every request
    ranges: list[str] = field(default_factory=list)  # Range headers of file downloads

    def add(self, repo_id: str, files: Path | dict[str, Path], *, revision: str = "main", token: str | None = None):
        repo = self.repos.setdefault(repo_id, Repo({}))
        repo.revisions[revision] = repo_files(files)
        repo.token = token or repo.token
        return commit_hash(repo_id, revision)

    def start(self) -> str:
        hub = self

        class Handler(_Handler):
            pass

        Handler.hub = hub
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        return self.url

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)

    def downloads(self, path_suffix: str = "") -> int:
        """Number of GET requests for files whose path ends with path_suffix."""
        return sum(1 for m, p in self.requests if m == "GET" and "/resolve/" in p and p.endswith(path_suffix))


def serve_repos(repos: dict[str, Path | dict[str, Path]]) -> tuple[str, Callable[[], None]]:
    """Start a LocalHub serving {repo_id: folder, file or {path: file}} at main; returns (url, stop)."""
    hub = LocalHub()
    for repo_id, files in repos.items():
        hub.add(repo_id, files)
    return hub.start(), hub.stop


def hub_env(url: str, home: Path) -> dict[str, str]:
    """Environment for a subprocess that should use the Hub at url and an isolated cache under home."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE")}
    env.update(HF_ENDPOINT=url, HF_HOME=str(home), HF_HUB_CACHE=str(Path(home) / "hub"))
    env.update(HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_XET="1")
    return env


class _Handler(BaseHTTPRequestHandler):
    hub: LocalHub
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # keep test output quiet
        pass

    def do_HEAD(self):
        self._serve(body=False)

    def do_GET(self):
        self._serve(body=True)

    def _error(self, status: int, code: str | None, message: str, commit: str | None = None) -> None:
        body = json.dumps({"error": message}).encode()
        self.send_response(status)
        if code:
            self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", message)
        if commit:
            self.send_header("X-Repo-Commit", commit)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, data: dict | list) -> None:
        body = json.dumps(data).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _repo(self, repo_id: str) -> Repo | None:
        """The repo, or None after answering 404/401 as the Hub does."""
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", "Repository not found")
            return None
        if repo.token and self.headers.get("Authorization") != f"Bearer {repo.token}":
            self._error(401, "GatedRepo", f"Access to model {repo_id} is restricted. You must be authenticated.")
            return None
        return repo

    def _revision(self, repo_id: str, repo: Repo, revision: str) -> tuple[str, dict[str, Path]] | None:
        for name, files in repo.revisions.items():
            if revision in (name, commit_hash(repo_id, name)):
                return commit_hash(repo_id, name), files
        self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return None

    def _serve(self, body: bool) -> None:
        path = urllib.parse.urlsplit(self.path).path
        self.hub.requests.append((self.command, path))
        parts = [urllib.parse.unquote(p) for p in path.strip("/").split("/")]
        if parts[:2] == ["api", "models"] and len(parts) >= 4:
            return self._api(parts[2] + "/" + parts[3], parts[4:])
        if len(parts) < 5 or parts[2] != "resolve":
            return self._error(404, None, f"no route for {path}")
        repo_id, filename = f"{parts[0]}/{parts[1]}", "/".join(parts[4:])
        repo = self._repo(repo_id)
        found = repo and self._revision(repo_id, repo, parts[3])
        if not found:
            return
        commit, files = found
        if filename not in files:
            return self._error(404, "EntryNotFound", f"{filename} does not exist", commit)
        self._send_file(repo_id, filename, files[filename], commit, body)

    def _api(self, repo_id: str, parts: list[str]) -> None:
        """repo_info (`/api/models/{repo}[/revision/{rev}]`) and the file listing (`.../tree/{rev}`)."""
        repo = self._repo(repo_id)
        found = repo and self._revision(repo_id, repo, parts[1] if len(parts) > 1 else "main")
        if not found:
            return
        commit, files = found
        if parts[:1] != ["tree"]:
            return self._json({"id": repo_id, "sha": commit, "siblings": [{"rfilename": f} for f in sorted(files)]})
        listing = []
        for name, local in sorted(files.items()):
            stat = local.stat()
            entry = {"type": "file", "path": name, "size": stat.st_size, "oid": commit_hash(name, commit)}
            if local.suffix in LFS_SUFFIXES:
                sha256 = etag(local, stat.st_size, stat.st_mtime)
                entry["lfs"] = {"oid": sha256, "size": stat.st_size, "pointerSize": 134}
            listing.append(entry)
        self._json(listing)

    def _send_file(self, repo_id: str, filename: str, local: Path, commit: str, body: bool) -> None:
        stat = local.stat()
        tag = etag(local, stat.st_size, stat.st_mtime)
        fault = self.hub.faults.get((repo_id, filename))
        size = stat.st_size // 2 if fault == "truncate" else stat.st_size
        start, end = 0, size - 1
        ranged = self.headers.get("Range", "").startswith("bytes=")
        if ranged:
            first, _, last = self.headers["Range"][6:].partition("-")
            start, end = int(first or 0), min(int(last) if last else size - 1, size - 1)
        self.send_response(206 if ranged else 200)
        self.send_header("X-Repo-Commit", commit)
        self.send_header("ETag", f'"{tag}"')
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(end - start + 1))
        if ranged:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if not body:
            return
        if ranged:
            self.hub.ranges.append(self.headers["Range"])
        stop = end + 1
        if fault == "drop" and not ranged:
            self.hub.faults.pop((repo_id, filename))
            stop = size * 3 // 4
        with open(local, "rb") as f:
            f.seek(start)
            pos = start
            while pos < stop:
                chunk = bytearray(f.read(min(1 << 20, stop - pos)))
                if fault == "corrupt":  # flip byte 100 of every 4 KiB
                    for i in range((100 - pos) % 4096, len(chunk), 4096):
                        chunk[i] ^= 0x55
                self.wfile.write(chunk)
                pos += len(chunk)
        if stop <= end:
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)


# ----------------------------------------------------------------------------- checkpoint writers

# transformers SamConfig kwargs. TINY_HF matches tests.helpers.reference.TINY (ViT 64 wide, 4 blocks, 256 px input).
TINY_HF = dict(
    vision_config=dict(
        hidden_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        global_attn_indexes=[1, 3],
        window_size=4,
        image_size=256,
        mlp_dim=256,
    ),
    prompt_encoder_config=dict(image_size=256),
)
VIT_B_HF: dict = {}  # transformers' defaults are SAM ViT-B
# transformers Sam2Config kwargs matching sam.build_sam2.TINY (Hiera 16 wide, 8 blocks, 256 px input, width 64).
TINY_SAM2_HF = dict(
    vision_config=dict(
        backbone_config=dict(
            model_type="sam2_hiera_det_model",
            hidden_size=16,
            num_attention_heads=1,
            image_size=[256, 256],
            blocks_per_stage=[1, 2, 3, 2],
            embed_dim_per_stage=[16, 32, 64, 128],
            num_attention_heads_per_stage=[1, 2, 4, 8],
            window_size_per_stage=[8, 4, 14, 7],
            global_attention_blocks=[4],
            window_positional_embedding_background_size=[7, 7],
        ),
        backbone_channel_list=[128, 64, 32, 16],
        backbone_feature_sizes=[[64, 64], [32, 32], [16, 16]],
        fpn_hidden_size=64,
    ),
    prompt_encoder_config=dict(hidden_size=64, image_size=256),
    mask_decoder_config=dict(hidden_size=64),
)
SLIM_HF = dict(  # SlimSAM-50-like: a pruned ViT-B, narrower tokens and MLP; 512 px input keeps the test fast
    vision_config=dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=12, mlp_dim=1536, image_size=512),
    prompt_encoder_config=dict(image_size=512),
)


def transformers_model(config: dict, seed: int = 0):
    """A transformers SamModel with non-degenerate random weights (norms near 1, others ~ 1/sqrt(fan_in))."""
    from transformers import SamConfig as HFSamConfig
    from transformers import SamModel

    model = SamModel(HFSamConfig(**config)).eval()
    model.load_state_dict(random_state_dict(model, seed))
    return model


def write_transformers(folder: Path, config: dict, seed: int = 0) -> Path:
    """config.json + model.safetensors, written by save_pretrained as the transformers repos are."""
    transformers_model(config, seed).save_pretrained(folder)
    return folder


def write_meta(path: Path, config: SamConfig | str = TINY, seed: int = 0) -> Path:
    """Meta's original format: segment-anything's Sam state dict (pixel_mean/std included), torch.save'd."""
    if isinstance(config, str):
        from segment_anything import sam_model_registry

        model = sam_model_registry[config]()
    else:
        model = meta_sam(config)
    model.load_state_dict(random_state_dict(model, seed), strict=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return path


def write_mobile_sam(path: Path, seed: int = 0) -> Path:
    """MobileSAM's mobile_sam.pt: the state dict of mobile_sam's vit_t model (classifier head included)."""
    from mobile_sam import sam_model_registry

    model = sam_model_registry["vit_t"]()
    model.load_state_dict(random_state_dict(model, seed), strict=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return path


def write_sam2_meta(path: Path, seed: int = 0) -> Path:
    """Meta's SAM 2 .pt: {"model": state dict of sam2's SAM2Base}, video modules included, at our TINY sizes."""
    from sam.build_sam2 import TINY
    from tests.helpers.sam2_reference import meta_sam2

    model = meta_sam2(TINY)
    model.load_state_dict(random_state_dict(model, seed))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict()}, path)
    return path


def sam2_transformers_model(meta_checkpoint: Path, video: bool = True, seed: int = 0):
    """transformers' Sam2VideoModel (or Sam2Model) at TINY_SAM2_HF sizes holding the image weights of a Meta
    SAM 2 checkpoint (renamed by sam.remap.SAM2_KEYS); its video modules get random weights."""
    from transformers import Sam2Config, Sam2Model, Sam2VideoConfig, Sam2VideoModel

    from sam.build_sam2 import drop_video_keys
    from sam.remap import SAM2_KEYS

    model = Sam2VideoModel(Sam2VideoConfig(**TINY_SAM2_HF)) if video else Sam2Model(Sam2Config(**TINY_SAM2_HF))
    model.load_state_dict(random_state_dict(model, seed))
    image = SAM2_KEYS.to_transformers(drop_video_keys(torch.load(meta_checkpoint, weights_only=True)["model"]))
    missing, unexpected = model.load_state_dict(image, strict=False)
    assert not unexpected and all(SAM2_KEYS.is_video_key(k) for k in missing), (missing, unexpected)
    return model.eval()


class Checkpoints:
    """Writes each random checkpoint once under root (a session tmp dir) and hands back its path."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._lock = threading.Lock()

    def _once(self, name: str, write: Callable[[Path], object]) -> Path:
        path = self.root / name
        with self._lock:
            if not path.exists():
                tmp = self.root / f"{name}.partial"
                write(tmp)
                tmp.rename(path)
        return path

    def transformers(self, size: str = "tiny", seed: int = 0) -> Path:
        """Folder with config.json + model.safetensors; size: tiny, vit_b or slim."""
        config = {"tiny": TINY_HF, "vit_b": VIT_B_HF, "slim": SLIM_HF}[size]
        return self._once(f"hf-{size}-{seed}", lambda p: write_transformers(p, config, seed))

    def meta(self, size: str = "tiny", seed: int = 0) -> Path:
        """Meta's .pth; size: tiny or a segment-anything registry name (vit_b, ...)."""
        config = TINY if size == "tiny" else size
        return self._once(f"meta-{size}-{seed}.pth", lambda p: write_meta(p, config, seed))

    def mobile_sam(self, seed: int = 0) -> Path:
        return self._once(f"mobile_sam-{seed}.pt", lambda p: write_mobile_sam(p, seed))

    def sam2_meta(self, seed: int = 0) -> Path:
        """Meta's SAM 2 .pt at TINY sizes."""
        return self._once(f"sam2-meta-{seed}.pt", lambda p: write_sam2_meta(p, seed))

    def sam2_transformers(self, seed: int = 0, video: bool = True) -> Path:
        """config.json + model.safetensors of Sam2VideoModel (as in facebook/sam2.1-hiera-*) or Sam2Model,
        holding the image weights of sam2_meta(seed)."""
        meta = self.sam2_meta(seed)
        name = f"hf-sam2{'-video' if video else ''}-{seed}"
        return self._once(name, lambda p: sam2_transformers_model(meta, video, seed).save_pretrained(p))

    def published(self) -> dict[str, dict[str, Path]]:
        """Every repo of sam.weights.KNOWN_MODELS with its files at their published paths: tiny random models.

        Each file gets its own seed, so the models differ; their architecture is read from the files. The
        SAM 2.1 repos also hold transformers' layout (config.json + model.safetensors of Sam2VideoModel) with
        the same image weights as their .pt, as facebook/sam2.1-hiera-* do.
        """
        from sam.weights import KNOWN_MODELS

        repos: dict[str, dict[str, Path]] = {}
        for seed, known in enumerate(KNOWN_MODELS.values()):
            files = repos.setdefault(known.repo_id, {})
            if known.files[-1] in files:
                continue  # an alias of a model already there
            if known.format == "transformers":
                files.update(repo_files(self.transformers("tiny", seed)))
            elif known.config == "tiny_vit":
                files[known.files[0]] = self.mobile_sam(seed)
            elif known.config.startswith("hiera_"):
                files[known.files[0]] = self.sam2_meta(seed)
                if known.repo_id.startswith("facebook/sam2.1-"):
                    files.update(repo_files(self.sam2_transformers(seed)))
            else:
                files[known.files[0]] = self.meta("tiny", seed)
        return repos


BASE = "facebook/sam-vit-base"
WEIGHTS = "model.safetensors"


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
