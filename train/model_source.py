"""Can the model and its tokenizer be loaded from where the recipe says? Answered before anything heavy is imported
or loaded, with one message per case that says what to do, instead of transformers' ~100-line traceback.

    notes = check_model_sources(cfg)          # raises ConfigError (exit 2); notes are printed by the caller

The cases, each with its fix:
- a local path that does not exist: the closest folder names where the path stops existing;
- a local folder that is not a model (no config.json, no .safetensors weights) or has no tokenizer files;
- a hub id while offline (HF_HUB_OFFLINE=1) that the cache does not hold: the exact `hf download` command;
- a hub id the hub answers for: gated (set HF_TOKEN, accept the licence), missing or private, a revision or a
  config.json that does not exist;
- a hub the machine cannot reach: with no cached copy, download first; with one, this process switches to the cache
  (`HF_HUB_OFFLINE`), since transformers otherwise retries every file for about 23 s before it uses the cache.

Only huggingface_hub is used (no torch, no transformers): the cache is read with `try_to_load_from_cache`, the hub is
asked once with `get_hf_file_metadata` (one HEAD request, no retries, `PROBE_TIMEOUT_S`). Measured on a 2-core
machine: the check of a local folder takes ~0.01 ms and of a cached hub id offline ~0.6 ms, after a 0.25 s import of
huggingface_hub; an unreachable hub (no DNS) 0.1 s, where transformers spent 23 s of retries per file. train/sft.py
with a mistyped folder now stops in 0.5 s with one line (8.7 s and an 82-line traceback before); a hub id with no
network and no cache in 0.5 s (60 s before).
"""

from __future__ import annotations

import difflib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

from train.config import ConfigError

PROBE_TIMEOUT_S = 10.0  # one HEAD request to the hub; an air-gapped node that drops packets costs at most this
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "spiece.model", "vocab.json",
                   "vocab.txt")
MODEL = "model"
TOKENIZER = "tokenizer"


@dataclass(frozen=True)
class Reference:
    key: str  # the recipe key that names it, e.g. model.name_or_path
    value: str
    revision: Optional[str]
    needs: tuple  # what must be loadable from it: (MODEL,), (TOKENIZER,) or both


def references(cfg, need_model: bool = True) -> List[Reference]:
    """What a command loads: the model (unless `need_model` is False: `prepare` needs only the tokenizer) and the
    tokenizer, from model.tokenizer_name_or_path when it is set, else from the model's own reference."""
    model, tok = cfg.model.name_or_path, cfg.model.tokenizer_name_or_path
    if tok and tok != model:
        refs = [Reference("model.name_or_path", model, cfg.model.revision, (MODEL,))] if need_model else []
        return refs + [Reference("model.tokenizer_name_or_path", tok, cfg.model.revision, (TOKENIZER,))]
    needs = (MODEL, TOKENIZER) if need_model else (TOKENIZER,)
    return [Reference("model.name_or_path", model, cfg.model.revision, needs)]


def check_model_sources(cfg, need_model: bool = True, where: str = "", hub: bool = True,
                        offline: Optional[bool] = None, cache_dir: Optional[str | Path] = None,
                        base: Optional[Path] = None, endpoint: Optional[str] = None,
                        timeout: float = PROBE_TIMEOUT_S, offline_why: str = "HF_HUB_OFFLINE=1 is set") -> List[str]:
    """Check every reference of `cfg` (see `check_reference`); returns the notes to print."""
    notes = []
    for ref in references(cfg, need_model):
        note = check_reference(ref, where=where, hub=hub, offline=offline, cache_dir=cache_dir, base=base,
                               endpoint=endpoint, timeout=timeout, offline_why=offline_why)
        if note:
            notes.append(note)
    return notes


