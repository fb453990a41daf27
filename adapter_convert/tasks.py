"""PEFT task types: the transformers model class and the Hub pipeline tag of each, in one table.

Names, not classes, so that the pure modules (the model card) read it without importing
transformers; ``model_class`` resolves a name when a model is built.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Task:
    model_class: str  # transformers' Auto class that builds a model with this task's head
    pipeline_tag: str | None  # the Hub's pipeline_tag for the model card
    writes_text: bool = False  # the model generates: distilled in output space, on the teacher's answers


TASKS: dict[str, Task] = {
    "TOKEN_CLS": Task("AutoModelForTokenClassification", "token-classification"),
    "SEQ_CLS": Task("AutoModelForSequenceClassification", "text-classification"),
    "CAUSAL_LM": Task("AutoModelForCausalLM", "text-generation", writes_text=True),
    "QUESTION_ANS": Task("AutoModelForQuestionAnswering", None),
    "SEQ_2_SEQ_LM": Task("AutoModelForSeq2SeqLM", "text2text-generation", writes_text=True),
}
LABELLED = ("TOKEN_CLS", "SEQ_CLS")  # tasks whose head has one output per label (config.num_labels)
WRITES_TEXT = frozenset(name for name, task in TASKS.items() if task.writes_text)  # a causal LM, an encoder-decoder's seq2seq LM
BARE = "AutoModel"  # the model without a task head


def model_class_name(task_type: str | None, *, default: str = BARE) -> str:
    task = TASKS.get(task_type or "")
    return task.model_class if task else default


def pipeline_tag(task_type: str | None) -> str | None:
    task = TASKS.get(task_type or "")
    return task.pipeline_tag if task else None


def model_class(task_type: str | None, *, default: str = BARE) -> type:
    """The transformers Auto class for ``task_type`` (``default`` for none or an unknown one)."""
    import transformers

    return getattr(transformers, model_class_name(task_type, default=default))
