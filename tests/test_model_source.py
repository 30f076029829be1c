"""train/model_source.py: a model or tokenizer that cannot be loaded ends the run before anything heavy, with one
message per case that says what to do.

Offline cases run for real: a mistyped local folder, a folder that is not a model, HF_HUB_OFFLINE=1 with an empty
HF_HOME, through train/sft.py and `python -m launch prepare` (exit code 2, one line, torch never imported). The hub's
answers come from a local stand-in of its HTTP API on 127.0.0.1 that replies as huggingface.co does (status codes
and X-Error-Code headers), so huggingface_hub's real request and error mapping run: gated, missing, private, a bad
revision, no config.json, a refused token, and an unreachable hub with and without a cached copy."""

from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from train.model_source import MODEL, TOKENIZER, Reference, check_reference, missing_from_cache
from train.config import ConfigError

REPO = Path(__file__).resolve().parent.parent
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def ref(value, needs=(MODEL, TOKENIZER), key="model.name_or_path", revision=None) -> Reference:
    return Reference(key, str(value), revision, tuple(needs))


def model_folder(path: Path, weights="model.safetensors", tokenizer=True) -> Path:
    """A folder with the files a model folder has (contents do not matter to the check)."""
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    if weights:
        (path / weights).write_bytes(b"\0")
    if tokenizer:
        (path / "tokenizer.json").write_text("{}")
    return path


def cached_repo(cache: Path, repo_id: str, files=("config.json", "model.safetensors", "tokenizer.json")) -> Path:
    """The hub cache layout huggingface_hub writes: models--org--name/{refs/main, snapshots/<commit>/<file>}."""
    root = cache / f"models--{repo_id.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(COMMIT)
    snap = root / "snapshots" / COMMIT
    snap.mkdir(parents=True)
    for f in files:
        (snap / f).write_text("{}")
    return snap


# ---------------------------------------------------------------------------------------------------------------------
# Local folders
# ---------------------------------------------------------------------------------------------------------------------

def test_a_mistyped_local_folder_names_the_closest_folders(tmp_path):
    model_folder(tmp_path / "assets" / "smollm2-135m-instruct")
    with pytest.raises(ConfigError) as e:
        check_reference(ref(tmp_path / "assets" / "smollm2-135m-instruc"))
    msg = str(e.value)
    assert "model.name_or_path: there is no folder" in msg and "the closest: smollm2-135m-instruct" in msg
    assert str(tmp_path / "assets" / "smollm2-135m-instruct") in msg  # the corrected path, ready to paste
    with pytest.raises(ConfigError, match=r"has no 'asets'; the closest: assets\. .*assets/smollm2-135m-instruct"):
        check_reference(ref(tmp_path / "asets" / "smollm2-135m-instruct"))  # a mistake higher up the path
    with pytest.raises(ConfigError, match=r"has no 'zzz' \(its folders: assets\)"):  # nothing close: what is there
        check_reference(ref(tmp_path / "zzz"))
    assert check_reference(ref(tmp_path / "assets" / "smollm2-135m-instruct")) is None


def test_a_folder_that_is_not_a_model_or_has_no_tokenizer_says_which_file_is_missing(tmp_path):
    model_folder(tmp_path / "hub" / "snapshots" / "abc" / "inner")
    with pytest.raises(ConfigError, match=r"has no config.json, so it is not a model folder\. It contains model "
                                          r"folders: .*snapshots/abc/inner"):
        check_reference(ref(tmp_path / "hub"))
    model_folder(tmp_path / "bin", weights="pytorch_model.bin")
    with pytest.raises(ConfigError, match=r"no \.safetensors weights \(it has pytorch_model\.bin\)\. Training loads "
                                          r"safetensors only.*save_pretrained"):
        check_reference(ref(tmp_path / "bin"))
    model_folder(tmp_path / "notok", tokenizer=False)
    with pytest.raises(ConfigError, match=r"has no tokenizer files .* Set model\.tokenizer_name_or_path"):
        check_reference(ref(tmp_path / "notok"))
    assert check_reference(ref(tmp_path / "notok", needs=(MODEL,))) is None  # the tokenizer comes from elsewhere
    (tmp_path / "file.gguf").write_bytes(b"\0")
    with pytest.raises(ConfigError, match=r"is a file; point it to the folder"):
        check_reference(ref(tmp_path / "file.gguf"))