def check_reference(ref: Reference, where: str = "", hub: bool = True, offline: Optional[bool] = None,
                    cache_dir: Optional[str | Path] = None, base: Optional[Path] = None,
                    endpoint: Optional[str] = None, timeout: float = PROBE_TIMEOUT_S,
                    offline_why: str = "HF_HUB_OFFLINE=1 is set") -> Optional[str]:
    """Raise ConfigError when `ref` cannot be loaded; return a note (or None) when it can.

    `hub`: False checks local paths only (`launch slurm`, whose compute nodes may see another network). `offline`,
    `cache_dir` and `endpoint` default to huggingface_hub's own settings (HF_HUB_OFFLINE, HF_HOME / HF_HUB_CACHE,
    HF_ENDPOINT), the ones transformers will use. `base`: the folder relative paths start from (default: here).
    `offline_why`: how the message names the offline setting."""
    from huggingface_hub import constants

    prefix = f"{where}: " if where else ""
    value = ref.value.strip()
    path = Path(value).expanduser()
    if not path.is_absolute() and base is not None:
        path = base / path
    if path.is_dir():
        return _check_folder(ref, path, prefix)
    if path.exists():
        raise ConfigError(f"{prefix}{ref.key}: '{ref.value}' is a file; point it to the folder that holds config.json, "
                          f"the .safetensors weights and the tokenizer files (e.g. {ref.key}={_show(path.parent)})")
    if not _is_hub_id(value):
        raise ConfigError(f"{prefix}{ref.key}: there is no folder '{ref.value}'{_resolved(path)}. "
                          f"{_closest_folders(path)}")
    if not hub:
        return None
    offline = constants.is_offline_mode() if offline is None else offline
    cache_dir = Path(cache_dir or constants.HF_HUB_CACHE)
    missing = missing_from_cache(value, ref.revision, ref.needs, cache_dir)
    local = _local_hint(path, value)
    if offline:
        if missing:
            raise ConfigError(
                f"{prefix}{ref.key}: '{value}' is a hub id, {offline_why} and the cache ({cache_dir}) does "
                f"not hold {_what(ref.needs)} ({', '.join(missing)} missing). Download it first on a machine with "
                f"internet, into the same cache: {download_command(value, ref.revision, cache_dir)}; or set "
                f"{ref.key} to a local folder that holds the model.{local}")
        return None
    return _probe(ref, value, missing, cache_dir, prefix, local, endpoint, timeout)


# ----------------------------------------------------------------------------------------------------------------------
# Local folders
# ----------------------------------------------------------------------------------------------------------------------


def _check_folder(ref: Reference, folder: Path, prefix: str) -> None:
    names = {p.name for p in folder.iterdir()}
    if MODEL in ref.needs:
        if "config.json" not in names:
            inner = sorted(_show(p.parent) for p in folder.glob("*/config.json")) + \
                sorted(_show(p.parent) for p in folder.glob("*/*/*/config.json"))  # a hub cache: snapshots/<hash>/
            hint = (f" It contains model folders: {', '.join(inner[:5])}; set {ref.key} to one of them" if inner else
                    " Point it to the folder that holds config.json and the .safetensors weights (what "
                    "save_pretrained or `hf download <id> --local-dir DIR` writes)")
            raise ConfigError(f"{prefix}{ref.key}: '{ref.value}' has no config.json, so it is not a model "
                              f"folder.{hint}")
        if not any(n.endswith(".safetensors") for n in names):
            other = sorted(n for n in names if n.endswith((".bin", ".pt", ".pth", ".gguf", ".ckpt")))
            found = f" (it has {', '.join(other[:3])})" if other else ""
            raise ConfigError(
                f"{prefix}{ref.key}: '{ref.value}' has config.json but no .safetensors weights{found}. Training loads "
                f"safetensors only (pickled .bin weights can run code when loaded). Convert once where you trust the "
                f"file: python -c \"from transformers import AutoModelForCausalLM as M; "
                f"M.from_pretrained('{ref.value}').save_pretrained('{ref.value}-safetensors')\"")
    if TOKENIZER in ref.needs and not names & set(TOKENIZER_FILES):
        raise ConfigError(
            f"{prefix}{ref.key}: '{ref.value}' has no tokenizer files (none of {', '.join(TOKENIZER_FILES[:3])}). "
            f"Set model.tokenizer_name_or_path to the folder or hub id the tokenizer comes from, or save it there "
            f"(tokenizer.save_pretrained('{ref.value}'))")
    return None


