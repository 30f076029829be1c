"""An Ollama Modelfile for an exported GGUF: FROM the file, the chat template in Ollama's syntax (Go's text/template
over `.Messages`), the stop tokens, the context length trained with, and the recipe's fixed system prompt.

Ollama does not run the Jinja chat template embedded in the GGUF; its TEMPLATE must write the same text the model was
trained on. Each of the project's templates (train/data/templates.py) has its Ollama twin below, written for the
conversations training renders (system, user and assistant turns, no tools). A tokenizer's own template is matched to
the twin whose control tokens it uses. The beginning-of-sequence token is not in a TEMPLATE: llama.cpp adds it itself
when the GGUF says so (tokenizer.ggml.add_bos_token), as the tokenizer did in training.

    ollama create my-model -f outputs/run/gguf/Modelfile && ollama run my-model
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional

from train.errors import UserError

CHATML = (
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"
)
OLLAMA_TEMPLATES: Dict[str, str] = {
    "chatml": CHATML,
    "qwen3": CHATML,  # + the empty think block of no-think training (qwen3_template)
    "llama3": ("{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>"
               "{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n"),
    # Gemma has no system turn: the system prompt opens the first user turn; the assistant's role is "model"
    "gemma": ('{{- $system := "" }}{{- range .Messages }}{{- if eq .Role "system" }}{{ $system = .Content }}'
              '{{ else if eq .Role "user" }}<start_of_turn>user\n{{ if $system }}{{ $system }}\n\n'
              '{{ $system = "" }}{{ end }}{{ .Content }}<end_of_turn>\n'
              '{{ else }}<start_of_turn>model\n{{ .Content }}<end_of_turn>\n{{ end }}{{ end }}<start_of_turn>model\n'),
    # EXAONE: an empty system turn when there is none; user turns end with a newline, the others with [|endofturn|]
    "exaone": ('{{- if or (not .Messages) (ne (index .Messages 0).Role "system") }}[|system|][|endofturn|]\n{{ end }}'
               '{{- range .Messages }}[|{{ .Role }}|]{{ .Content }}{{ if eq .Role "user" }}\n'
               '{{ else }}[|endofturn|]\n{{ end }}{{ end }}[|assistant|]'),
}
QWEN3_NO_THINK = "<think>\n\n</think>\n\n"
MARKERS = (("[|endofturn|]", "exaone"), ("<|start_header_id|>", "llama3"), ("<start_of_turn>", "gemma"),
           ("<|im_start|>", "chatml"))


def template_family(name: str, chat_template: Optional[str]) -> str:
    """The Ollama twin of a training template: a built-in name as it is; a tokenizer's own template (data.template
    auto or tokenizer) by the control tokens it writes (a Qwen3 template by its thinking switch)."""
    if name in OLLAMA_TEMPLATES:
        return name
    text = chat_template or ""
    for marker, family in MARKERS:
        if marker in text:
            return "qwen3" if family == "chatml" and "enable_thinking" in text else family
    raise UserError(f"no Ollama template matches this chat template (none of {', '.join(m for m, _ in MARKERS)} "
                    f"in it): set data.template to one of {', '.join(OLLAMA_TEMPLATES)}, or write the Modelfile's "
                    f"TEMPLATE by hand (https://github.com/ollama/ollama/blob/main/docs/template.md)")


def ollama_template(family: str, enable_thinking: bool = False) -> str:
    template = OLLAMA_TEMPLATES[family]
    return template + QWEN3_NO_THINK if family == "qwen3" and not enable_thinking else template


def _quoted(text: str) -> str:
    if '"""' in text:
        raise UserError('a Modelfile value cannot contain """ (Ollama\'s quote): change the system prompt')
    return f'"""{text}"""'


def modelfile(gguf_name: str, family: str, stops: List[str], enable_thinking: bool = False,
              num_ctx: Optional[int] = None, system: Optional[str] = None,
              parameters: Optional[Dict[str, float]] = None) -> str:
    """The Modelfile's text. `stops`: the end-of-turn and end-of-sequence tokens generation must stop at."""
    lines = ["# Ollama: ollama create <name> -f Modelfile && ollama run <name>", f"FROM ./{gguf_name}",
             f"TEMPLATE {_quoted(ollama_template(family, enable_thinking))}"]
    if system:
        lines.append(f"SYSTEM {_quoted(system)}")
    for stop in dict.fromkeys(s for s in stops if s):
        lines.append(f'PARAMETER stop "{stop}"')
    if num_ctx:
        lines.append(f"PARAMETER num_ctx {num_ctx}")
    for key, value in (parameters or {}).items():
        lines.append(f"PARAMETER {key} {value}")
    return "\n".join(lines) + "\n"


def write_modelfile(out_dir: Path, gguf_path: Path, cfg, tokenizer, template_name: str,
                    end_of_turn: Optional[str], generation: Optional[dict] = None) -> Path:
    """out_dir/Modelfile for gguf_path, from the recipe (template, thinking mode, max_length, a fixed system prompt)
    and the trained tokenizer (its chat template, end-of-turn and eos tokens)."""
    family = template_family(template_name, tokenizer.chat_template)
    systems = {s.system_prompt for s in cfg.data.sources if s.system_prompt}
    parameters = {k: generation[k] for k in ("temperature", "top_p", "top_k", "repetition_penalty")
                  if generation and generation.get(k) is not None and generation.get("do_sample", True)}
    if "repetition_penalty" in parameters:
        parameters["repeat_penalty"] = parameters.pop("repetition_penalty")
    text = modelfile(Path(gguf_path).name, family, [end_of_turn, tokenizer.eos_token],
                     enable_thinking=cfg.data.enable_thinking, num_ctx=cfg.data.max_length,
                     system=systems.pop() if len(systems) == 1 else None, parameters=parameters)
    path = Path(out_dir) / "Modelfile"
    path.write_text(text, encoding="utf-8")
    return path
