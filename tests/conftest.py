from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
from pathlib import Path

# huggingface_hub reads these when it is imported, so they are set before anything imports it:
# every Hub call of the test session goes to the local server below, never to the network.
_sock = socket.socket()
_sock.bind(("127.0.0.1", 0))
HUB_PORT = _sock.getsockname()[1]
_sock.close()
os.environ["HF_ENDPOINT"] = f"http://127.0.0.1:{HUB_PORT}"
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="adapter-convert-tests-hf-home-")
os.environ.pop("HF_TOKEN", None)
os.environ.pop("HF_HUB_OFFLINE", None)

import pytest  # noqa: E402
import torch  # noqa: E402
from peft import LoraConfig  # noqa: E402
from transformers import AutoModelForTokenClassification, AutoTokenizer  # noqa: E402

from adapter_convert.demo.minilm import minilm_dir  # noqa: E402

from helpers import bpe_tokenizer, save_adapter, save_tiny_model, tiny_config  # noqa: E402
from hub_server import HubServer, HubState  # noqa: E402


@pytest.fixture(autouse=True)
def _isolated_hub_cache(tmp_path_factory, monkeypatch):
    """Each test starts with an empty Hub cache; none reads the user's cache or token."""
    from huggingface_hub import constants

    cache = tmp_path_factory.mktemp("hub_cache")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))  # for CLI runs in subprocesses
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("COLUMNS", "200")


@pytest.fixture(scope="session")
def _hub_server():
    with HubServer(HUB_PORT) as server:
        yield server


@pytest.fixture
def hub(_hub_server) -> HubState:
    """The local Hub, emptied for this test. Users: alice (token tok-alice), bob (tok-bob)."""
    state = _hub_server.state
    with state.lock:
        state.repos.clear()
        state.faults.clear()
        state.requests.clear()
        state.served = []  # (path, bytes) of every file body served: range reads are counted here
        state.ranges = []  # (repo, path, start, end) of every file body served
        state.tokens.clear()
        state.tokens.update({"tok-alice": "alice", "tok-bob": "bob"})
    return state


@pytest.fixture(scope="session")
def _tiny_pair_template(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny_pair")
    teacher = save_tiny_model(root / "teacher", "bert", 4)
    save_tiny_model(root / "student", "distilbert", 2, seed=3, embeddings_from=teacher)  # a student of the teacher
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"], task_type="TOKEN_CLS")
    save_adapter(root / "adapter", teacher, config, root / "teacher")
    return root


@pytest.fixture
def tiny_pair(tmp_path, _tiny_pair_template) -> Path:
    """A fresh copy of: teacher/ (bert, 4 layers), student/ (distilbert, 2 layers, the teacher's token
    embeddings: measured compatible), adapter/ (LoRA q,v + head)."""
    root = tmp_path / "pair"
    shutil.copytree(_tiny_pair_template, root)
    # the adapter names its base by absolute path; point it at this copy
    config = root / "adapter" / "adapter_config.json"
    config.write_text(config.read_text().replace(str(_tiny_pair_template), str(root)))
    return root


@pytest.fixture
def on_hub(hub, tiny_pair):
    """alice/teacher, alice/student (base models) and alice/ner-lora (adapter naming alice/teacher)."""
    config_path = tiny_pair / "adapter" / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps(config | {"base_model_name_or_path": "alice/teacher"}))
    hub.upload_folder("alice/teacher", tiny_pair / "teacher")
    hub.upload_folder("alice/student", tiny_pair / "student")
    hub.upload_folder("alice/ner-lora", tiny_pair / "adapter")
    return tiny_pair


@pytest.fixture(scope="session")
def _unrelated_pair(tmp_path_factory) -> Path:
    """teacher/ (llama, MiniLM's WordPiece), student/ (qwen2, wider, another tokenizer: nothing shared),
    adapter/ (a token-classification LoRA on the teacher): a conversion that aligns, distils and measures."""
    root = tmp_path_factory.mktemp("unrelated")
    wordpiece = AutoTokenizer.from_pretrained(minilm_dir())
    torch.manual_seed(0)
    teacher = AutoModelForTokenClassification.from_config(tiny_config("llama", 2, vocab_size=len(wordpiece), pad_token_id=0))
    teacher.save_pretrained(root / "teacher")
    wordpiece.save_pretrained(root / "teacher")
    other = bpe_tokenizer()
    AutoModelForTokenClassification.from_config(tiny_config("qwen2", 2, vocab_size=len(other), hidden_size=48, num_attention_heads=6,
                                                            num_key_value_heads=3, head_dim=8, intermediate_size=96, pad_token_id=1)
                                                 ).save_pretrained(root / "student")
    other.save_pretrained(root / "student")
    save_adapter(root / "adapter", teacher, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="TOKEN_CLS"),
                 Path("alice/teacher"))
    return root


@pytest.fixture
def unrelated_on_hub(hub, _unrelated_pair) -> None:
    """alice/teacher, alice/student and alice/ner-lora (naming alice/teacher) on the local Hub."""
    for name in ("teacher", "student"):
        hub.upload_folder(f"alice/{name}", _unrelated_pair / name)
    hub.upload_folder("alice/ner-lora", _unrelated_pair / "adapter")
