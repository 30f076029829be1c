"""train/export/gguf.py and ollama.py: a GGUF written with llama.cpp's `gguf` package loads back through transformers'
GGUF loader to the same logits (f16: exactly those of the source rounded to f16), the same token ids for Korean
text and the same chat template, for Llama, Qwen2, Qwen3, Gemma-2 and Gemma-3 built on the real tokenizers; SmolLM2's
real weights in f16 and q8_0; and the Ollama Modelfile's template writes what the training template writes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from launch import assets

REPO = Path(__file__).resolve().parent.parent
KOREAN = "진통과 해열 효과가 있는 파스형 의약품은 임산부와 노인에게 적합합니다. 삼성전자 주가가 3.5% 올랐다!"


def tokenizer_json(folder) -> dict:
    return json.loads((Path(folder) / "tokenizer.json").read_text(encoding="utf-8"))


def test_each_tokenizer_gets_the_pre_tokenizer_llama_cpp_splits_it_with():
    """llama.cpp's names (src/llama-vocab.cpp): Qwen2/3 split digits one by one ('qwen2'), Llama-3 in threes
    ('llama-bpe'), SmolLM2 as converted by the demo asset and the tiny model use GPT-2's split, Gemma is a
    sentencepiece-style vocabulary ('llama' model, 'default' pre)."""
    from train.export.gguf import ExportError, tokenizer_kind

    assert tokenizer_kind(tokenizer_json(assets.qwen3_tokenizer())) == ("gpt2", "qwen2")
    assert tokenizer_kind(tokenizer_json(assets.llama3_tokenizer())) == ("gpt2", "llama-bpe")
    assert tokenizer_kind(tokenizer_json(assets.gemma_tokenizer())) == ("llama", "default")
    assert tokenizer_kind(tokenizer_json(assets.smollm2_135m_instruct())) == ("gpt2", "gpt-2")
    assert tokenizer_kind(json.loads(assets.tiny_tokenizer().backend_tokenizer.to_str())) == ("gpt2", "gpt-2")
    bert_like = {"model": {"type": "WordPiece"}, "pre_tokenizer": {"type": "BertPreTokenizer"}}
    with pytest.raises(ExportError, match="would split text differently"):
        tokenizer_kind(bert_like)


def tiny_model(folder: Path, arch: str, tokenizer_dir: Path):
    """A 2-layer model of `arch` on a real tokenizer, random weights (norms and biases too, so that a norm stored
    without llama.cpp's +1 or a bias left out would show), saved in float32."""
    from transformers import (AutoModelForCausalLM, AutoTokenizer, Gemma2Config, Gemma3TextConfig, LlamaConfig,
                              Qwen2Config, Qwen3Config)

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    common = dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                  bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                  pad_token_id=tokenizer.pad_token_id)
    config = {
        "llama": lambda: LlamaConfig(tie_word_embeddings=False, **common),
        "qwen2": lambda: Qwen2Config(**common),
        # transformers' GGUF loader ignores qwen3.attention.key_length and assumes Qwen3's head_dim of 128 (as in
        # Qwen3-8B); llama.cpp reads it. The tiny model keeps 128 so the loader can rebuild it.
        "qwen3": lambda: Qwen3Config(head_dim=128, **common),
        # Gemma-2/3: llama.cpp scales attention by 1/sqrt(head_dim) and transformers' GGUF loader rebuilds the config
        # with query_pre_attn_scalar 256; a head size of 256 (as in Gemma-2 2B/9B, Gemma-3 1B-12B) agrees with both.
        "gemma2": lambda: Gemma2Config(head_dim=256, **common),
        "gemma3_text": lambda: Gemma3TextConfig(head_dim=256, **common),
    }[arch]()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name or "bias" in name:
                param.add_(0.1 * torch.randn_like(param))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model, tokenizer