def _show(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _resolved(path: Path) -> str:
    return "" if path.is_absolute() else f" (from {Path.cwd()})"


def _closest_folders(path: Path) -> str:
    """Where the path stops existing, and the folder names there most like the missing part (the corrected path as the
    user wrote theirs: absolute, or relative to this folder)."""
    given_absolute = path.is_absolute()
    path = path if given_absolute else Path.cwd() / path
    anchor, missing = Path(path.anchor), None
    for part in path.parts[1:]:
        if not (anchor / part).is_dir():
            missing = part
            break
        anchor = anchor / part
    try:
        names = sorted(p.name for p in anchor.iterdir() if p.is_dir() and not p.name.startswith("."))[:5000]
    except OSError:
        names = []
    close = difflib.get_close_matches(missing or "", names, n=3, cutoff=0.6)
    where = _show(anchor) if anchor != Path.cwd() else "."
    if close:
        rest = path.parts[len(anchor.parts) + 1:]
        corrected = anchor / close[0] / Path(*rest) if rest else anchor / close[0]
        fixed = str(corrected) if given_absolute else _show(corrected)
        return (f"'{where}' has no '{missing}'; the closest: {', '.join(close)}. Fix the path in the recipe or on the "
                f"command line, e.g. {fixed}")
    more = " ..." if len(names) > 10 else ""
    listing = f"its folders: {', '.join(names[:10])}{more}" if names else "it has no folders"
    return f"'{where}' has no '{missing}' ({listing}). Fix the path, or give a hub id such as Qwen/Qwen3-8B"


def _local_hint(path: Path, value: str) -> str:
    """For a hub-id-shaped value that may be a mistyped local path (its first part is a folder here, or a folder here
    has a very similar name): where that path stops existing."""
    full = path if path.is_absolute() else Path.cwd() / path
    if "/" in value and full.parent.is_dir():
        return f" If you meant a local folder: {_closest_folders(path)}"
    if "/" not in value:
        try:
            names = [p.name for p in full.parent.iterdir() if p.is_dir()]
        except OSError:
            names = []
        if difflib.get_close_matches(value, names, n=1, cutoff=0.8):
            return f" If you meant a local folder: {_closest_folders(path)}"
    return ""


def _is_hub_id(value: str) -> bool:
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if value.startswith(("/", "~", ".")):
        return False
    try:
        validate_repo_id(value)
    except HFValidationError:
        return False
    return True


# ----------------------------------------------------------------------------------------------------------------------
# The hub and its cache
# ----------------------------------------------------------------------------------------------------------------------


def _what(needs: Sequence[str]) -> str:
    return " and ".join({MODEL: "the model's config and weights", TOKENIZER: "its tokenizer"}[n] for n in needs)


def download_command(repo_id: str, revision: Optional[str], cache_dir: Path) -> str:
    rev = f" --revision {revision}" if revision else ""
    return f"hf download {repo_id}{rev} --cache-dir {cache_dir}  (older huggingface_hub: huggingface-cli download ...)"


def missing_from_cache(repo_id: str, revision: Optional[str], needs: Sequence[str], cache_dir: Path) -> List[str]:
    """The files `needs` calls for that the hub cache does not hold: config.json and the safetensors weights (one file,
    or the index and every shard it names) for a model, one tokenizer file for a tokenizer."""
    from huggingface_hub import try_to_load_from_cache

    def cached(filename: str) -> Optional[str]:
        found = try_to_load_from_cache(repo_id, filename, cache_dir=str(cache_dir), revision=revision)
        return found if isinstance(found, str) else None

    missing = []
    if MODEL in needs:
        if not cached("config.json"):
            missing.append("config.json")
        index = cached("model.safetensors.index.json")
        if index:
            shards = sorted(set(json.loads(Path(index).read_text(encoding="utf-8")).get("weight_map", {}).values()))
            missing += [s for s in shards if not cached(s)]
        elif not cached("model.safetensors"):
            missing.append("*.safetensors")
    if TOKENIZER in needs and not any(cached(f) for f in ("tokenizer.json", "tokenizer_config.json")):
        missing.append("tokenizer.json")
    return missing


def cached_repos(cache_dir: Path) -> List[str]:
    """Model repositories the cache holds (folder names models--org--name)."""
    try:
        return sorted(p.name[len("models--"):].replace("--", "/") for p in cache_dir.glob("models--*"))
    except OSError:
        return []


def _probe(ref: Reference, repo_id: str, missing: List[str], cache_dir: Path, prefix: str, local: str,
           endpoint: Optional[str], timeout: float) -> Optional[str]:
    """One HEAD request for the first file transformers reads; the hub's answer mapped to a message."""
    from huggingface_hub import constants, get_hf_file_metadata, get_token, hf_hub_url
    from huggingface_hub.errors import (EntryNotFoundError, GatedRepoError, HfHubHTTPError, HTTPError,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    filename = "config.json" if MODEL in ref.needs else "tokenizer_config.json"
    url = hf_hub_url(repo_id, filename, revision=ref.revision, endpoint=endpoint)
    page = f"{(endpoint or constants.ENDPOINT).rstrip('/')}/{repo_id}"
    token = get_token()
    try:
        get_hf_file_metadata(url, timeout=timeout, endpoint=endpoint)
        return None
    except GatedRepoError:
        if token:
            raise ConfigError(f"{prefix}{ref.key}: '{repo_id}' is a gated model and your token (HF_TOKEN or `hf auth "
                              f"login`) has no access yet: accept its licence at {page} with the account of that "
                              f"token (approval can take a while), then run again") from None
        raise ConfigError(f"{prefix}{ref.key}: '{repo_id}' is a gated model and no token is set: accept its licence at "
                          f"{page}, create a read token at https://huggingface.co/settings/tokens and set HF_TOKEN "
                          f"(or run `hf auth login`)") from None
    except RepositoryNotFoundError:
        cached = difflib.get_close_matches(repo_id, cached_repos(cache_dir), n=3, cutoff=0.6)
        near = f" Cached models with a similar name: {', '.join(cached)}." if cached else ""
        auth = "" if token else " If it is private, set HF_TOKEN to a token with access."
        raise ConfigError(f"{prefix}{ref.key}: the hub has no model '{repo_id}' (check the spelling at {page})."
                          f"{auth}{near}{local}") from None
    except RevisionNotFoundError:
        raise ConfigError(f"{prefix}model.revision: '{repo_id}' has no revision '{ref.revision}'. Use a branch, tag or "
                          f"commit listed at {page}/commits, or remove model.revision for main") from None
    except EntryNotFoundError:
        raise ConfigError(f"{prefix}{ref.key}: '{repo_id}' has no {filename}, so transformers cannot load it as a "
                          f"{'model' if MODEL in ref.needs else 'tokenizer'} (a GGUF-only or adapter repository?). "
                          f"Use the repository of the original model; see the files at {page}/tree/main") from None
    except HfHubHTTPError as e:  # 5xx, invalid credentials...: the hub answered, but not usefully
        status = getattr(e.response, "status_code", "?")
        if status == 401:
            raise ConfigError(f"{prefix}{ref.key}: the hub refused the token for '{repo_id}' (HTTP 401): HF_TOKEN (or "
                              f"the token of `hf auth login`) is invalid or expired; create a new one at "
                              f"https://huggingface.co/settings/tokens") from None
        reason = f"HTTP {status}"
    except (HTTPError, OSError) as e:  # no DNS, no route, a timeout, a proxy that refuses
        reason = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else 'no answer'}"
    # The hub cannot be reached from here.
    if missing:
        raise ConfigError(
            f"{prefix}{ref.key}: cannot reach the hub ({reason}) and the cache ({cache_dir}) does not hold "
            f"{_what(ref.needs)} of '{repo_id}' ({', '.join(missing)} missing). On a node without internet, download "
            f"it first on one with internet, into a cache both see: "
            f"{download_command(repo_id, ref.revision, cache_dir)}; then set HF_HUB_OFFLINE=1 (HF_HOME to that cache) "
            f"for the run.{local}")
    go_offline()
    return (f"note: cannot reach the hub ({reason}); using the cached copy of '{repo_id}' in {cache_dir}, offline "
            f"(set HF_HUB_OFFLINE=1 on nodes without internet: transformers otherwise retries every file for ~23 s)")


def go_offline() -> None:
    """This process reads the hub cache only from now on (and the processes it starts: the variable is inherited)."""
    from huggingface_hub import constants

    os.environ["HF_HUB_OFFLINE"] = "1"
    constants.HF_HUB_OFFLINE = True  # read by huggingface_hub.is_offline_mode(), which transformers asks per call


def hub_config_file(repo_id: str, revision: Optional[str] = None, timeout: float = PROBE_TIMEOUT_S,
                    endpoint: Optional[str] = None) -> Optional[Path]:
    """A hub model's config.json without transformers' retries: the cached copy, else a download when one HEAD
    request gets an answer; None offline, unreachable, gated or missing (the planner then falls back)."""
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_download, hf_hub_url, try_to_load_from_cache
    from huggingface_hub.errors import HTTPError

    if not _is_hub_id(repo_id):
        return None
    found = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    if isinstance(found, str):
        return Path(found)
    if constants.is_offline_mode():
        return None
    try:
        get_hf_file_metadata(hf_hub_url(repo_id, "config.json", revision=revision, endpoint=endpoint), timeout=timeout,
                             endpoint=endpoint)
        return Path(hf_hub_download(repo_id, "config.json", revision=revision, etag_timeout=timeout,
                                    endpoint=endpoint))
    except (HTTPError, OSError):
        return None
