"""Evaluate and refine a converted adapter against the teacher with its adapter, on paired tokens.

Both models are real (weights loaded) PEFT models. With a task head that both sides share
(token or sequence classification) the comparison is the head's output; otherwise it is the
change the adapter makes to the last hidden state, read in the teacher's space through the
head-input map ``M`` (``h_t ~ M h_s``; the identity for same-width conversions).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F

from ..calibration import PairedBatch
from ..tasks import LABELLED
from .capture import index_on, on_device


def uses_logits(task_type: str | None, has_head: bool) -> bool:
    return has_head and task_type in LABELLED  # heads both models share: compare their logits


def _outputs(model, batch_inputs, index, *, logits: bool, task_type: str | None, adapter: bool = True):
    """Logits or last hidden states at the paired positions, in float32 (the two models may run in
    different dtypes and on different devices; comparisons and losses are made in float32)."""
    context = contextlib.nullcontext() if adapter else model.disable_adapter()
    with context:
        if logits:
            out = model(**on_device(batch_inputs, model)).logits
            return (out if task_type == "SEQ_CLS" else out[index_on(index, out)]).float()
        # the backbone alone (its adapted layers included): a causal LM's vocabulary-wide logits
        # would cost more than the rest of the model and are not compared
        hidden = model.get_base_model().base_model(**on_device(batch_inputs, model)).last_hidden_state
    return hidden[index_on(index, hidden)].float()


def _hidden_delta(model, inputs, index, *, grad: bool) -> torch.Tensor:
    with torch.no_grad():
        base = _outputs(model, inputs, index, logits=False, task_type=None, adapter=False)
    with contextlib.nullcontext() if grad else torch.no_grad():
        adapted = _outputs(model, inputs, index, logits=False, task_type=None)
    return adapted - base


def agreement(teacher, student, batches: Iterable[PairedBatch], *, task_type: str | None, has_head: bool, head_map: torch.Tensor) -> dict:
    """How often the student with its converted adapter agrees with the teacher with its own."""
    teacher.eval(), student.eval()
    if uses_logits(task_type, has_head):
        same = total = 0
        with torch.no_grad():
            for batch in batches:
                t = _outputs(teacher, batch.teacher_inputs, batch.teacher_index, logits=True, task_type=task_type)
                s = _outputs(student, batch.student_inputs, batch.student_index, logits=True, task_type=task_type)
                same += int((t.argmax(-1).cpu() == s.argmax(-1).cpu()).sum())
                total += t.shape[0]
        return {"metric": "predicted-label agreement", "value": same / max(total, 1), "tokens": total}
    cosine_sum, total = 0.0, 0
    for batch in batches:
        dt = _hidden_delta(teacher, batch.teacher_inputs, batch.teacher_index, grad=False)
        ds = _hidden_delta(student, batch.student_inputs, batch.student_index, grad=False)
        cosine_sum += float(F.cosine_similarity(ds.double().cpu() @ head_map.double().T, dt.double().cpu(), dim=-1).sum())
        total += dt.shape[0]
    return {"metric": "cosine of last-hidden-state changes", "value": cosine_sum / max(total, 1), "tokens": total}


def distill(
    teacher, student, batches: Iterator[PairedBatch], *, task_type: str | None, has_head: bool, head_map: torch.Tensor,
    steps: int, lr: float, seed: int, on_step: Callable[[float], None] = lambda loss: None,
) -> float:
    """Train only the student's adapter (and head) to reproduce the teacher-with-adapter's outputs.

    ``batches`` is an endless stream, read in order: deterministic for a seed (both models run
    without dropout, so nothing else is random).
    """
    with torch.random.fork_rng(devices=range(torch.cuda.device_count())):  # the caller's generators are left as they were
        torch.manual_seed(seed)
        teacher.eval(), student.eval()
        params = [p for p in student.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
        logits = uses_logits(task_type, has_head)
        head_map = head_map.float()
        loss_value = float("nan")
        for _, batch in zip(range(steps), batches):
            if logits:
                with torch.no_grad():
                    target = _outputs(teacher, batch.teacher_inputs, batch.teacher_index, logits=True, task_type=task_type)
                predicted = _outputs(student, batch.student_inputs, batch.student_index, logits=True, task_type=task_type)
                target = target.to(predicted.device)
                loss = F.kl_div(F.log_softmax(predicted, -1), F.log_softmax(target, -1), log_target=True, reduction="batchmean")
            else:
                target = _hidden_delta(teacher, batch.teacher_inputs, batch.teacher_index, grad=False)
                predicted = _hidden_delta(student, batch.student_inputs, batch.student_index, grad=True)
                predicted = predicted @ head_map.to(predicted.device).T
                target = target.to(predicted.device)
                loss = F.mse_loss(predicted, target) / target.pow(2).mean().clamp_min(1e-12)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            loss_value = loss.item()
            on_step(loss_value)
        return loss_value