def load_gguf(path: Path, with_tokenizer: bool = True):
    """The model (and the tokenizer: slow for a 150k-260k vocabulary) transformers' GGUF loader rebuilds."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name) if with_tokenizer else None


def tiny_tokenizer_dir(folder: Path) -> Path:
    """The tiny BPE tokenizer of launch/assets.py in a folder: for checks of an architecture's tensors, where the
    tokenizer round trip is another architecture's test (a real vocabulary makes each test about 40 s)."""
    assets.tiny_tokenizer().save_pretrained(folder)
    return folder


def rounded_to_f16(model):
    """The source model with every matrix rounded to float16 (what an f16 GGUF stores; 1-D tensors stay float32)."""
    copy = type(model)(model.config).eval()
    copy.load_state_dict({k: v.half().float() if v.dim() > 1 else v for k, v in model.state_dict().items()})
    return copy


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


@pytest.mark.slow
@pytest.mark.parametrize("arch,tokenizer", [("llama", "llama3"), ("qwen2", "tiny"), ("qwen3", "qwen3"),
                                            ("gemma2", "tiny"), ("gemma3_text", "gemma")])
def test_f16_gguf_loads_back_to_the_same_logits_tokens_and_template(tmp_path, arch, tokenizer):
    """Each real tokenizer (Llama-3, Qwen3, Gemma) once, with the architecture of its family; Qwen2 and Gemma-2 (the
    same tokenizers) on the tiny one."""
    from train.export.gguf import write_gguf

    folder = tiny_tokenizer_dir(tmp_path / "tok") if tokenizer == "tiny" else \
        getattr(assets, f"{tokenizer}_tokenizer")()
    source, hf_tokenizer = tiny_model(tmp_path / "src", arch, folder)
    path = write_gguf(tmp_path / "src", tmp_path / "gguf" / "model-f16.gguf", "f16")
    loaded, gguf_tokenizer = load_gguf(path)

    ids = hf_tokenizer(KOREAN)["input_ids"]
    assert gguf_tokenizer(KOREAN)["input_ids"] == ids  # the same ids for Korean text, BOS included where added
    assert gguf_tokenizer.decode(ids, skip_special_tokens=True) == KOREAN
    assert gguf_tokenizer.chat_template == hf_tokenizer.chat_template
    assert (gguf_tokenizer.eos_token_id, gguf_tokenizer.bos_token_id) == (hf_tokenizer.eos_token_id,
                                                                          hf_tokenizer.bos_token_id)
    ids = torch.tensor([ids])
    got, want = logits(loaded, ids), logits(source, ids)
    assert torch.allclose(got, logits(rounded_to_f16(source), ids), atol=1e-5, rtol=0)  # nothing but f16 rounding
    diff = (got - want).abs().max().item()
    print(f"{arch}: f16 GGUF vs float32 source: max |logit diff| {diff:.2e} (largest |logit| "
          f"{want.abs().max().item():.2f})")
    assert diff < 1e-2


