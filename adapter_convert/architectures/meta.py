"""Models built on the meta device (no weights, no memory): what derivation reads, and the real
expert shapes an architecture's sizes need. Imports nothing else of the package."""

from __future__ import annotations

import functools

import torch


def build(model_class, config):
    with torch.device("meta"):
        return model_class.from_config(config)


@functools.cache
def _expert_shapes(config_json: str, layers_path: str, experts: str) -> tuple[tuple[tuple[str, tuple[int, ...]], ...], ...]:
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.for_model(**__import__("json").loads(config_json))
    layer_list = build(AutoModel, config).get_submodule(layers_path)
    out = []
    for layer in layer_list:
        try:
            module = layer.get_submodule(experts)
        except AttributeError:  # a dense layer
            out.append(())
            continue
        out.append(tuple((name, tuple(p.shape)) for name, p in module.named_parameters(recurse=False) if p.ndim == 3))
    return tuple(out)


def expert_shapes(config, layers_path: str, experts: str) -> tuple[tuple[tuple[str, tuple[int, ...]], ...], ...]:
    """Per layer, the experts module's 3-D parameters and their real shapes (experts, out, in), read
    from the model built on the meta device with ``config`` (no weights, no memory)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _expert_shapes(config.to_json_string(use_diff=False), layers_path, experts)