def run_entry(argv_code: str, env_extra: dict) -> subprocess.CompletedProcess:
    """Run an entry point in a fresh interpreter and report whether torch was imported before it returned."""
    code = f"import sys\n{argv_code}\nprint('TORCH_IMPORTED', 'torch' in sys.modules)\nsys.exit(rc)"
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", **env_extra}
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("entry", ["sft", "prepare"])
def test_entry_points_stop_on_a_mistyped_folder_before_torch_is_imported(tmp_path, entry):
    model_folder(tmp_path / "smollm2-135m-instruct")
    wrong = f"model.name_or_path={tmp_path / 'smollm2-135m-instruc'}"
    recipe = "configs/recipes/demo_cpu.yaml"
    call = (f"from train.sft import run\nrc = run(['--config', '{recipe}', '{wrong}', 'output_dir={tmp_path}/o'])"
            if entry == "sft" else
            f"from launch.__main__ import main\nrc = main(['prepare', '--config', '{recipe}', '{wrong}'])")
    started = time.time()
    res = run_entry(call, {"HF_HUB_OFFLINE": "1"})
    elapsed = time.time() - started
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert res.returncode == 2, res.stderr[-2000:]
    assert len(errors) == 1 and "the closest: smollm2-135m-instruct" in errors[0], res.stderr
    assert "Traceback" not in res.stderr and "TORCH_IMPORTED False" in res.stdout, (res.stdout, elapsed)


def test_launch_run_stops_before_starting_any_process(tmp_path):
    res = subprocess.run([sys.executable, "-m", "launch", "run", "--config", "configs/recipes/demo_cpu.yaml",
                          f"model.name_or_path={tmp_path / 'nope'}", f"output_dir={tmp_path / 'o'}"], cwd=REPO,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "error: model.name_or_path: there is no folder" in res.stderr, res.stderr
    assert "train/sft.py" not in res.stdout  # no command printed, nothing started


# ---------------------------------------------------------------------------------------------------------------------
# Hub ids, offline
# ---------------------------------------------------------------------------------------------------------------------

def test_offline_hub_id_with_an_empty_cache_gives_the_download_command(tmp_path):
    hf_home = tmp_path / "hf_home"
    recipe = "configs/recipes/qwen3_8b_mna_lora.yaml"
    call = f"from launch.__main__ import main\nrc = main(['prepare', '--config', '{recipe}', 'data.sources=[{{path: x}}]'])"
    res = run_entry(call, {"HF_HUB_OFFLINE": "1", "HF_HOME": str(hf_home)})
    assert res.returncode == 2, res.stderr[-2000:]
    msg = res.stderr.strip()
    assert msg.count("\n") == 0 and msg.startswith("error: model.name_or_path: 'Qwen/Qwen3-8B' is a hub id"), msg
    assert "HF_HUB_OFFLINE=1 is set" in msg and "tokenizer.json missing" in msg  # prepare needs only the tokenizer
    assert f"hf download Qwen/Qwen3-8B --cache-dir {hf_home / 'hub'}" in msg
    assert "TORCH_IMPORTED False" in res.stdout


def test_the_tokenizer_reference_is_checked_on_its_own(tmp_path):
    model = model_folder(tmp_path / "model", tokenizer=False)
    call = (f"from train.sft import run\nrc = run(['--config', 'configs/recipes/demo_cpu.yaml', "
            f"'model.name_or_path={model}', 'model.tokenizer_name_or_path=Qwen/Qwen3-8B', 'output_dir={tmp_path}/o'])")
    res = run_entry(call, {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "empty")})
    assert res.returncode == 2 and "error: model.tokenizer_name_or_path: 'Qwen/Qwen3-8B' is a hub id" in res.stderr
    assert "hf download Qwen/Qwen3-8B" in res.stderr and "Traceback" not in res.stderr