@pytest.mark.slow
def test_q8_0_gguf_is_close_and_quantised(tmp_path):
    import gguf

    from train.export.gguf import write_gguf

    source, tokenizer = tiny_model(tmp_path / "src", "llama", tiny_tokenizer_dir(tmp_path / "tok"))
    path = write_gguf(tmp_path / "src", tmp_path / "gguf" / "model-q8_0.gguf", "q8_0")
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(path).tensors}
    assert types["blk.0.attn_q.weight"] == gguf.GGMLQuantizationType.Q8_0
    assert types["token_embd.weight"] == gguf.GGMLQuantizationType.Q8_0
    assert types["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32  # norms stay float32
    loaded, _ = load_gguf(path, with_tokenizer=False)
    ids = torch.tensor([tokenizer(KOREAN)["input_ids"]])
    got, want = logits(loaded, ids), logits(source, ids)
    diff = (got - want).abs().max().item()
    print(f"llama: q8_0 GGUF vs float32 source: max |logit diff| {diff:.2e} (largest |logit| "
          f"{want.abs().max().item():.2f})")
    assert diff < 0.02 * want.abs().max().item()


@pytest.mark.slow
def test_smollm2_real_weights_round_trip(tmp_path):
    """The demo model's real (bf16) weights: f16 holds them exactly (logits identical); q8_0 moves the logits by
    about 0.2 on average (largest logit about 36) and keeps the greedy next token at almost every position."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from train.export.gguf import write_gguf

    folder = assets.smollm2_135m_instruct()
    source = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = tokenizer(KOREAN + " The capital of France is Paris.")["input_ids"]
    want = logits(source, torch.tensor([ids]))
    for quant in ("f16", "q8_0"):
        path = write_gguf(folder, tmp_path / quant / f"smollm2-{quant}.gguf", quant)
        loaded, gguf_tokenizer = load_gguf(path)
        assert gguf_tokenizer(KOREAN)["input_ids"] == tokenizer(KOREAN)["input_ids"]
        got = logits(loaded, torch.tensor([ids]))
        diff = (got - want).abs().max().item()
        agree = (got.argmax(-1) == want.argmax(-1)).float().mean().item()
        print(f"SmolLM2-135M {quant}: max |logit diff| {diff:.3e}, mean {(got - want).abs().mean().item():.3e}, "
              f"largest |logit| {want.abs().max().item():.1f}, argmax agreement {agree:.3f}, "
              f"{path.stat().st_size / 2**20:.1f} MiB")
        if quant == "f16":  # these bf16 weights all fit f16 exactly
            assert diff < 1e-3 and agree == 1.0
        else:  # q8_0: 8-bit blocks of 32 with one f16 scale each
            assert agree >= 0.9 and (got - want).abs().mean().item() < 0.5


GEMMA_CONFIGS = {  # the real models' settings llama.cpp does not read from a GGUF (their config.json files)
    "gemma-2-2b": ("gemma2", dict(hidden_size=2304, num_attention_heads=8, head_dim=256, num_hidden_layers=26,
                                  query_pre_attn_scalar=256)),
    "gemma-2-27b": ("gemma2", dict(hidden_size=4608, num_attention_heads=32, head_dim=128, num_hidden_layers=46,
                                   query_pre_attn_scalar=144)),
    "gemma-3-1b": ("gemma3_text", dict(hidden_size=1152, num_attention_heads=4, head_dim=256, num_hidden_layers=26,
                                       query_pre_attn_scalar=256)),
    "gemma-3-27b": ("gemma3_text", dict(hidden_size=5376, num_attention_heads=32, head_dim=128, num_hidden_layers=62,
                                        query_pre_attn_scalar=168)),
}


def test_gemma_settings_llama_cpp_assumes_must_be_the_models(tmp_path):
    """llama.cpp takes Gemma-2/3's attention scale and sliding-window layers from the architecture (1/sqrt(head_dim),
    or hidden/heads at the 27B's layer count; every 2nd / 6th layer global). The real models pass; a model that differs
    is refused before any file is written, as its GGUF would compute other outputs in llama.cpp and Ollama."""
    from transformers import AutoConfig

    from train.export.gguf import ARCHITECTURES, ExportError, check_assumed_hyperparameters, write_gguf

    for name, (model_type, values) in GEMMA_CONFIGS.items():
        config = AutoConfig.for_model(model_type, **values).to_dict()  # layer_types as transformers derives them
        check_assumed_hyperparameters(config, ARCHITECTURES[model_type])  # no error
        if name == "gemma-3-27b":
            config["num_hidden_layers"] = 60  # not the 27B's count: llama.cpp would use head_dim (128), not 168
            config["layer_types"] = config["layer_types"][:60]
            with pytest.raises(ExportError, match=r"1/sqrt\(128\) \(head_dim.*query_pre_attn_scalar 168"):
                check_assumed_hyperparameters(config, ARCHITECTURES[model_type])
    config = AutoConfig.for_model("gemma3_text", **GEMMA_CONFIGS["gemma-3-1b"][1]).to_dict()
    config["layer_types"][2] = "full_attention"
    with pytest.raises(ExportError, match="every 6th layer"):
        check_assumed_hyperparameters(config, ARCHITECTURES["gemma3_text"])
    del config["layer_types"]  # an older config.json: the pattern instead of the list
    check_assumed_hyperparameters({**config, "sliding_window_pattern": 6}, ARCHITECTURES["gemma3_text"])
    with pytest.raises(ExportError, match="every 6th layer"):
        check_assumed_hyperparameters({**config, "sliding_window_pattern": 4}, ARCHITECTURES["gemma3_text"])

    from transformers import AutoModelForCausalLM, Gemma3TextConfig

    AutoModelForCausalLM.from_config(Gemma3TextConfig(vocab_size=300, hidden_size=64, intermediate_size=128,
                                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                                      head_dim=16)).save_pretrained(tmp_path / "src")
    assets.tiny_tokenizer().save_pretrained(tmp_path / "src")
    with pytest.raises(ExportError, match=r"1/sqrt\(16\) \(head_dim; GGUF has no key.*query_pre_attn_scalar 256"):
        write_gguf(tmp_path / "src", tmp_path / "out" / "m.gguf", "f16")
    assert not (tmp_path / "out").exists()

    from tests.tiny_model import write_tiny_recipe
    from train.config import load_config
    from train.export.gguf import export_run

    (tmp_path / "run").mkdir()
    cfg = load_config(write_tiny_recipe(tmp_path / "run", tmp_path / "src"))  # a LoRA run on that base
    with pytest.raises(ExportError, match="query_pre_attn_scalar 256"):
        export_run(cfg)  # before merging (which would first need the run's adapter)
    assert not (tmp_path / "run" / "out" / "merged").exists()


def test_gemma_1_gguf_holds_llama_cpp_names_and_values(tmp_path):
    """Gemma (1) has no GGUF loader in transformers: the file is read back with gguf's reader instead; every tensor
    has llama.cpp's gemma name and the source's values (norms + 1), the tied output layer is not written."""
    import gguf
    from transformers import AutoModelForCausalLM, AutoTokenizer, GemmaConfig

    from train.export.gguf import write_gguf

    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir(tmp_path / "tok"))  # the tensors are what is checked
    config = GemmaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=1, head_dim=16)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(tmp_path / "src")
    tokenizer.save_pretrained(tmp_path / "src")
    reader = gguf.GGUFReader(write_gguf(tmp_path / "src", tmp_path / "gemma-f32.gguf", "f32"))
    tensors = {t.name: np.array(t.data) for t in reader.tensors}
    assert reader.fields["general.architecture"].contents() == "gemma"
    assert "output.weight" not in tensors
    state = model.state_dict()
    assert np.array_equal(tensors["token_embd.weight"], state["model.embed_tokens.weight"].numpy())
    assert np.array_equal(tensors["blk.1.attn_norm.weight"], state["model.layers.1.input_layernorm.weight"].numpy() + 1)
    assert np.array_equal(tensors["blk.0.attn_k.weight"], state["model.layers.0.self_attn.k_proj.weight"].numpy())
    assert reader.fields["gemma.attention.key_length"].contents() == 16


# ----------------------------------------------------------------------------------------------------------------------
# Ollama
# ----------------------------------------------------------------------------------------------------------------------

RENDER_GO = r"""
package main

import (
	"encoding/json"
	"os"
	"text/template"
)

type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

func main() {
	var input struct {
		Template string    `json:"template"`
		Messages []Message `json:"messages"`
	}
	json.NewDecoder(os.Stdin).Decode(&input)
	t := template.Must(template.New("m").Parse(input.Template))
	if err := t.Execute(os.Stdout, map[string]any{"Messages": input.Messages}); err != nil {
		panic(err)
	}
}
"""
CONVERSATION = [{"role": "system", "content": "당신은 금융 뉴스 판별기입니다."},
                {"role": "user", "content": "삼성전자 주가가 올랐나요?"},
                {"role": "assistant", "content": '{"is_stock_related": true}'},
                {"role": "user", "content": "진통제 키워드를 추출하세요."}]


@pytest.fixture(scope="module")
def go():
    """Go's toolchain, which runs Ollama's template engine (text/template); installed on first use where possible."""
    from tests.debian import install

    why = install(["golang-go"], ["go"])
    if why:
        pytest.skip(f"renders Ollama's template language with Go's text/template: go {why}")


@pytest.mark.parametrize("template,tokenizer", [("chatml", None), ("qwen3", "qwen3"), ("llama3", "llama3"),
                                                ("gemma", "gemma"), ("exaone", None)])
def test_ollama_template_writes_what_the_training_template_writes(tmp_path, template, tokenizer, load_tokenizer, go):
    """Go's text/template (Ollama's template engine) renders the Modelfile's TEMPLATE; the training template
    (Jinja, through the tokenizer) renders the same conversation with the generation prompt: identical text, after
    the BOS llama.cpp adds itself."""
    from train.config import DataConfig
    from train.data.templates import render, setup_tokenizer
    from train.export.ollama import ollama_template

    tok = load_tokenizer(tokenizer) if tokenizer else assets.tiny_tokenizer()
    data = DataConfig(template=template, enable_thinking=False)
    setup_tokenizer(tok, data)
    messages = CONVERSATION
    want = render(tok, messages, data, add_generation_prompt=True)
    (tmp_path / "render.go").write_text(RENDER_GO)
    done = subprocess.run(["go", "run", str(tmp_path / "render.go")], input=json.dumps(
        {"template": ollama_template(template, enable_thinking=False), "messages": messages}), capture_output=True,
        text=True, timeout=300, env={**os.environ, "GOCACHE": str(tmp_path / "gocache"), "GOPATH": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    got = done.stdout
    if tok.bos_token and want.startswith(tok.bos_token) and tok("a")["input_ids"][0] == tok.bos_token_id:
        got = tok.bos_token + got  # llama.cpp adds the BOS (tokenizer.ggml.add_bos_token), as the tokenizer did
    assert got == want


def test_modelfile_names_the_file_template_stops_and_system_prompt(tmp_path):
    from train.export.ollama import modelfile, template_family

    text = modelfile("run-q8_0.gguf", "qwen3", ["<|im_end|>", "<|im_end|>", None], enable_thinking=False,
                     num_ctx=4096, system="당신은 금융,법률 및 M&A 분야 전문가입니다.", parameters={"temperature": 0.7})
    assert text.splitlines()[1] == "FROM ./run-q8_0.gguf"
    assert 'TEMPLATE """{{- range .Messages }}<|im_start|>{{ .Role }}' in text
    assert text.count('PARAMETER stop "<|im_end|>"') == 1  # each stop token once
    assert "<|im_start|>assistant\n<think>\n\n</think>\n\n\"\"\"" in text  # no-think training: the empty block
    assert 'SYSTEM """당신은 금융,법률 및 M&A 분야 전문가입니다."""' in text
    assert "PARAMETER num_ctx 4096" in text and "PARAMETER temperature 0.7" in text
    assert template_family("tokenizer", "{{ '<|start_header_id|>' }}") == "llama3"
    assert template_family("auto", "{% if enable_thinking %}<|im_start|>{% endif %}") == "qwen3"


