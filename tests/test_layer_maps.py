import pytest

from adapter_convert.errors import LayerMapError
from adapter_convert.layer_maps import build_layer_map


def sources(spec, ls, lt):
    return build_layer_map(spec, source_layers=ls, target_layers=lt).sources


def test_skip_takes_every_kth_layer():
    assert sources("skip", 12, 4) == {0: (0,), 1: (3,), 2: (6,), 3: (9,)}


def test_avg_takes_k_consecutive_layers():
    assert sources("avg", 6, 3) == {0: (0, 1), 1: (2, 3), 2: (4, 5)}


def test_uniform_spreads_any_depths_and_equals_skip_for_multiples():
    assert sources("uniform", 6, 4) == {0: (0,), 1: (1,), 2: (3,), 3: (4,)}
    assert sources("uniform", 12, 4) == sources("skip", 12, 4)
    assert sources("uniform", 2, 4) == {0: (0,), 1: (0,), 2: (1,), 3: (1,)}


def test_auto_picks_identity_skip_or_uniform():
    assert build_layer_map("auto", source_layers=4, target_layers=4).strategy == "identity"
    assert build_layer_map("auto", source_layers=6, target_layers=3).strategy == "skip"
    assert build_layer_map("auto", source_layers=6, target_layers=4).strategy == "uniform"


def test_explicit_pairs_are_source_to_target():
    assert sources("0:0, 2:1,4:2", 6, 3) == {0: (0,), 1: (2,), 2: (4,)}


@pytest.mark.parametrize("spec", ["skip", "avg"])
def test_skip_and_avg_refuse_non_multiples(spec):
    with pytest.raises(LayerMapError, match="multiple"):
        build_layer_map(spec, source_layers=6, target_layers=4)


def test_avg_refuses_a_deeper_target():
    with pytest.raises(LayerMapError):
        build_layer_map("avg", source_layers=2, target_layers=4)


@pytest.mark.parametrize("spec", [",", ":", "1:", "a:b"])
def test_unreadable_maps_are_refused(spec):
    with pytest.raises(LayerMapError):
        build_layer_map(spec, source_layers=2, target_layers=2)


# Layer types: the real patterns of gemma2 (alternating, sliding first) and gemma3 (five sliding, one full).
def _types(model_type: str, layers: int) -> tuple[str, ...]:
    from transformers import AutoConfig

    return tuple(AutoConfig.for_model(model_type, num_hidden_layers=layers).layer_types)


def test_layer_types_of_the_real_configs():
    assert _types("gemma2", 4) == ("sliding_attention", "full_attention") * 2
    assert _types("gemma3_text", 12) == (("sliding_attention",) * 5 + ("full_attention",)) * 2


def test_auto_keeps_each_target_layer_on_a_source_layer_of_its_type():
    # gemma3 12 -> 6 layers: SKIP takes 0,2,4,6,8,10, all sliding, but target layer 5 is full attention;
    # the full-attention source layers are 5 and 11, and 11 is nearest to 10
    layer_map = build_layer_map("auto", source_layers=12, target_layers=6,
                                source_types=_types("gemma3_text", 12), target_types=_types("gemma3_text", 6))
    assert layer_map.sources == {0: (0,), 1: (2,), 2: (4,), 3: (6,), 4: (8,), 5: (11,)}
    assert layer_map.strategy == "skip, by layer type"
    assert layer_map.mismatches() == [] and layer_map.warning() is None
    # gemma2 4 -> 2 layers: SKIP would put source layer 2 (sliding) on target layer 1 (full);
    # full-attention layers 1 and 3 are equally near to 2: the higher one
    layer_map = build_layer_map("auto", source_layers=4, target_layers=2, source_types=_types("gemma2", 4), target_types=_types("gemma2", 2))
    assert layer_map.sources == {0: (0,), 1: (3,)}


def test_named_and_explicit_maps_are_kept_and_their_type_mismatches_reported():
    types = dict(source_types=_types("gemma2", 4), target_types=_types("gemma2", 2))
    skip = build_layer_map("skip", source_layers=4, target_layers=2, **types)
    assert skip.sources == {0: (0,), 1: (2,)} and skip.strategy == "skip"
    assert skip.mismatches() == [(1, (2,))]
    assert skip.warning() == ("1 of 2 target layers get their adapter from a source layer of another type: "
                              "1 (full_attention) <- 2 (sliding_attention)")
    explicit = build_layer_map("1:0,3:1", source_layers=4, target_layers=2, **types)
    assert explicit.sources == {0: (1,), 1: (3,)} and explicit.mismatches() == [(0, (1,))]
    avg = build_layer_map("avg", source_layers=4, target_layers=2, **types)  # each target averages one layer of each type
    assert avg.mismatches() == [(0, (1,)), (1, (2,))]
    summary = skip.summary()
    assert summary["rows"][1] == {"target": 1, "sources": [2], "target_type": "full_attention", "source_types": ["sliding_attention"]}
    assert summary["type_mismatches"] == [{"target": 1, "sources": [2]}] and summary["warning"] == skip.warning()


def test_without_layer_types_on_both_sides_nothing_changes():
    plain = build_layer_map("auto", source_layers=4, target_layers=2)
    typed_one_side = build_layer_map("auto", source_layers=4, target_layers=2, source_types=_types("gemma2", 4))
    assert plain == typed_one_side and plain.sources == {0: (0,), 1: (2,)}
    assert plain.summary() == {"strategy": "skip", "rows": [{"target": 0, "sources": [0]}, {"target": 1, "sources": [2]}]}


def test_a_type_the_source_lacks_keeps_the_uniform_choice_and_is_reported():
    layer_map = build_layer_map("auto", source_layers=4, target_layers=2, source_types=("sliding_attention",) * 4,
                                target_types=("sliding_attention", "full_attention"))
    assert layer_map.sources == {0: (0,), 1: (2,)} and layer_map.strategy == "skip"
    assert layer_map.mismatches() == [(1, (2,))]


def test_comparable_types_join_the_axes_both_models_name():
    from adapter_convert.architectures import Dims
    from adapter_convert.layer_maps import comparable_types

    sizes = dict(hidden=64, heads=4, kv_heads=2, head_dim=16, intermediate=96, vocab=160)
    llama4 = Dims(layers=2, layer_types=("chunked_attention", "full_attention"), mlp_types=("dense", "moe"), **sizes)
    other = Dims(layers=2, layer_types=("full_attention", "full_attention"), mlp_types=("moe", "moe"), **sizes)
    llama = Dims(layers=2, **sizes)
    assert comparable_types(llama4, other) == (("chunked_attention + dense", "full_attention + moe"),
                                               ("full_attention + moe", "full_attention + moe"))
    assert comparable_types(llama4, llama) == (None, None)
    no_experts = Dims(layers=2, layer_types=("full_attention", "full_attention"), **sizes)
    assert comparable_types(llama4, no_experts) == (("chunked_attention", "full_attention"), ("full_attention", "full_attention"))
