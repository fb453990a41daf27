from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from peft import LoraConfig

from helpers import save_adapter, save_tiny_model


@pytest.fixture(autouse=True)
def _isolated_hub_home(tmp_path_factory, monkeypatch):
    """No test reads or writes the user's Hugging Face cache or token."""
    monkeypatch.setenv("HF_HOME", str(tmp_path_factory.mktemp("hf_home")))
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("COLUMNS", "200")


@pytest.fixture(scope="session")
def _tiny_pair_template(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny_pair")
    teacher = save_tiny_model(root / "teacher", "bert", 4)
    save_tiny_model(root / "student", "distilbert", 2, seed=3)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"], task_type="TOKEN_CLS")
    save_adapter(root / "adapter", teacher, config, root / "teacher")
    return root


@pytest.fixture
def tiny_pair(tmp_path, _tiny_pair_template) -> Path:
    """A fresh copy of: teacher/ (bert, 4 layers), student/ (distilbert, 2 layers), adapter/ (LoRA q,v + head)."""
    root = tmp_path / "pair"
    shutil.copytree(_tiny_pair_template, root)
    # the adapter names its base by absolute path; point it at this copy
    config = root / "adapter" / "adapter_config.json"
    config.write_text(config.read_text().replace(str(_tiny_pair_template), str(root)))
    return root
