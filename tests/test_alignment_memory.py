"""Alignment memory: the budget's prediction at 7B shapes, the factored least squares against the
dense formula, float32 statistics against float64, and a run split into several calibration passes
against the one-pass run."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from adapter_convert.align.budget import BUDGET_ENV, GiB, PointShape, parse_bytes, point_shapes, predict
from adapter_convert.align.capture import CapturePoint
from adapter_convert.align.lstsq import Regression, r_squared
from adapter_convert.align.stats import PairStats
from adapter_convert.architectures import Dims
from adapter_convert.cli import app
from test_alignment import decoders  # noqa: F401  (the tiny llama -> qwen2 pair, a fixture)

LLAMA_2_7B = Dims(layers=32, hidden=4096, heads=32, kv_heads=32, head_dim=128, intermediate=11008, vocab=32000)
MISTRAL_7B = Dims(layers=32, hidden=4096, heads=32, kv_heads=8, head_dim=128, intermediate=14336, vocab=32000)
SEVEN = ["attn.q", "attn.k", "attn.v", "attn.o", "mlp.gate", "mlp.up", "mlp.down"]
LAYERS = [(i, i) for i in range(32)]


def test_7b_pair_with_all_seven_projections_fits_4_gib():
    for roles in (SEVEN, ["attn.q", "attn.v"]):
        for method in ("lstsq", "correlation"):
            r = predict(LLAMA_2_7B, MISTRAL_7B, roles, LAYERS, method=method, rank=16, model_element=(2, 2), tied=(False, False))
            assert r.alignment_bytes <= 4 * GiB and r.within_budget, (roles, method, r)
            assert r.statistics_dtype == "float32" and r.passes > 1
            assert r.peak_bytes - r.alignment_bytes > 2 * 6.5e9 * 2  # two 7B models in bfloat16 on top
    # what the old layout (every point, both Grams whole, float64, at once) costs: the figures
    old = lambda roles: sum(8 * (p.d_s**2 + p.d_t**2 + p.d_s * p.d_t) for p in point_shapes(roles, LAYERS, LLAMA_2_7B, MISTRAL_7B)) / GiB  # noqa: E731
    assert old(SEVEN) == pytest.approx(429.4, abs=0.1) and old(["attn.q", "attn.v"]) == pytest.approx(29.6, abs=0.1)


def test_small_pairs_stay_one_float64_pass():
    tiny_t = Dims(layers=4, hidden=64, heads=4, kv_heads=4, head_dim=16, intermediate=128, vocab=1000)
    tiny_s = Dims(layers=2, hidden=48, heads=6, kv_heads=3, head_dim=8, intermediate=96, vocab=400)
    r = predict(tiny_t, tiny_s, SEVEN, [(0, 0), (1, 2)], method="lstsq", rank=4)
    assert r.passes == 1 and r.statistics_dtype == "float64"
    assert parse_bytes("4GiB") == 4 * GiB and parse_bytes("512MiB") == 512 * 2**20 and parse_bytes("1000") == 1000


def allocated_bytes(stats: PairStats) -> int:
    """Bytes of every tensor a PairStats holds, each storage counted once (whatever fields it has)."""
    storages = {}
    for value in vars(stats).values():
        for x in value.values() if isinstance(value, dict) else [value]:
            if isinstance(x, torch.Tensor):
                storages[x.untyped_storage().data_ptr()] = x.untyped_storage().nbytes()
    return sum(storages.values())


# (kind, method) -> bytes for d_s = 5, d_t = 7 at float64 / float32, from the formula in align/budget.py:
# e (d_full^2 + d_s d_t) + 8 * 3 (d_s + d_t), d_full the student's for inputs and the head, the teacher's
# for lstsq outputs, none for correlation outputs; 8 * 3 * 12 = 288 bytes of float64 vectors
KNOWN_BYTES = {("in", "lstsq"): (8 * 60 + 288, 4 * 60 + 288), ("head", "correlation"): (8 * 60 + 288, 4 * 60 + 288),
               ("out", "lstsq"): (8 * 84 + 288, 4 * 84 + 288), ("out", "correlation"): (8 * 35 + 288, 4 * 35 + 288)}


@pytest.mark.parametrize("kind,method", list(KNOWN_BYTES))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_statistics_allocate_what_the_budget_predicts_and_do_not_grow(kind, method, dtype):
    element = 8 if dtype == torch.float64 else 4
    g = torch.Generator().manual_seed(0)
    for d_s, d_t in ((5, 7), (10, 7), (5, 14), (40, 56)):
        shape = PointShape(CapturePoint("point", 0, 0), kind, d_s, d_t)
        stats = PairStats(d_s, d_t, dtype=dtype, full=shape.full(method))
        predicted = shape.stats_bytes(method, element)
        if (d_s, d_t) == (5, 7):
            assert predicted == KNOWN_BYTES[(kind, method)][element == 4]
        assert allocated_bytes(stats) == predicted
        for _ in range(10):  # 640 rows later, the same memory
            stats.update(torch.randn(64, d_s, generator=g), torch.randn(64, d_t, generator=g))
        assert allocated_bytes(stats) == stats.nbytes() == predicted


def activations(n=3000, d_s=40, d_t=56, seed=0, offset=0.0):
    """Correlated student/teacher rows; ``offset`` adds large means (the outlier dimensions of LLMs)."""
    g = torch.Generator().manual_seed(seed)
    latent = torch.randn(n, 24, generator=g)
    s = latent @ torch.randn(24, d_s, generator=g) + 0.3 * torch.randn(n, d_s, generator=g)
    t = latent @ torch.randn(24, d_t, generator=g) + 0.3 * torch.randn(n, d_t, generator=g)
    s[:, :3] += offset * torch.arange(1, 4)
    t[:, :2] += offset
    return s, t


def streamed(s, t, dtype=torch.float64, full=("s", "t")):
    stats = PairStats(s.shape[1], t.shape[1], dtype=dtype, full=full)
    for a, b in zip(s.split(256), t.split(256)):
        stats.update(a, b)
    return stats


def test_factored_least_squares_equals_the_dense_formula():
    s, t = activations(offset=50.0)
    stats = streamed(s, t)
    S, T = s.double(), t.double()
    torch.testing.assert_close(stats.st, S.T @ T)
    torch.testing.assert_close(stats.ss, S.T @ S)
    solved = Regression(stats, x="s", ridge=0.1, prior=_prior(stats))
    # the closed form, from the raw data: M = (S_ts + P W) (S_ss + W)^-1
    P = torch.zeros(t.shape[1], s.shape[1], dtype=torch.float64)
    student, teacher = _prior(stats)
    P[teacher, student] = 1
    w = 0.1 * (S * S).sum(0)
    expected = torch.linalg.solve(S.T @ S + torch.diag(w), S.T @ T + w[:, None] * P.T).T
    torch.testing.assert_close(solved.matrix(), expected, rtol=1e-7, atol=1e-9)
    assert solved.r_squared() == pytest.approx(r_squared(stats, expected), abs=1e-9)
    A, B = torch.randn(4, t.shape[1], dtype=torch.float64), torch.randn(s.shape[1], 4, dtype=torch.float64)
    torch.testing.assert_close(solved.left(A), A @ expected)
    torch.testing.assert_close(solved.right(B), expected @ B)  # M B, without forming M
    # teacher -> student: a Regression with x = teacher on the same statistics
    back = Regression(stats, x="t", ridge=0.1, prior=(teacher, student))
    w_t = 0.1 * (T * T).sum(0)
    expected_back = torch.linalg.solve(T.T @ T + torch.diag(w_t), T.T @ S + w_t[:, None] * P).T  # (d_s, d_t)
    torch.testing.assert_close(back.matrix(), expected_back, rtol=1e-7, atol=1e-9)
    B_t = torch.randn(t.shape[1], 4, dtype=torch.float64)
    torch.testing.assert_close(back.right(B_t), expected_back @ B_t)


def _prior(stats):
    from adapter_convert.align.correlation import assign

    student, teacher, _ = assign(stats)
    return student, teacher


def test_float32_statistics_agree_with_float64_despite_large_means():
    s, t = activations(n=6000, offset=300.0, seed=1)
    exact, single = streamed(s, t), streamed(s, t, torch.float32, full=("s",))
    assert single.nbytes() < 0.6 * exact.nbytes()
    corr_error = (single.correlation() - exact.correlation()).abs().max()
    assert corr_error < 1e-5, corr_error
    m64 = Regression(exact, x="s", ridge=1e-2, prior=_prior(exact)).matrix()
    m32 = Regression(single, x="s", ridge=1e-2, prior=_prior(single)).matrix()
    assert (m32 - m64).norm() / m64.norm() < 1e-4
    # without the shift, float32 cross-products lose the covariance of the offset dimensions
    naive = (s.T @ t / len(s) - torch.outer(s.mean(0), t.mean(0))).double()
    exact_cov = exact.st / len(s) - torch.outer(exact.sum_s, exact.sum_t) / len(s) ** 2
    assert (naive - exact_cov).abs().max() > 100 * (single.st / len(s) - torch.outer(single.sum_s, single.sum_t) / len(s) ** 2 - exact_cov).abs().max()


def test_a_run_split_into_passes_matches_the_one_pass_run(decoders, tmp_path, monkeypatch):  # noqa: F811
    folder = decoders / "CAUSAL_LM"

    def convert(out, *options):
        result = CliRunner().invoke(app, ["convert", str(folder / "adapter"), "--target", str(folder / "student"), "--out", str(out),
                                          "--json", "--align", "lstsq", "--calibration-tokens", "256", *options])
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    one = convert(tmp_path / "one")
    assert one["alignment"]["memory"]["passes"] == 1 and one["alignment"]["memory"]["statistics_dtype"] == "float64"
    monkeypatch.setenv(BUDGET_ENV, "5MiB")
    dry = convert(tmp_path / "dry", "--dry-run")["resources"]
    split = convert(tmp_path / "split")
    memory = split["alignment"]["memory"]
    assert memory["passes"] == dry["passes"] >= 3 and memory["statistics_dtype"] == dry["statistics_dtype"] == "float32"
    assert memory["predicted_alignment_bytes"] == dry["alignment_bytes"]
    a, b = load_file(tmp_path / "one" / "adapter_model.safetensors"), load_file(tmp_path / "split" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-3, atol=1e-4 * a[key].abs().max().item())
    rows = zip(one["alignment"]["modules"], split["alignment"]["modules"])
    assert all(abs(x["input_fit"] - y["input_fit"]) < 1e-3 for x, y in rows)


def test_dry_run_prints_resources_only_when_it_aligns(decoders, tmp_path):  # noqa: F811
    folder = decoders / "CAUSAL_LM"
    result = CliRunner().invoke(app, ["convert", str(folder / "adapter"), "--target", str(folder / "student"), "--out", str(tmp_path / "o"),
                                      "--json", "--dry-run", "--align", "lstsq"])
    assert result.exit_code == 0, result.output
    resources = json.loads(result.stdout)["resources"]
    assert resources["passes"] == 1 and 0 < resources["alignment_bytes"] < resources["peak_bytes"]
    same = CliRunner().invoke(app, ["convert", str(folder / "adapter"), "--target", str(folder / "teacher"), "--out", str(tmp_path / "p"),
                                    "--json", "--dry-run", "--align", "none"])
    assert same.exit_code == 0, same.output
    assert json.loads(same.stdout)["resources"] is None
    fresh = CliRunner().invoke(app, ["convert", str(folder / "adapter"), "--target", str(folder / "student"), "--out", str(tmp_path / "q"),
                                     "--json", "--dry-run"])  # auto on a causal LM: a fresh start, no calibration pass
    assert fresh.exit_code == 0 and json.loads(fresh.stdout)["resources"] is None


def test_a_pass_without_the_last_hidden_state_stops_after_its_last_layer():
    """Layers above a pass's last wanted layer are not run, and the statistics are those of a full forward."""
    from transformers import AutoModel
    from transformers import PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models, pre_tokenizers

    from adapter_convert.align.capture import LAST_HIDDEN, CapturePoint, collect_statistics
    from adapter_convert.architectures import get_architecture
    from adapter_convert.calibration import paired_batches
    from helpers import tiny_config

    torch.manual_seed(0)
    model = AutoModel.from_config(tiny_config("llama", 4)).eval()
    arch = get_architecture("llama", model.config)
    backend = Tokenizer(models.WordLevel({"[UNK]": 0, "</s>": 1, **{w: i + 2 for i, w in enumerate("a b c d e f".split())}}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", eos_token="</s>")
    batches = list(paired_batches(["a b c d", "e f a", "b b c"], tokenizer, tokenizer, max_tokens=100))
    runs = {layer: 0 for layer in range(4)}
    for layer in runs:
        model.layers[layer].register_forward_hook(lambda *_, layer=layer: runs.__setitem__(layer, runs[layer] + 1))
    wanted = [CapturePoint("attn:hidden:in", 1, 1), CapturePoint("mlp.down:out", 1, 1)]
    early = collect_statistics(model, model, arch, arch, wanted, batches)
    assert runs == {0: 2, 1: 2, 2: 0, 3: 0}  # teacher and student once each, nothing above layer 1
    full = collect_statistics(model, model, arch, arch, wanted + [CapturePoint(LAST_HIDDEN, None, None)], batches)
    assert runs == {0: 4, 1: 4, 2: 2, 3: 2}
    for key, stats in early.items():
        torch.testing.assert_close(stats.cross_c, full[key].cross_c, rtol=0, atol=0)
        assert stats.n == full[key].n > 0
