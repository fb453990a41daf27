"""adapter-convert: move a trained PEFT adapter onto another base model."""

__version__ = "0.1.0"