@pytest.mark.slow
def test_export_command_writes_gguf_and_modelfile_for_a_trained_run(tmp_path):
    """python -m launch export --gguf on a finished LoRA run: merged first (no merged folder yet), then the GGUF and
    the Modelfile; the GGUF loads back to the merged model's logits."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from launch.assets import tiny_model_dir
    from tests.tiny_model import write_tiny_recipe

    recipe = write_tiny_recipe(tmp_path, tiny_model_dir(tmp_path / "llama"), max_steps=2)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    trained = subprocess.run([sys.executable, "train/sft.py", "--config", str(recipe)], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=600)
    assert trained.returncode == 0, trained.stderr[-3000:]
    done = subprocess.run([sys.executable, "-m", "launch", "export", "--config", str(recipe), "--gguf", "--quant",
                           "f32"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "out"
    path = out / "gguf" / "out-f32.gguf"
    assert "merging the adapter" in done.stdout and path.is_file() and (out / "merged" / "config.json").is_file()
    modelfile = (out / "gguf" / "Modelfile").read_text()
    assert "FROM ./out-f32.gguf" in modelfile and 'PARAMETER stop "<|im_end|>"' in modelfile
    merged = AutoModelForCausalLM.from_pretrained(out / "merged").eval()
    loaded, gguf_tokenizer = load_gguf(path)
    ids = torch.tensor([AutoTokenizer.from_pretrained(out / "merged")(KOREAN)["input_ids"]])
    assert gguf_tokenizer(KOREAN)["input_ids"] == ids[0].tolist()
    assert torch.allclose(logits(loaded, ids), logits(merged, ids), atol=1e-5)
    refused = subprocess.run([sys.executable, "-m", "launch", "export", "--config", str(recipe), "--gguf", "--quant",
                              "q4_k_m"], cwd=REPO, env={**env, "PATH": "/usr/bin:/bin"}, capture_output=True,
                             text=True, timeout=600)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    # the f16 file the message names is the one `--quant f16` writes
    f16 = out / "gguf" / "out-f16.gguf"
    assert f"--quant f16 writes {f16}), then run `llama-quantize {f16} {out / 'gguf' / 'out-q4_k_m.gguf'} Q4_K_M`" \
        in " ".join(refused.stderr.split()), refused.stderr
    assert "ollama create --quantize q4_K_M" in refused.stderr


LLAMA_QUANTIZE_STANDIN = """#!{python}
# llama.cpp's llama-quantize as the exporter calls it: <f16 input> <output> <TYPE>; checks its input is an f16 GGUF,
# records its arguments, then copies (or fails, with STANDIN_FAIL set) and prints the note on fallback types.
import json, os, shutil, sys
import gguf
source, target, kind = sys.argv[1:]
assert int(gguf.GGUFReader(source).fields["general.file_type"].contents()) == 1  # MOSTLY_F16
with open({log!r}, "a") as f:
    f.write(json.dumps(sys.argv[1:]) + chr(10))
