"""Downloads from the Hugging Face Hub through huggingface_hub, with errors that say how to fix them.

huggingface_hub keeps its usual behaviour: the cache (HF_HOME / HF_HUB_CACHE), HF_TOKEN, HF_ENDPOINT,
HF_HUB_OFFLINE, revision pinning and its progress bar. On top of it, a file fetched for the first time
is checked against the sha256 the Hub gives as its ETag (large files), so a corrupted download is caught
and removed instead of failing later with an obscure unpickling error. Before a file that is not cached is
fetched, one request with a short timeout checks that the Hub answers at all: huggingface_hub would retry a
silent Hub for about six and a half minutes (six tries of 60 s, whatever HF_HUB_ETAG_TIMEOUT says).
"""

import hashlib
import os
import re
from pathlib import Path

__all__ = ["WeightsError", "download"]


class WeightsError(Exception):
    """Weights could not be found, fetched or loaded; the message says why and what to do."""


_SHA256 = re.compile(r"[0-9a-f]{64}")
_FIX = (
    "Check the network connection (and HF_ENDPOINT if you use a mirror), set HF_TOKEN for gated or private "
    "repos, or pass a local file or folder to load_model."
)


def _hub_state() -> tuple[str, str, bool]:
    from huggingface_hub import constants

    return constants.ENDPOINT, constants.HF_HUB_CACHE, constants.is_offline_mode()


def download(repo_id: str, filename: str, *, revision: str | None = None, force_download: bool = False) -> Path:
    """Path of `filename` from Hub repo `repo_id` in the local cache, downloading it if needed."""
    from huggingface_hub import errors as e
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    endpoint, cache, offline = _hub_state()
    what = f"{filename} from {repo_id}" + (f" (revision {revision})" if revision else "")
    try:
        cached = try_to_load_from_cache(repo_id, filename, revision=revision)
        if (force_download or not isinstance(cached, str)) and not offline:
            _probe(repo_id, filename, revision, what)
        path = hf_hub_download(repo_id, filename, revision=revision, force_download=force_download)
    except e.GatedRepoError as err:
        raise WeightsError(
            f"{repo_id} is gated (HTTP {_status(err)}): accept its terms on {endpoint}/{repo_id} and set HF_TOKEN "
            "to a token of that account."
        ) from err
    except e.RepositoryNotFoundError as err:
        status = _status(err)
        auth = "HF_TOKEN is set but has no access to it" if os.environ.get("HF_TOKEN") else "set HF_TOKEN"
        raise WeightsError(
            f"repository {repo_id} not found on {endpoint} (HTTP {status}{', unauthorized' if status == 401 else ''}). "
            f"Check the repo id; if it is private or gated, {auth}."
        ) from err
    except e.RevisionNotFoundError as err:
        raise WeightsError(f"revision {revision!r} not found in {repo_id} on {endpoint} (HTTP 404)") from err
    except WeightsError:
        raise
    except e.LocalEntryNotFoundError as err:
        if offline:
            raise WeightsError(
                f"HF_HUB_OFFLINE is set and {what} is not in the cache ({cache}). Unset HF_HUB_OFFLINE to "
                "download it once, or pass a local file or folder to load_model."
            ) from err
        reason = _reason(err)
        failed = f"the Hub at {endpoint} answered {reason} for" if reason.startswith("HTTP") else (
            f"could not reach the Hub at {endpoint} ({reason}) to download"
        )
        raise WeightsError(f"{failed} {what}, and it is not cached. {_FIX}") from err
    except e.EntryNotFoundError as err:
        hint = " (a repo id alone means the transformers layout; name the file: owner/name/path/to/file)"
        raise WeightsError(
            f"{filename} not found in {repo_id} on {endpoint} (HTTP 404)" + (hint if filename == "config.json" else "")
        ) from err
    except e.HFValidationError as err:
        raise WeightsError(f"{repo_id!r} is not a valid Hub repo id: {err}") from err
    except e.HfHubHTTPError as err:
        raise WeightsError(f"the Hub at {endpoint} refused {what} (HTTP {_status(err)}): {err}. {_FIX}") from err
    except Exception as err:  # network errors while streaming, disk full, ...
        raise WeightsError(f"downloading {what} from {endpoint} failed: {type(err).__name__}: {err}. {_FIX}") from err
    if force_download or not isinstance(cached, str):
        _verify(Path(path), what)
    return Path(path)


def _probe(repo_id: str, filename: str, revision: str | None, what: str) -> None:
    """One HEAD request for the file, without retries, timing out after HF_HUB_ETAG_TIMEOUT (10 s by default).

    Only a timeout is final here (a Hub that accepts connections but never answers); any other outcome is left
    to hf_hub_download, which retries what is worth retrying and raises its usual errors.
    """
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url

    timeout = constants.HF_HUB_ETAG_TIMEOUT
    try:
        get_hf_file_metadata(hf_hub_url(repo_id, filename, revision=revision), timeout=timeout)
    except Exception as err:
        if _is_timeout(err):
            raise WeightsError(
                f"the Hub at {constants.ENDPOINT} did not answer within {timeout:g} s (HF_HUB_ETAG_TIMEOUT) to "
                f"download {what}. {_FIX} With the files cached, HF_HUB_OFFLINE=1 needs no Hub at all."
            ) from err


def _is_timeout(err: BaseException) -> bool:
    """A timeout of huggingface_hub's HTTP client (httpx2's TimeoutException) or of the socket."""
    return isinstance(err, TimeoutError) or any(c.__name__ == "TimeoutException" for c in type(err).__mro__)


def _reason(err: BaseException) -> str:
    """What went wrong under a huggingface_hub error: the HTTP status, a timeout or the network error."""
    seen: BaseException | None = err
    for _ in range(8):  # the chain of causes, not too deep
        seen = seen.__cause__ or seen.__context__
        if seen is None:
            break
        status = _status(seen)
        if status != "?":
            return f"HTTP {status}"
        if _is_timeout(seen):
            return "no answer in time"
        if any(c.__name__ in ("ConnectError", "NetworkError") for c in type(seen).__mro__):
            return f"{type(seen).__name__}: {seen}"[:200]
    return "no answer"


def _status(err: BaseException) -> int | str:
    response = getattr(err, "response", None)
    return getattr(response, "status_code", "?")


def _verify(path: Path, what: str) -> None:
    """Compare a fresh download with the sha256 in its blob name (the Hub's ETag for large files)."""
    blob = path.resolve()
    if not _SHA256.fullmatch(blob.name):
        return  # small git-stored files carry a git hash instead
    sha = hashlib.sha256()
    with open(blob, "rb") as f:
        while chunk := f.read(1 << 24):
            sha.update(chunk)
    digest = sha.hexdigest()
    if digest != blob.name:
        size = blob.stat().st_size
        blob.unlink(missing_ok=True)
        path.unlink(missing_ok=True)
        raise WeightsError(
            f"the download of {what} is corrupted or truncated ({size} bytes, sha256 {digest[:12]}... instead "
            f"of {blob.name[:12]}...); it was removed from the cache, try again"
        )
