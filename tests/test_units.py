"""Known answers for the pure functions a conversion is built from, on hand-made inputs: a few
small tensors, dicts and configs whose right output is worked out by hand and written here."""

from __future__ import annotations

import dataclasses
import json

import httpx2
import pytest
import torch
from huggingface_hub import constants
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
from huggingface_hub.utils import hf_raise_for_status

from adapter_convert.architectures import Architecture, Dims
from adapter_convert.card import build_model_card
from adapter_convert.errors import (
    BadAdapterError,
    CompatibilityUnknownError,
    HubAuthError,
    HubError,
    HubFileMissingError,
    HubGatedError,
    HubRepoNotFoundError,
    HubRevisionNotFoundError,
    HubUnreachableError,
    UnsupportedError,
    UsageError,
    WidthMismatchError,
)
from adapter_convert.hub import HubReference, hub_error
from adapter_convert.peft_config import target_module_names
from adapter_convert.plan import AUTO_REFINE_BELOW, ModuleMapping, parse_adapter, plan_alignment
from adapter_convert.plan import map_roles as map_roles_
from adapter_convert.summary import (AdapterSummary, Agreement, AlignedModule, AlignmentMemory, AlignmentSummary, ArchitectureSummary,
                                     BaseModelSummary, CalibrationSummary, CompatibilityEvidence, CompatibilitySummary, ConversionSummary,
                                     Distillation, GenerationFidelity, ModuleRow, OutputSummary, PushSummary)
from adapter_convert.transform import ConvertedModule, Ia3Module, LoraModule, average, fuse_parts, fused_rows, relayout


