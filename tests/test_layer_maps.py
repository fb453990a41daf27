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