if os.environ.get("STANDIN_FAIL"):
    sys.exit("llama_model_quantize: failed to quantize: stand-in failure")
shutil.copy(source, target)
print("llama_model_quantize_impl: WARNING: 3 of 9 tensor(s) required fallback quantization")
"""


def test_k_quants_go_through_llama_quantize_without_touching_the_users_files(tmp_path, monkeypatch, capsys):
    """With llama-quantize on PATH (a stand-in here: the real tool is C++), q4_k_m is an f16 file of its own name,
    quantised, then removed; a file named like the f16 export beside the output is not touched; llama-quantize's note on
    fallback types is passed on; a failure keeps the f16 file and names the command to retry."""
    from train.export.gguf import ExportError, write_gguf

    tiny_model(tmp_path / "src", "llama", tiny_tokenizer_dir(tmp_path / "tok"))
    tools, log = tmp_path / "bin", tmp_path / "calls.jsonl"
    tools.mkdir()
    (tools / "llama-quantize").write_text(LLAMA_QUANTIZE_STANDIN.format(python=sys.executable, log=str(log)))
    (tools / "llama-quantize").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tools}{os.pathsep}{os.environ['PATH']}")
    out = tmp_path / "gguf"
    out.mkdir()
    (out / "model-f16.gguf").write_bytes(b"the user's own f16 export")
    path = write_gguf(tmp_path / "src", out / "model-q4_k_m.gguf", "q4_k_m")
    assert path == out / "model-q4_k_m.gguf" and path.is_file()
    source, target, kind = json.loads(log.read_text())
    assert Path(target) == path and kind == "Q4_K_M" and Path(source).parent == out
    assert (out / "model-f16.gguf").read_bytes() == b"the user's own f16 export"
    assert sorted(p.name for p in out.iterdir()) == ["model-f16.gguf", "model-q4_k_m.gguf"]  # the f16 is gone
    assert "llama-quantize: llama_model_quantize_impl: WARNING: 3 of 9 tensor(s) required fallback" in \
        capsys.readouterr().out

    monkeypatch.setenv("STANDIN_FAIL", "1")
    with pytest.raises(ExportError, match="stand-in failure. The f16 file is kept: retry with") as failed:
        write_gguf(tmp_path / "src", out / "model-q6_k.gguf", "q6_k")
    retry = str(failed.value).split("retry with `")[1].rstrip("`").split()
    assert retry[0] == str(tools / "llama-quantize") and Path(retry[1]).is_file() and retry[2:] == [
        str(out / "model-q6_k.gguf"), "Q6_K"]


def test_exaone_gguf_is_the_llama_layout_under_llama_cpp_exaone_names(tmp_path):
    """EXAONE-3 ships its model code in its hub repository (not here), so its GGUF is not loaded back; its layers are
    Llama's under other names (transformer.h.N.attn.attention.q_proj ...) with transformers' rotary layout, which
    llama.cpp's exaone graph uses too (NEOX): the file must hold the same tensors as the source, unpermuted."""
    import gguf
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    from train.export.gguf import write_gguf

    source = assets.tiny_model_dir(tmp_path / "llama")
    state = AutoModelForCausalLM.from_pretrained(source).state_dict()
    names = {"model.embed_tokens": "transformer.wte", "model.norm": "transformer.ln_f", "model.layers": "transformer.h",
             "self_attn.o_proj": "attn.attention.out_proj", "self_attn": "attn.attention",
             "input_layernorm": "ln_1", "post_attention_layernorm": "ln_2", "mlp.gate_proj": "mlp.c_fc_0",
             "mlp.up_proj": "mlp.c_fc_1", "mlp.down_proj": "mlp.c_proj"}
    renamed = {}
    for key, value in state.items():
        for old, new in names.items():
            key = key.replace(old, new)
        renamed[key] = value.contiguous()
    folder = tmp_path / "exaone"
    folder.mkdir()
    save_file(renamed, str(folder / "model.safetensors"))
    llama = json.loads((source / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({
        "model_type": "exaone", "num_layers": 2, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
        "num_key_value_heads": 2, "layer_norm_epsilon": 1e-5, "max_position_embeddings": 2048, "rope_theta": 10000.0,
        "vocab_size": llama["vocab_size"], "tie_word_embeddings": False, "activation_function": "silu"}))
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (source / name).is_file():
            shutil.copy(source / name, folder / name)
    reader = gguf.GGUFReader(write_gguf(folder, tmp_path / "exaone-f32.gguf", "f32"))
    tensors = {t.name: np.array(t.data) for t in reader.tensors}
    assert reader.fields["general.architecture"].contents() == "exaone"
    assert reader.fields["exaone.rope.dimension_count"].contents() == 16
    assert np.array_equal(tensors["blk.1.attn_q.weight"], state["model.layers.1.self_attn.q_proj.weight"].numpy())
    assert np.array_equal(tensors["blk.0.ffn_gate.weight"], state["model.layers.0.mlp.gate_proj.weight"].numpy())
    assert np.array_equal(tensors["output.weight"], state["lm_head.weight"].numpy())
    assert len(tensors) == len(state)