def t(*rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def as_lists(rows: list[torch.Tensor]) -> list[list[int]]:
    return [r.tolist() for r in rows]


# ---- fused_rows ---------------------------------------------------------------------------------


def test_fused_rows_concat_puts_parts_one_after_another():
    assert as_lists(fused_rows("concat", [2, 1, 1], heads=2)) == [[0, 1], [2], [3]]


def test_fused_rows_per_head_interleaves_one_head_slice_of_each_part():
    # 2 heads of head_dim 2: rows are [head 0: q q k k v v | head 1: q q k k v v]
    assert as_lists(fused_rows("per_head", [4, 4, 4], heads=2)) == [[0, 1, 6, 7], [2, 3, 8, 9], [4, 5, 10, 11]]
    # head_dim 1: [q k v | q k v]
    assert as_lists(fused_rows("per_head", [2, 2, 2], heads=2)) == [[0, 3], [1, 4], [2, 5]]


def test_fused_rows_refuses_unequal_per_head_parts_and_unknown_layouts():
    with pytest.raises(UnsupportedError, match=r"equal part sizes, got \[4, 2, 2\]"):
        fused_rows("per_head", [4, 2, 2], heads=2)
    with pytest.raises(UnsupportedError, match="Unknown fused layout 'rows'"):
        fused_rows("rows", [2, 2], heads=1)


# ---- fuse_parts ---------------------------------------------------------------------------------

Q = LoraModule(t([1, 0, 0]), t([1], [2]), scaling=2.0)  # rank 1, 3 -> 2
V = LoraModule(t([0, 1, 0]), t([3], [4]), scaling=1.0)


def test_fuse_parts_stacks_a_and_places_b_with_the_scaling_folded_in():
    rows = fused_rows("concat", [2, 2, 2], heads=2)  # q 0-1, k 2-3, v 4-5
    fused = fuse_parts([Q, None, V], rows, 6)
    assert fused.scaling == 2.0  # the first present part's
    assert fused.A.tolist() == [[1, 0, 0], [0, 1, 0]]
    # v's block is scaled by s_v / s' = 1 / 2; k (absent) is a zero block
    assert fused.B.tolist() == [[1, 0], [2, 0], [0, 0], [0, 0], [0, 1.5], [0, 2]]
    assert fused.magnitude is None
    # the delta of each part is kept: s' B' A' rows = s_q B_q A_q, 0, s_v B_v A_v
    expected = torch.cat([Q.delta_weight(), torch.zeros(2, 3, dtype=torch.float64), V.delta_weight()])
    assert torch.equal(fused.delta_weight(), expected)


def test_parts_sharing_one_a_fuse_back_at_their_rank():
    """A split module's parts (one A, one scaling) fuse into one module of the same rank, each
    part's B in its rows: the delta of every part, exactly, at no added inference cost."""
    rows = fused_rows("concat", [2, 2, 2], heads=2)
    shared = t([1, 0, 1])
    parts = [LoraModule(shared, t([1], [2]), 2.0), None, LoraModule(shared.clone(), t([3], [4]), 2.0)]
    fused = fuse_parts(parts, rows, 6)
    assert fused.rank == 1 and fused.B.tolist() == [[1], [2], [0], [0], [3], [4]]
    expected = torch.cat([parts[0].delta_weight(), torch.zeros(2, 3, dtype=torch.float64), parts[2].delta_weight()])
    assert torch.equal(fused.delta_weight(), expected)


def test_fuse_parts_follows_a_per_head_layout():
    rows = fused_rows("per_head", [2, 2, 2], heads=2)  # q 0,3; k 1,4; v 2,5
    fused = fuse_parts([Q, None, V], rows, 6)
    assert fused.B.tolist() == [[1, 0], [0, 0], [0, 1.5], [2, 0], [0, 0], [0, 2]]


def test_fuse_parts_places_dora_magnitudes_and_needs_every_part():
    rows = fused_rows("per_head", [2, 2, 2], heads=2)
    parts = [LoraModule(t([1, 0]), t([1], [1]), 1.0, magnitude=torch.tensor(m)) for m in ([1.0, 2.0], [3.0, 4.0], [5.0, 6.0])]
    assert fuse_parts(parts, rows, 6).magnitude.tolist() == [1, 3, 5, 2, 4, 6]
    with pytest.raises(UnsupportedError, match="needs every part adapted"):
        fuse_parts([parts[0], None, parts[2]], rows, 6)


def test_fuse_parts_ia3_output_vectors_fill_absent_parts_with_one():
    rows = fused_rows("concat", [2, 2, 2], heads=2)
    fused = fuse_parts([Ia3Module(t([2], [3])), None, Ia3Module(t([4], [5]))], rows, 6)
    assert fused.vector.tolist() == [[2], [3], [1], [1], [4], [5]]


def test_fuse_parts_ia3_input_vectors_must_be_present_and_equal():
    rows = fused_rows("concat", [2, 2], heads=1)
    same = fuse_parts([Ia3Module(t([1, 2, 3])), Ia3Module(t([1, 2, 3]))], rows, 4)
    assert same.vector.tolist() == [[1, 2, 3]]
    with pytest.raises(UnsupportedError, match="every part present and equal"):
        fuse_parts([Ia3Module(t([1, 2, 3])), Ia3Module(t([1, 2, 4]))], rows, 4)
    with pytest.raises(UnsupportedError, match="every part present and equal"):
        fuse_parts([Ia3Module(t([1, 2, 3])), None], rows, 4)


# ---- relayout -----------------------------------------------------------------------------------


def test_relayout_moves_per_head_rows_to_concat_order():
    per_head = fused_rows("per_head", [2, 2, 2], heads=2)  # q 0,3; k 1,4; v 2,5
    concat = fused_rows("concat", [2, 2, 2], heads=2)  # q 0,1; k 2,3; v 4,5
    module = LoraModule(t([1, 1]), torch.arange(6.0)[:, None], 0.5, magnitude=torch.arange(6.0) + 10)
    moved = relayout(module, per_head, concat)
    assert moved.B.flatten().tolist() == [0, 3, 1, 4, 2, 5]
    assert moved.magnitude.tolist() == [10, 13, 11, 14, 12, 15]
    assert moved.A.tolist() == [[1, 1]] and moved.scaling == 0.5
    # and back again
    assert relayout(moved, concat, per_head).B.flatten().tolist() == [0, 1, 2, 3, 4, 5]
    ia3 = relayout(Ia3Module(torch.arange(6.0)[:, None]), per_head, concat)
    assert ia3.vector.flatten().tolist() == [0, 3, 1, 4, 2, 5]


# ---- average ------------------------------------------------------------------------------------


def test_average_takes_the_parameter_mean_with_scalings_folded_into_b():
    first = LoraModule(t([1, 2]), t([1], [0]), 1.0, magnitude=torch.tensor([1.0, 3.0]))
    second = LoraModule(t([3, 4]), t([0], [1]), 2.0, magnitude=torch.tensor([3.0, 5.0]))
    mean = average([first, second])
    assert mean.A.tolist() == [[2, 3]]
    assert mean.B.tolist() == [[0.5], [1.0]]  # (B_1 * 1/1 + B_2 * 2/1) / 2
    assert mean.scaling == 1.0
    assert mean.magnitude.tolist() == [2, 4]


def test_average_of_one_module_is_that_module_and_ia3_vectors_average():
    only = LoraModule(t([1, 2]), t([1]), 3.0)
    assert average([only]) is only
    assert average([Ia3Module(t([1], [3])), Ia3Module(t([3], [5]))]).vector.tolist() == [[2], [4]]


def test_average_refuses_unequal_ranks():
    with pytest.raises(UnsupportedError, match=r"equal ranks in the averaged layers, got \[1, 2\]"):
        average([LoraModule(t([1, 2]), t([1]), 1.0), LoraModule(t([1, 2], [3, 4]), t([1, 1]), 1.0)])


# ---- map_roles ----------------------------------------------------------------------------------


def arch(model_type: str, modules: dict[str, str], **fields) -> Architecture:
    return Architecture(model_type=model_type, backbone="model", layers="layers", modules=modules, **fields)


SEPARATE = arch("sep", {"attn.q": "q", "attn.k": "k", "attn.v": "v", "attn.o": "o", "mlp.gate": "gate", "mlp.up": "up", "mlp.down": "down"})
CONCAT = arch("cat", {"attn.qkv": "qkv", "attn.o": "o", "mlp.gate_up": "gate_up", "mlp.down": "down"},
              fused_layout={"attn.qkv": "concat", "mlp.gate_up": "concat"})
PER_HEAD = arch("head", {"attn.qkv": "qkv", "attn.o": "o", "mlp.up": "up", "mlp.down": "down"}, fused_layout={"attn.qkv": "per_head"})
UNKNOWN = arch("unk", {"attn.qkv": "qkv", "attn.o": "o"}, fused_layout={"attn.qkv": "unknown (unk)"})


def map_roles(roles, source, target) -> list[tuple[str, str, tuple[str, ...]]]:
    return [(m.target_role, m.operation, m.source_roles) for m in map_roles_(roles, source, target)]


def test_map_roles_copies_between_like_architectures_in_target_order():
    assert map_roles(["mlp.down", "attn.v", "attn.q"], SEPARATE, SEPARATE) == [
        ("attn.q", "copy", ("attn.q",)), ("attn.v", "copy", ("attn.v",)), ("mlp.down", "copy", ("mlp.down",))]
    assert map_roles(["attn.qkv"], CONCAT, CONCAT) == [("attn.qkv", "copy", ("attn.qkv",))]
    # an unknown layout copies onto its own kind
    assert map_roles(["attn.qkv"], UNKNOWN, UNKNOWN) == [("attn.qkv", "copy", ("attn.qkv",))]


def test_map_roles_fuses_separate_projections():
    assert map_roles(["attn.q", "attn.v", "mlp.gate", "mlp.up"], SEPARATE, CONCAT) == [
        ("attn.qkv", "fuse", ("attn.q", "attn.v")), ("mlp.gate_up", "fuse", ("mlp.gate", "mlp.up"))]
    assert map_roles_(["attn.q"], SEPARATE, CONCAT) == (ModuleMapping("attn.qkv", "fuse", ("attn.q",)),)


def test_map_roles_splits_a_fused_projection():
    assert map_roles(["attn.qkv", "attn.o"], PER_HEAD, SEPARATE) == [
        ("attn.q", "split", ("attn.qkv",)), ("attn.k", "split", ("attn.qkv",)), ("attn.v", "split", ("attn.qkv",)),
        ("attn.o", "copy", ("attn.o",))]
    assert map_roles(["mlp.gate_up"], CONCAT, SEPARATE) == [("mlp.gate", "split", ("mlp.gate_up",)), ("mlp.up", "split", ("mlp.gate_up",))]


def test_map_roles_relayouts_a_fused_projection_of_another_row_order():
    assert map_roles(["attn.qkv"], PER_HEAD, CONCAT) == [("attn.qkv", "relayout", ("attn.qkv",))]
    assert map_roles(["attn.qkv"], CONCAT, PER_HEAD) == [("attn.qkv", "relayout", ("attn.qkv",))]


def test_map_roles_refuses_a_role_the_target_lacks():
    with pytest.raises(UnsupportedError, match="adapts mlp.gate of sep, which head has no module for"):
        map_roles(["attn.q", "mlp.gate"], SEPARATE, PER_HEAD)


def test_map_roles_refuses_fusing_or_splitting_an_unknown_row_order():
    with pytest.raises(UnsupportedError, match="cannot be fused from sep"):
        map_roles(["attn.q"], SEPARATE, UNKNOWN)
    with pytest.raises(UnsupportedError, match="cannot be split for sep"):
        map_roles(["attn.qkv"], UNKNOWN, SEPARATE)
    with pytest.raises(UnsupportedError, match="cannot be re-ordered"):
        map_roles(["attn.qkv"], UNKNOWN, CONCAT)


def test_map_roles_refuses_a_plain_target_built_from_several_sources():
    with pytest.raises(UnsupportedError, match="Cannot build sep attn.q from sep attn.q, attn.qkv"):
        map_roles(["attn.q", "attn.qkv"], SEPARATE, SEPARATE)


# ---- plan_alignment -----------------------------------------------------------------------------

MISMATCH = "attn.q maps 32 -> 32 features in the source but 48 -> 48 in the target (hidden 32 vs 48)"
R = AUTO_REFINE_BELOW


@pytest.mark.parametrize(
    "align,mismatch,verdict,options,expected",
    [
        # none: a copy, measured or not, unless the shapes differ
        ("none", None, None, {}, (None, False, None)),
        ("none", None, "incompatible", {}, (None, False, None)),
        ("none", MISMATCH, "compatible", {}, WidthMismatchError),
        # auto: a copy only for equal shapes measured compatible
        ("auto", None, "compatible", {}, (None, False, None)),
        ("auto", None, "compatible", {"selection_only": True}, (None, False, None)),
        ("auto", MISMATCH, "compatible", {}, ("lstsq", True, R)),
        ("auto", MISMATCH, None, {}, ("lstsq", True, R)),
        ("auto", MISMATCH, None, {"selection_only": True}, ("correlation", True, R)),
        ("auto", None, "incompatible", {}, ("lstsq", True, R)),
        ("auto", None, "incompatible", {"basis_change": True}, ("correlation", True, R)),
        ("auto", None, "incompatible", {"selection_only": True}, ("correlation", True, R)),
        ("auto", None, None, {}, CompatibilityUnknownError),
        ("auto", None, "unknown", {}, CompatibilityUnknownError),
        # distill: the best start, refined; no early stop
        ("distill", None, "compatible", {}, (None, True, None)),
        ("distill", None, "incompatible", {}, ("lstsq", True, None)),
        ("distill", None, None, {}, ("lstsq", True, None)),
        ("distill", MISMATCH, "compatible", {}, ("lstsq", True, None)),
        ("distill", None, None, {"selection_only": True}, ("correlation", True, None)),
        # an explicit method is taken as asked, never refined
        ("lstsq", MISMATCH, None, {}, ("lstsq", False, None)),
        ("lstsq", None, "compatible", {}, ("lstsq", False, None)),
        ("correlation", None, "compatible", {}, ("correlation", False, None)),
        ("align", None, "compatible", {}, UsageError),
    ],
)
def test_plan_alignment_for_each_verdict_and_mismatch(align, mismatch, verdict, options, expected):
    if isinstance(expected, type):
        with pytest.raises(expected) as raised:
            plan_alignment(align, mismatch, verdict, **options)
        assert raised.value.exit_code == {WidthMismatchError: 8, CompatibilityUnknownError: 19, UsageError: 2}[expected]
        return
    plan = plan_alignment(align, mismatch, verdict, **options)
    assert (plan.method, plan.refine, plan.refine_below) == expected
    assert plan.needs_models == (expected[0] is not None or expected[1])
    if mismatch:
        assert mismatch in plan.reason


def test_plan_alignment_reasons_name_the_evidence():
    assert plan_alignment("auto", None, "incompatible", basis_change=True).reason.startswith(
        "shapes agree but the bases have the same space in another basis (measured): correlation alignment")
    assert "hidden spaces that differ" in plan_alignment("auto", None, "incompatible").reason
    assert plan_alignment("distill", None, None).reason == "shapes agree, compatibility not measured: lstsq alignment refined by distillation"
    with pytest.raises(WidthMismatchError, match="--align lstsq"):
        plan_alignment("none", MISMATCH)


# ---- parse_adapter ------------------------------------------------------------------------------

TOY = Architecture(model_type="toy", backbone="bert", layers="encoder.layer",
                   modules={"attn.q": "attention.self.query", "attn.v": "attention.self.value"},
                   embeddings={"embed.tokens": "embeddings.word_embeddings"}, unsupported={"attention.self.gate": "a gate"})
TOY_DIMS = Dims(layers=2, hidden=4, heads=2, kv_heads=2, head_dim=2, intermediate=8, vocab=10)  # q, v: 4 -> 4; embed: 10 -> 4
P = "base_model.model."


def lora_pair(module: str, rank: int = 2, width: int = 4) -> dict[str, torch.Tensor]:
    return {f"{module}.lora_A.weight": torch.ones(rank, width), f"{module}.lora_B.weight": torch.ones(width, rank)}


def toy_state(backbone: str) -> dict[str, torch.Tensor]:
    return {
        **lora_pair(f"{P}{backbone}encoder.layer.0.attention.self.query"),
        **lora_pair(f"{P}{backbone}encoder.layer.1.attention.self.value"),
        f"{P}{backbone}embeddings.word_embeddings.lora_embedding_A": torch.ones(2, 10),
        f"{P}{backbone}embeddings.word_embeddings.lora_embedding_B": torch.ones(4, 2),
        f"{P}{backbone}embeddings.word_embeddings.base_layer.weight": torch.ones(10, 4),
        f"{P}classifier.weight": torch.ones(3, 4),
        f"{P}classifier.bias": torch.ones(3),
    }


def parse(tensors, modules_to_save=("classifier",)):
    return parse_adapter(tensors, arch=TOY, dims=TOY_DIMS, modules_to_save=list(modules_to_save))


@pytest.mark.parametrize("backbone", ["bert.", ""])
def test_parse_adapter_sorts_keys_into_layers_embeddings_heads_and_dropped(backbone):
    tensors = toy_state(backbone)
    parsed = parse(tensors)
    assert parsed.prefix == backbone
    assert {k: sorted(v) for k, v in parsed.layers.items()} == {
        (0, "attn.q"): ["lora_A.weight", "lora_B.weight"], (1, "attn.v"): ["lora_A.weight", "lora_B.weight"]}
    assert parsed.layers[(0, "attn.q")]["lora_A.weight"] is tensors[f"{P}{backbone}encoder.layer.0.attention.self.query.lora_A.weight"]
    assert {k: sorted(v) for k, v in parsed.embeddings.items()} == {"embed.tokens": ["lora_embedding_A", "lora_embedding_B"]}
    assert {k: sorted(v) for k, v in parsed.heads.items()} == {"classifier": ["bias", "weight"]}
    assert parsed.dropped == [f"{P}{backbone}embeddings.word_embeddings.base_layer.weight"]
    assert parsed.roles == ["attn.q", "attn.v"]


@pytest.mark.parametrize("change,error,match", [
    # the peft prefix is required
    ({"bert.encoder.layer.0.attention.self.query.lora_A.weight": torch.ones(2, 4)}, BadAdapterError, "does not start with 'base_model.model.'"),
    ({f"{P}bert.encoder.layer.0.attention.self.query.bias": torch.ones(4)}, UnsupportedError, "is not a LoRA, DoRA or IA3 weight"),
    ({f"{P}bert.encoder.layer.0.attention.self.nope.lora_A.weight": torch.ones(2, 4)}, BadAdapterError,
     "toy layers have no module 'attention.self.nope'"),
    ({f"{P}bert.encoder.layer.0.attention.self.gate.lora_A.weight": torch.ones(2, 4)}, UnsupportedError, r"no role .* \(a gate\)"),
    (lora_pair(f"{P}bert.encoder.layer.2.attention.self.query"), BadAdapterError, "layer 2 does not exist, the base has 2 layers"),
    ({f"{P}bert.encoder.layer.0.attention.self.query.lora_A.weight": torch.ones(2, 5)}, BadAdapterError, r"has shape \(2, 5\)"),
    # the backbone prefix is taken off before the module is looked up
    ({f"{P}bert.pooler.dense.lora_A.weight": torch.ones(2, 4)}, BadAdapterError,
     r"key 'base_model\.model\.bert\.pooler\.dense\.lora_A\.weight' .*: 'pooler\.dense' is not a known layer module"),
    (lora_pair(f"{P}encoder.layer.1.attention.self.query"), BadAdapterError, "mix a task-model prefix and a bare-model prefix"),
    ({f"{P}bert.encoder.layer.0.attention.self.query.lora_A.weight": None}, BadAdapterError, "only half of a LoRA pair"),
    ({f"{P}bert.encoder.layer.0.attention.self.query.lora_A.weight": torch.ones(3, 4)}, BadAdapterError, "disagree on the rank"),
])
def test_parse_adapter_rejects_bad_keys(change, error, match):
    tensors = {k: v for k, v in (toy_state("bert.") | change).items() if v is not None}
    with pytest.raises(error, match=match) as raised:
        parse(tensors)
    assert raised.value.exit_code == (3 if error is BadAdapterError else 4)


def test_parse_adapter_reads_a_head_only_when_modules_to_save_names_it():
    tensors = toy_state("bert.")
    with pytest.raises(UnsupportedError, match="'base_model.model.classifier.weight' is not a LoRA, DoRA or IA3 weight"):
        parse(tensors, modules_to_save=())


# ---- target_module_names ------------------------------------------------------------------------

BERTISH = Architecture(
    model_type="bertish", backbone="bert", layers="encoder.layer",
    modules={"attn.q": "attention.self.query", "attn.v": "attention.self.value", "attn.o": "attention.output.dense", "mlp.down": "output.dense"},
    embeddings={"embed.tokens": "embeddings.word_embeddings"}, outside=("pooler.dense",),
)


def converted(role: str, layers, prefix="bert.") -> list[ConvertedModule]:
    module = LoraModule(torch.ones(1, 1), torch.ones(1, 1), 1.0)
    if layers is None:
        return [ConvertedModule(f"{prefix}{BERTISH.embeddings[role]}", role, None, module)]
    return [ConvertedModule(f"{prefix}encoder.layer.{i}.{BERTISH.modules[role]}", role, i, module) for i in layers]


def test_target_module_names_use_the_shortest_unique_suffix_for_roles_in_every_layer():
    modules = (converted("attn.q", [0, 1]) + converted("attn.v", [1]) + converted("mlp.down", [0, 1])
               + converted("embed.tokens", None))
    assert target_module_names(modules, BERTISH, 2, "bert.") == [
        "query",  # every layer, unique suffix
        "encoder.layer.1.attention.self.value",  # one layer of two: named module by module
        "encoder.layer.0.output.dense", "encoder.layer.1.output.dense",  # 'dense' and 'output.dense' also select attention.output.dense
        "word_embeddings",
    ]


def test_target_module_names_avoid_suffixes_of_modules_without_a_role():
    extra = dataclasses.replace(BERTISH, unsupported={"extra.value": "no role"})
    assert target_module_names(converted("attn.v", [0, 1], prefix=""), extra, 2, "") == ["self.value"]
    assert target_module_names(converted("attn.v", [0, 1], prefix=""), BERTISH, 2, "") == ["value"]


# ---- build_model_card ---------------------------------------------------------------------------


def base_summary(id_: str, model_type: str, layers: int, revision: str | None) -> BaseModelSummary:
    architecture = ArchitectureSummary(origin="derived", layers="encoder.layer", modules={"attn.q": "q"}, fused_layout={}, unsupported={})
    return BaseModelSummary(id=id_, revision=revision, model_type=model_type, layers=layers, hidden=32, architecture=architecture)


def summary(**changes) -> ConversionSummary:
    return dataclasses.replace(ConversionSummary(
        tool_version="9.9.9",
        command_line="adapter-convert convert alice/ner-lora@abc --target bob/tiny-student --out OUT --layer-map avg",
        peft_type="LORA",
        task_type="TOKEN_CLS",
        source_adapter=AdapterSummary(id="alice/ner-lora", revision="abc", bytes=10),
        source_base=base_summary("alice/big-teacher", "bert", 4, "1111"),
        target_base=base_summary("bob/tiny-student", "distilbert", 2, None),
        method="direct tensor mapping",
        layer_map={"strategy": "avg", "rows": [{"target": 0, "sources": [0, 1]}, {"target": 1, "sources": [2, 3]}]},
        modules=(ModuleRow(target="attention.q_lin", role="attn.q", operation="copy", sources=("attention.self.query",)),),
        heads={"classifier": "classifier"},
        dropped=(),
        num_labels=5,
        alignment=AlignmentSummary(method="direct", reason="shapes agree"),
        compatibility=CompatibilitySummary(verdict="compatible", evidence=CompatibilityEvidence(
            identity_cosine=0.98765, linear_fit=0.995, sampled_rows=100, token_match="exact", reason="same rows")),
        resources=None,
    ), **changes)


ALIGNED = AlignmentSummary(
    method="lstsq", reason="widths differ", device="cpu", dtypes={"source": "float32", "target": "bfloat16"},
    calibration=CalibrationSummary(source="built-in multilingual sample", tokens=300),
    modules=(AlignedModule(target_layer=0, source_layer=1, role="attn.q", input_fit=0.9, output_fit=0.8, score="R^2",
                           identity_r2=None, linear_r2=0.95),),
    head_input_fit=0.7, score="R^2",
    memory=AlignmentMemory(passes=1, statistics_dtype="float64", predicted_alignment_bytes=1000, budget_bytes=4096),
    agreement=Agreement(metric="predicted-label agreement", value=0.875, held_out_tokens=64),
    agreement_before_distill=Agreement(metric="predicted-label agreement", value=0.5, held_out_tokens=64),
    distill=Distillation(steps=10, lr=0.001, seed=0, final_loss=0.25),
)


def test_summary_to_json_known_answer():
    written = OutputSummary(path="out", files=("adapter_config.json", "adapter_model.safetensors", "README.md"), tensors=4, bytes=64)
    data = summary(output=written, alignment=ALIGNED, dropped=("embeddings.word_embeddings.weight",)).to_json()
    assert list(data) == ["schema_version", "tool_version", "command_line", "peft_type", "task_type", "source_adapter", "source_base",
                          "target_base", "method", "layer_map", "modules", "heads", "dropped", "num_labels", "output", "alignment",
                          "compatibility", "resources", "dry_run", "measurements", "fidelity", "push"]
    assert data["source_adapter"] == {"id": "alice/ner-lora", "revision": "abc", "bytes": 10, "url": None, "license": None}
    # the measured agreement is the one measurement, and the fidelity a gate reads
    assert data["measurements"] == [{"name": "predicted-label agreement", "type": "agreement_with_source_adapter", "value": 0.875,
                                     "data": data["measurements"][0]["data"], "higher_is_better": True}]
    assert data["fidelity"] == data["measurements"][0] and data["fidelity"]["data"].startswith("64 held-out calibration tokens")
    assert data["target_base"] == {"id": "bob/tiny-student", "revision": None, "model_type": "distilbert", "layers": 2, "hidden": 32,
                                   "architecture": {"origin": "derived", "layers": "encoder.layer", "modules": {"attn.q": "q"},
                                                    "fused_layout": {}, "unsupported": {}, "partial": {}}}
    assert data["modules"] == [{"target": "attention.q_lin", "role": "attn.q", "operation": "copy", "sources": ["attention.self.query"]}]
    assert data["dropped"] == ["embeddings.word_embeddings.weight"]
    assert data["output"] == {"path": "out", "files": ["adapter_config.json", "adapter_model.safetensors", "README.md"], "tensors": 4, "bytes": 64}
    assert data["dry_run"] is False and data["push"] is None and data["resources"] is None
    assert data["compatibility"] == {"verdict": "compatible", "evidence": {
        "method": "token-embedding probe", "reason": "same rows", "identity_cosine": 0.98765, "linear_fit": 0.995, "shared_tokens": None,
        "sampled_rows": 100, "token_match": "exact", "bytes_read": None, "thresholds": None}}
    assert data["alignment"] == {
        "method": "lstsq", "reason": "widths differ", "device": "cpu", "dtypes": {"source": "float32", "target": "bfloat16"},
        "calibration": {"source": "built-in multilingual sample", "tokens": 300, "prompts": None, "dataset": None},
        "modules": [{"target_layer": 0, "source_layer": 1, "role": "attn.q", "input_fit": 0.9, "output_fit": 0.8, "score": "R^2",
                     "identity_r2": None, "linear_r2": 0.95}],
        "head_input_fit": 0.7, "score": "R^2",
        "memory": {"passes": 1, "statistics_dtype": "float64", "predicted_alignment_bytes": 1000, "budget_bytes": 4096},
        "agreement": {"metric": "predicted-label agreement", "value": 0.875, "held_out_tokens": 64},
        "agreement_before_distill": {"metric": "predicted-label agreement", "value": 0.5, "held_out_tokens": 64},
        "distill": {"steps": 10, "lr": 0.001, "seed": 0, "final_loss": 0.25, "skipped": None, "max_steps": None, "best_step": None, "cooldown_from": None,
                    "span_weight": None},
        "fidelity": None,
    }
    planned = summary().to_json()  # a plan: nothing written, nothing run
    assert planned["dry_run"] is True and planned["output"] is None
    assert planned["alignment"].keys() == data["alignment"].keys()
    assert planned["alignment"] == dict.fromkeys(data["alignment"], None) | {"method": "direct", "reason": "shapes agree"}
    assert json.loads(json.dumps(data)) == data  # plain JSON types only
    push = PushSummary(repo="alice/r", branch="main", commit="c", commit_url=None, pr_url=None, changed=True, existing_pr=False,
                       created=("repo alice/r",), files=("README.md",), left_out=())
    assert summary(push=push).to_json()["push"] == {"repo": "alice/r", "branch": "main", "commit": "c", "commit_url": None, "pr_url": None,
                                                   "changed": True, "existing_pr": False, "created": ["repo alice/r"],
                                                   "files": ["README.md"], "left_out": []}


def test_model_card_names_both_bases_and_the_command():
    card = build_model_card(summary())
    assert card.data.base_model == "bob/tiny-student"
    assert card.data.tags == ["peft", "adapter-convert", "lora", "bert", "distilbert"]
    assert card.data.pipeline_tag == "token-classification"
    text = card.text
    assert text.splitlines()[1] == "# LORA adapter for bob/tiny-student"
    assert "| Source adapter | `alice/ner-lora` @ `abc` |" in text
    assert "| Source base | `alice/big-teacher` (bert, 4 layers) @ `1111` |" in text
    assert "| Target base | `bob/tiny-student` (distilbert, 2 layers) |" in text
    assert "| Compatibility | compatible: embedding-row cosine 0.988, linear fit 0.995 over 100 shared tokens (exact) |" in text
    assert "| 0 | 0, 1 |\n| 1 | 2, 3 |" in text
    assert "| `attention.q_lin` | copy | attention.self.query |" in text
    assert "`classifier` -> `classifier`" in text
    assert 'AutoModelForTokenClassification.from_pretrained("bob/tiny-student", num_labels=5)' in text
    assert "```bash\nadapter-convert convert alice/ner-lora@abc --target bob/tiny-student --out OUT --layer-map avg\n```" in text
    assert "### Alignment" not in text  # no fitted modules: no alignment table


def test_model_card_for_a_causal_lm_without_measurement():
    card = build_model_card(summary(task_type="CAUSAL_LM", heads={}, num_labels=None, compatibility=CompatibilitySummary.of(None)))
    assert card.data.pipeline_tag == "text-generation"
    assert "| Compatibility | not measured (--align none) |" in card.text
    assert 'AutoModelForCausalLM.from_pretrained("bob/tiny-student")\n' in card.text
    assert "Task head(s)" not in card.text


def test_model_card_reports_the_alignment_run():
    text = build_model_card(summary(alignment=ALIGNED, method="lstsq alignment + distillation")).text
    assert "widths differ. Maps fitted on 300 paired calibration tokens\n(built-in multilingual sample); scores are the R^2 of each map." in text
    assert "| 0 | 1 | attn.q | 0.900 | 0.800 | - / 0.950 |" in text
    assert "Task head / last hidden state: 0.700." in text
    assert "Refined by 10 steps of distillation (lr 0.001, seed 0, final loss 0.25)." in text
    assert "predicted-label agreement\nbetween the teacher with its adapter and this model with this adapter: **0.875** (0.500 before distillation)." in text
    skipped = dataclasses.replace(ALIGNED, distill=Distillation(skipped="held-out agreement 0.9 is already at least 0.8"),
                                  agreement_before_distill=None)
    text = build_model_card(summary(alignment=skipped)).text
    assert "No distillation: the held-out agreement 0.9 is already at least 0.8." in text and "Refined by" not in text


@pytest.mark.parametrize("method, start, said", [
    ("fresh", 1.4, "The start was a new adapter, which changes nothing"),
    ("lstsq", 2.631, "The start (lstsq maps) was no head start: it took the target further from the teacher's answers than no "
                     "adapter (2.631 vs 1.427 bits per byte); distillation did the work."),
    ("lstsq", 0.9, "The start (lstsq maps) was a head start: it brought the target closer to the teacher's answers than no adapter "
                   "(0.900 vs 1.427 bits per byte) before distillation."),
])
def test_model_card_says_whether_the_start_was_a_head_start(method, start, said):
    fidelity = GenerationFidelity(prompts="prompts.jsonl", train_prompts=8, held_out_prompts=2, max_new_tokens=16, stop=("\n",),
                                  answer_end="EOS", bits_per_byte={"target base": 1.427, "start": start, "converted": 0.2},
                                  token_f1={"target base": 0.1, "converted": 0.8}, exact_match={"target base": 0.0, "converted": 0.5},
                                  held_out_curve=((0, start), (10, 0.2)))
    alignment = AlignmentSummary(method=method, reason="unrelated bases", fidelity=fidelity,
                                 agreement=Agreement(metric="token F1", value=0.8, held_out_tokens=20))
    text = build_model_card(summary(task_type="CAUSAL_LM", heads={}, num_labels=None, alignment=alignment)).text
    assert " ".join(text.split()).count(said) == 1
    assert "head start" not in text.replace(said, "") or method == "fresh"
    assert "**Warning:**" not in text  # it does bring the target closer


# ---- hub_error ----------------------------------------------------------------------------------

REF = HubReference("alice/repo", "v2")
HUB = "https://huggingface.co"  # huggingface_hub recognises repo URLs on https only
API = "/api/models/alice/repo/revision/v2"
FILE = "/alice/repo/resolve/v2/adapter_config.json"


def http_error(status: int, path: str, **headers) -> HfHubHTTPError:
    """The error huggingface_hub raises for this answer."""
    response = httpx2.Response(status, headers=headers, request=httpx2.Request("GET", HUB + path))
    with pytest.raises(HfHubHTTPError) as raised:
        hf_raise_for_status(response)
    return raised.value


@pytest.fixture
def no_cached_token(monkeypatch):
    monkeypatch.setattr("adapter_convert.hub.errors.get_token", lambda: None)
    monkeypatch.setattr("adapter_convert.hub.push.get_token", lambda: None)


@pytest.mark.usefixtures("no_cached_token")
@pytest.mark.parametrize("status,path,headers,token,writing,error,code,message", [
    # huggingface_hub reads a 401 on a repo URL as "not found": private, or missing
    (401, FILE, {}, None, False, HubAuthError, 11, "The adapter alice/repo@v2 was not found, or it is private and no token was given."),
    (401, API, {}, "tok", False, HubRepoNotFoundError, 10, "The adapter alice/repo@v2 was not found, or the token given may not read it."),
    (404, API, {"X-Error-Code": "RepoNotFound"}, "tok", False, HubRepoNotFoundError, 10,
     "The adapter alice/repo@v2 was not found, or the token given may not read it."),
    (401, API, {"X-Error-Message": "Invalid credentials in Authorization header"}, "tok", False, HubAuthError, 11,
     "The Hub refused to let this token read alice/repo@v2 (HTTP 401)."),
    (403, FILE, {}, None, False, HubAuthError, 11, "No Hub token was given, and the Hub refused access to alice/repo@v2 (HTTP 403)."),
    (403, FILE, {}, "tok", False, HubAuthError, 11, "The Hub refused to let this token read alice/repo@v2 (HTTP 403)."),
    (403, API, {}, "tok", True, HubAuthError, 11, "The Hub refused to let this token write to alice/repo@v2 (HTTP 403)."),
    (404, API, {"X-Error-Code": "RevisionNotFound"}, "tok", False, HubRevisionNotFoundError, 13, "The adapter alice/repo has no revision 'v2'."),
    (404, FILE, {"X-Error-Code": "EntryNotFound"}, None, False, HubFileMissingError, 14, "A file of the adapter alice/repo@v2 is missing"),
    (403, FILE, {"X-Error-Code": "GatedRepo"}, "tok", False, HubGatedError, 12, "The adapter alice/repo@v2 is gated"),
    (503, API, {}, None, False, HubUnreachableError, 15, "The Hub answered HTTP 503 for the adapter alice/repo@v2, after 5 retries."),
    (502, FILE, {}, None, False, HubUnreachableError, 15,
     "The Hub answered HTTP 502 while downloading a file of the adapter alice/repo@v2, after 5 retries."),
    (500, API, {}, "tok", True, HubUnreachableError, 15, "The Hub answered HTTP 500 for the adapter alice/repo@v2, after 5 retries."),
])
def test_hub_error_maps_each_answer_to_one_typed_error(status, path, headers, token, writing, error, code, message):
    mapped = hub_error(http_error(status, path, **headers), REF, what="adapter", token=token, writing=writing, retries=5)
    assert type(mapped) is error and mapped.exit_code == code
    assert mapped.problem.startswith(message), mapped.problem


@pytest.mark.usefixtures("no_cached_token")
def test_hub_error_next_steps_depend_on_the_status():
    read_5xx = hub_error(http_error(503, API), REF, what="adapter", token=None)
    assert read_5xx.fix == "Try again later; files already downloaded stay in the Hub cache." and "after" not in read_5xx.problem
    assert hub_error(http_error(500, API), REF, what="repo", token="tok", writing=True).fix == "Try again later."
    assert hub_error(http_error(400, API), REF, what="repo", token="tok").fix == "Check the request."
    assert "--token" in hub_error(http_error(403, FILE), REF, what="repo", token=None).fix


@pytest.mark.usefixtures("no_cached_token")
def test_hub_error_maps_network_failures_and_passes_its_own_errors_through():
    refused = hub_error(httpx2.ConnectError("connection refused"), HubReference("alice/repo", None), what="base model", token=None)
    assert type(refused) is HubUnreachableError and refused.exit_code == 15
    assert refused.problem == f"Could not reach the Hub at {constants.ENDPOINT} for the base model alice/repo (ConnectError: connection refused)."
    cached = LocalEntryNotFoundError("not cached")
    cached.__cause__ = http_error(503, FILE)
    assert hub_error(cached, REF, what="adapter", token=None, retries=2).problem == (
        "The Hub answered HTTP 503 for the adapter alice/repo@v2, after 2 retries.")
    own = HubAuthError("no")
    assert hub_error(own, REF, what="adapter", token=None) is own
    assert isinstance(own, HubError)
    with pytest.raises(KeyError):
        hub_error(KeyError("a bug"), REF, what="adapter", token=None)


# ---- verify: the written file's header against the tensors in memory ------------------------------
def test_verify_checks_the_written_header_against_the_tensors_in_memory(tmp_path):
    from peft import LoraConfig
    from safetensors.torch import save_file

    from adapter_convert.errors import VerificationError
    from adapter_convert.verify import verify_adapter_folder
    from helpers import tiny_config

    config = tiny_config("llama", 2)
    LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM").save_pretrained(tmp_path)
    tensors = {f"base_model.model.model.layers.{i}.self_attn.q_proj.lora_{p}.weight": torch.ones(shape)
               for i in range(2) for p, shape in (("A", (2, 32)), ("B", (32, 2)))}
    save_file(tensors, tmp_path / "adapter_model.safetensors")
    verify_adapter_folder(tmp_path, config, bare=False, written=tensors)  # the header matches: loads from memory
    verify_adapter_folder(tmp_path, config, bare=False)  # and read back whole, the old way
    wider = dict(tensors) | {next(iter(tensors)): torch.ones(2, 33)}
    with pytest.raises(VerificationError, match=r"does not hold the converted tensors"):
        verify_adapter_folder(tmp_path, config, bare=False, written=wider)
    with pytest.raises(VerificationError, match=r"does not hold the converted tensors"):
        verify_adapter_folder(tmp_path, config, bare=False, written={k: v.half() for k, v in tensors.items()})
    missing = dict(list(tensors.items())[:-1])
    with pytest.raises(VerificationError):
        verify_adapter_folder(tmp_path, config, bare=False, written=missing)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_all_finite_finds_one_nan_or_inf_among_finite_values(bad):
    from adapter_convert.adapter_io import all_finite

    tensor = torch.randn(64, 32)
    assert all_finite(tensor)
    tensor[17, 3] = bad
    assert not all_finite(tensor)


def test_all_finite_when_inf_and_minus_inf_cancel_and_when_the_sum_overflows():
    from adapter_convert.adapter_io import all_finite

    assert not all_finite(torch.tensor([float("inf"), float("-inf"), 1.0]))  # the sum is NaN, not 0
    overflowing = torch.full((100,), 60000.0, dtype=torch.float16)  # finite values, a sum beyond float16
    assert not torch.isfinite(overflowing.sum()) and all_finite(overflowing)
    assert all_finite(torch.empty(0, 4))


def test_bases_load_in_float32_on_the_cpu_where_it_fits(tmp_path):
    """--dtype wins; a GPU keeps each checkpoint's own; the CPU upcasts half-precision checkpoints
    unless float32 copies of both would take more than half the available memory."""
    import torch
    from transformers import LlamaConfig

    from adapter_convert.align.placement import load_dtype

    half, full = LlamaConfig(dtype="bfloat16"), LlamaConfig(dtype="float32")
    for name, size in (("a", 100), ("b", 300)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.safetensors").write_bytes(b"\0" * size)
    folders = [tmp_path / "a", tmp_path / "b"]
    assert load_dtype("bfloat16", "cpu", folders, [full, full], available=None)[0] == torch.bfloat16
    assert load_dtype(None, "cuda", folders, [half, half], available=None)[0] == "auto"
    assert load_dtype(None, "cpu", folders, [full, full], available=None)[0] == "auto"  # nothing to upcast
    # bfloat16 checkpoints of 100 and 300 bytes take 800 bytes in float32: they fit in 1600 available, not in 1599
    assert load_dtype(None, "cpu", folders, [half, half], available=1600)[0] == torch.float32
    dtype, why = load_dtype(None, "cpu", folders, [half, half], available=1599)
    assert dtype == "auto" and "available" in why
    assert load_dtype(None, "cpu", folders, [full, half], available=None)[0] == torch.float32  # 100 + 600 bytes, memory unknown