def test_offline_hub_id_in_the_cache_passes_and_a_missing_shard_is_named(tmp_path):
    cache = tmp_path / "hub"
    cached_repo(cache, "org/small")
    assert check_reference(ref("org/small"), offline=True, cache_dir=cache) is None
    snap = cached_repo(cache, "org/sharded", files=("config.json", "tokenizer_config.json"))
    shards = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    (snap / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": shards[0], "b": shards[1]}}))
    (snap / shards[0]).write_text("")
    assert missing_from_cache("org/sharded", None, (MODEL, TOKENIZER), cache) == [shards[1]]
    with pytest.raises(ConfigError, match=rf"\({shards[1]} missing\)\. Download it first"):
        check_reference(ref("org/sharded"), offline=True, cache_dir=cache)
    with pytest.raises(ConfigError, match=r"revision v2 --cache-dir"):  # a revision the cache does not hold
        check_reference(ref("org/small", revision="v2"), offline=True, cache_dir=cache)


# ---------------------------------------------------------------------------------------------------------------------
# Hub ids, with a hub that answers: a local stand-in of its HTTP API
# ---------------------------------------------------------------------------------------------------------------------

class FakeHub(http.server.BaseHTTPRequestHandler):
    """Answers HEAD/GET /{org}/{name}/resolve/{revision}/{file} as huggingface.co does."""

    repos = {"org/open": {"files": {"config.json", "tokenizer_config.json"}},
             "org/gated": {"files": {"config.json"}, "gated": True},
             "org/adapter-only": {"files": {"adapter_config.json"}}}
    token_with_access = "hf_" + "a" * 34
    token_invalid = "hf_" + "b" * 34

    def log_message(self, *args):
        pass

    def answer(self, status, code=None, message=None, body=b""):
        self.send_response(status)
        if code:
            self.send_header("X-Error-Code", code)
        if message:
            self.send_header("X-Error-Message", message)
        if status == 200:
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("ETag", '"abc"')
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command == "GET":
            self.wfile.write(body)

    def do_HEAD(self):
        parts = self.path.split("?")[0].strip("/").split("/")
        repo_id, revision, filename = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
        auth = self.headers.get("Authorization", "")
        if auth and auth != f"Bearer {self.token_with_access}":
            return self.answer(401, message="Invalid credentials in Authorization header")
        repo = self.repos.get(repo_id)
        if repo is None:
            return self.answer(401, "RepoNotFound", "Repository not found")
        if repo.get("gated") and not auth:
            return self.answer(401, "GatedRepo", f"Access to model {repo_id} is restricted. You must have access to "
                                                 f"it and be authenticated to access it. Please log in.")
        if revision not in ("main", COMMIT):
            return self.answer(404, "RevisionNotFound", "Invalid rev id")
        if filename not in repo["files"]:
            return self.answer(404, "EntryNotFound", f"{filename} does not exist on \"main\"")
        return self.answer(200, body=b"{}")

    do_GET = do_HEAD


@pytest.fixture(scope="module")
def hub():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"  # nothing listens there once the socket closes


@pytest.fixture
def no_token(monkeypatch, tmp_path):
    """Online (the suite runs with HF_HUB_OFFLINE=1) and without a token; both restored after the test."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "no-tokens"))


def online(value, hub, cache, **kw):
    return check_reference(ref(value, **kw), offline=False, cache_dir=cache, endpoint=hub, timeout=5)


def test_hub_answers_become_one_message_each(hub, tmp_path, no_token, monkeypatch):
    cache = tmp_path / "hub"
    cached_repo(cache, "org/opne")
    assert online("org/open", hub, cache) is None
    with pytest.raises(ConfigError, match=r"'org/gated' is a gated model and no token is set: accept its licence at "
                                          rf"{hub}/org/gated, .*set HF_TOKEN"):
        online("org/gated", hub, cache)
    with pytest.raises(ConfigError, match=r"the hub has no model 'org/oepn' \(check the spelling .*\)\. If it is "
                                          r"private, set HF_TOKEN.*Cached models with a similar name: org/opne"):
        online("org/oepn", hub, cache)
    with pytest.raises(ConfigError, match=r"model\.revision: 'org/open' has no revision 'v9'"):
        online("org/open", hub, cache, revision="v9")
    with pytest.raises(ConfigError, match=r"'org/adapter-only' has no config\.json, so transformers cannot load it"):
        online("org/adapter-only", hub, cache)
    with pytest.raises(ConfigError, match=r"model\.tokenizer_name_or_path: 'org/gated' has no tokenizer_config.json"):
        monkeypatch.setenv("HF_TOKEN", FakeHub.token_with_access)
        online("org/gated", hub, cache, needs=(TOKENIZER,), key="model.tokenizer_name_or_path")
    assert online("org/gated", hub, cache) is None  # with a token that has access
    monkeypatch.setenv("HF_TOKEN", FakeHub.token_invalid)
    with pytest.raises(ConfigError, match=r"the hub refused the token .*HTTP 401.*invalid or expired"):
        online("org/open", hub, cache)


def test_gated_with_a_token_without_access(hub, tmp_path, no_token, monkeypatch):
    class NoAccess(FakeHub):  # the hub's answer to an authenticated user who has not been granted access: 403
        def do_HEAD(self):
            return self.answer(403, "GatedRepo", "Access to model org/gated is restricted and you are not in the "
                                                 "authorized list.")
        do_GET = do_HEAD

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NoAccess)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("HF_TOKEN", FakeHub.token_with_access)
    try:
        with pytest.raises(ConfigError, match=r"is a gated model and your token .* has no access yet: accept its "
                                              r"licence at"):
            online("org/gated", f"http://127.0.0.1:{server.server_address[1]}", tmp_path)
    finally:
        server.shutdown()
        server.server_close()


def test_an_unreachable_hub_fails_fast_without_a_cache_and_goes_offline_with_one(tmp_path, no_token, monkeypatch):
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    dead = closed_port()
    started = time.time()
    with pytest.raises(ConfigError, match=r"cannot reach the hub \(ConnectError.*does not hold .* hf download "
                                          r"org/model --cache-dir .* then set HF_HUB_OFFLINE=1"):
        online("org/model", dead, cache)
    assert time.time() - started < 5  # one request, no retries (transformers: 23 s of retries per file)
    cached_repo(cache, "org/model")
    note = online("org/model", dead, cache)
    assert note.startswith("note: cannot reach the hub") and "using the cached copy of 'org/model'" in note
    assert os.environ["HF_HUB_OFFLINE"] == "1" and constants.is_offline_mode()  # transformers reads the cache only


def test_the_check_takes_milliseconds(tmp_path):
    """Measured for the report: what the check adds to every run (after huggingface_hub's import, ~0.25 s)."""
    folder = model_folder(tmp_path / "m")
    cache = tmp_path / "hub"
    cached_repo(cache, "org/m")
    check_reference(ref(folder))  # imports
    timings = {}
    for label, call in {"local folder": lambda: check_reference(ref(folder)),
                        "cached hub id, offline": lambda: check_reference(ref("org/m"), offline=True, cache_dir=cache)
                        }.items():
        started = time.perf_counter()
        for _ in range(20):
            call()
        timings[label] = (time.perf_counter() - started) / 20
    print({k: f"{v * 1000:.2f} ms" for k, v in timings.items()})
    assert all(t < 0.05 for t in timings.values()), timings
