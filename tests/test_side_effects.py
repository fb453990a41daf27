"""Nothing a conversion or a command does is left behind in the caller's process: warning filters,
library log levels and handlers, the caller's tokenizer, the global random generators."""

from __future__ import annotations

import logging
import warnings

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast
from transformers.utils import logging as transformers_logging
from typer.testing import CliRunner

from adapter_convert.calibration import paired_batches


def test_cli_leaves_warning_filters_and_transformers_logging_as_they_were(monkeypatch):
    from adapter_convert.cli import app, quietly

    monkeypatch.delenv("ADAPTER_CONVERT_DEBUG", raising=False)
    seen = []
    # every command that loads the libraries runs quietly (entered in the command, so --help loads none)
    assert all(hasattr(c.callback, "__wrapped__") for c in app.registered_commands if c.callback.__name__ != "version")

    @app.command("warn-for-test")
    @quietly
    def warn_for_test() -> None:  # a command whose library warns: quiet while it runs
        warnings.warn("library noise", UserWarning)
        seen.append((transformers_logging.get_verbosity(), transformers_logging.is_progress_bar_enabled()))

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            filters = list(warnings.filters)
            verbosity, bars = transformers_logging.get_verbosity(), transformers_logging.is_progress_bar_enabled()
            result = CliRunner().invoke(app, ["warn-for-test"])
            assert result.exit_code == 0, result.output
            assert warnings.filters == filters
            assert (transformers_logging.get_verbosity(), transformers_logging.is_progress_bar_enabled()) == (verbosity, bars)
        assert not [w for w in caught if "library noise" in str(w.message)]  # quiet during the command
        assert seen == [(transformers_logging.ERROR, False)]
    finally:
        app.registered_commands = [c for c in app.registered_commands if c.name != "warn-for-test"]


def test_hub_calls_leave_huggingface_hubs_handlers_in_place(hub, tmp_path):
    from adapter_convert.errors import HubError
    from adapter_convert.hub import HubReference, download

    logger = logging.getLogger("huggingface_hub")
    ours = logging.NullHandler()
    logger.addHandler(ours)
    try:
        before = list(logger.handlers)
        try:
            download(HubReference("alice/missing", None), what="adapter", patterns=["*.json"], token=None)
        except HubError:  # not found, or private: either way one failed call
            pass
        assert logger.handlers == before
    finally:
        logger.removeHandler(ours)


def _tokenizer_without_pad() -> PreTrainedTokenizerFast:
    vocab = {"[UNK]": 0, "</s>": 1, **{word: i + 2 for i, word in enumerate("a b c d e f".split())}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", eos_token="</s>")


def test_calibration_pads_without_setting_the_callers_pad_token():
    tokenizer = _tokenizer_without_pad()
    assert tokenizer.pad_token is None
    batches = list(paired_batches(["a b c d", "e", "f a"], tokenizer, tokenizer, max_tokens=100))
    assert tokenizer.pad_token is None
    (batch,) = batches
    # padded with the eos id (1) to the longest row, pads masked out and never paired
    assert batch.teacher_inputs["input_ids"].tolist() == [[2, 3, 4, 5], [6, 1, 1, 1], [7, 2, 1, 1]]
    assert batch.teacher_inputs["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 0, 0]]
    assert batch.tokens == 7
    assert batch.teacher_index[1].tolist() == batch.student_index[1].tolist() == [0, 1, 2, 3, 0, 0, 1]


def test_calibration_pads_on_the_tokenizers_side():
    tokenizer = _tokenizer_without_pad()
    tokenizer.padding_side = "left"
    (batch,) = paired_batches(["a b", "c"], tokenizer, tokenizer, max_tokens=100)
    assert batch.teacher_inputs["input_ids"].tolist() == [[2, 3], [1, 4]]
    assert batch.teacher_index[1].tolist() == [0, 1, 1]


def test_distillation_leaves_the_global_generator_as_it_was():
    from adapter_convert.align.refine import distill

    teacher, student = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    torch.manual_seed(1234)
    state = torch.get_rng_state()
    distill(teacher, student, iter([]), task_type=None, has_head=False, head_map=torch.eye(2),
            steps=0, lr=1e-3, seed=0)
    assert torch.equal(torch.get_rng_state(), state)
