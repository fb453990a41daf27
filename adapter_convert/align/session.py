"""One alignment run: load both base models and tokenizers, calibrate, fit the maps, and later
evaluate (and optionally distill) the converted adapter. The only part of alignment that reads
weights; the math lives in stats.py, correlation.py, lstsq.py, fold.py and refine.py."""

from __future__ import annotations

import dataclasses

import torch
from peft import PeftModel, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from transformers import AutoTokenizer

from collections.abc import Iterator

from ..calibration import PairedBatch, load_texts, paired_batches
from ..errors import CalibrationDataError, UnsupportedError
from ..transform import AdapterModule
from ..verify import TASK_MODEL_CLASSES, head_labels
from . import student_to_teacher, teacher_to_student
from .capture import LAST_HIDDEN, capture_points, collect_statistics, input_point, output_point
from .fold import fold_head, fold_module
from .lstsq import fit as lstsq_fit
from .lstsq import r_squared
from .refine import agreement, distill

HELD_OUT_SHARE = 0.2  # of the calibration texts, kept apart to measure agreement


def held_out_tokens(calibration_tokens: int) -> int:
    return max(512, calibration_tokens // 2)


class AlignmentSession:
    def __init__(self, prepared, reporter):
        from transformers import AutoModel

        self.prepared, self.reporter = prepared, reporter
        request, plan = prepared.request, prepared.plan
        self.method = plan.alignment.method
        self.task_type = plan.task_type
        self.has_head = bool(plan.heads)
        heads = list(prepared.parsed.heads)
        self.num_labels = head_labels(prepared.adapter.tensors, heads)
        calibration = prepared.calibration
        texts = load_texts(calibration.file if calibration else None)
        held = max(1, int(len(texts) * HELD_OUT_SHARE)) if len(texts) > 1 else 0
        self.fit_texts, self.held_texts = texts[: len(texts) - held], texts[len(texts) - held :] or texts
        reporter.stage("Loading source and target base models for calibration")
        model_class = TASK_MODEL_CLASSES.get(self.task_type or "", AutoModel) if plan.source_prefix else AutoModel
        kwargs = {}
        if self.num_labels and self.task_type in ("TOKEN_CLS", "SEQ_CLS"):
            # the base's own head (if any) is replaced by the adapter's, whatever its size
            kwargs = {"num_labels": self.num_labels, "ignore_mismatched_sizes": True}
        loaded = {}
        for side, source in (("source base", prepared.source_base), ("target base", prepared.target_base)):
            try:
                if not has_tokenizer_files(source.path):  # transformers would build an empty one
                    raise OSError("no tokenizer files")
                tokenizer = AutoTokenizer.from_pretrained(source.path)
            except (OSError, ValueError, TypeError) as err:
                raise UnsupportedError(
                    f"Alignment runs both models on calibration text, but the {side} {source.reference!r} has no usable tokenizer ({type(err).__name__}).",
                    "Save the model's tokenizer into its folder (tokenizer.save_pretrained), or convert between models of equal widths.",
                ) from None
            try:
                model = model_class.from_pretrained(source.path, **kwargs).eval()
            except (OSError, ValueError) as err:
                raise UnsupportedError(
                    f"Alignment needs the weights of the {side} {source.reference!r}, which could not be loaded ({err}).",
                    "Point it at a complete model folder or Hub repo.",
                ) from None
            loaded[side] = (tokenizer, model)
        (self.teacher_tokenizer, self.teacher), (self.student_tokenizer, self.student) = loaded["source base"], loaded["target base"]
        self.maps: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}
        self.head_map: torch.Tensor | None = None
        self.report: dict = {"method": self.method or "direct", "reason": plan.alignment.reason}

    def batches(self, texts: list[str], max_tokens: int) -> Iterator[PairedBatch]:
        """Batches are made as they are used, never all held: memory does not grow with tokens."""
        return paired_batches(texts, self.teacher_tokenizer, self.student_tokenizer, max_tokens=max_tokens)

    def endless_batches(self, texts: list[str], max_tokens: int) -> Iterator[PairedBatch]:
        while True:  # distillation cycles through the calibration text, in order
            before = None
            for before in self.batches(texts, max_tokens):
                yield before
            if before is None:  # not one paired token: cycling would never end
                raise _no_pairs()

    def fit(self) -> None:
        """Calibrate and fit P_in / P_out for every mapped module, and the head's input map."""
        request, plan = self.prepared.request, self.prepared.plan
        role_names = [m.target_role for m in plan.modules]
        layer_pairs = [(t, s[0]) for t, s in plan.layer_map.rows()]
        points = capture_points(role_names, layer_pairs, head=True)
        with self.reporter.progress("Calibrating (paired tokens)", request.calibration_tokens) as advance:
            stats = collect_statistics(
                self.teacher.base_model, self.student.base_model, plan.source_arch, plan.target_arch, points,
                self.batches(self.fit_texts, request.calibration_tokens), on_batch=lambda tokens: advance(amount=tokens),
            )
        tokens = stats[(None, LAST_HIDDEN)].n
        if tokens == 0:
            raise _no_pairs()
        rows = []
        options = {"ridge": request.ridge}
        for target_layer, source_layer in layer_pairs:
            for role in role_names:
                input_stats = stats[(target_layer, input_point(role))]
                p_in = student_to_teacher(self.method, input_stats, **options)
                p_out = teacher_to_student(self.method, stats[(target_layer, output_point(role))], **options)
                self.maps[(target_layer, role)] = (p_in.matrix, p_out.matrix)
                rows.append({"target_layer": target_layer, "source_layer": source_layer, "role": role,
                             "input_fit": round(p_in.score, 4), "output_fit": round(p_out.score, 4), "score": p_in.score_name,
                             "identity_r2": identity_r2(input_stats), "linear_r2": round(r_squared(input_stats, lstsq_fit(input_stats).matrix), 4)})
        head = student_to_teacher(self.method, stats[(None, LAST_HIDDEN)], **options)
        self.head_map = head.matrix
        self.report |= {
            "calibration": {"source": self.prepared.calibration.pinned if self.prepared.calibration else "built-in multilingual sample",
                            "tokens": tokens},
            "modules": rows,
            "head_input_fit": round(head.score, 4),
            "score": head.score_name,
        }

    def adjust_module(self, target_layer: int, role: str, module: AdapterModule) -> AdapterModule:
        p_in, p_out = self.maps[(target_layer, role)]
        return fold_module(module, p_in, p_out)

    def adjust_head(self, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return fold_head(params, self.head_map)

    def evaluate_and_refine(self, tensors: dict[str, torch.Tensor], peft_config) -> dict[str, torch.Tensor]:
        """Agreement on held-out text, and with ``refine`` a short distillation; returns the final tensors."""
        request, plan = self.prepared.request, self.prepared.plan
        head_map = self.head_map if self.head_map is not None else torch.eye(plan.target_dims.hidden, dtype=torch.float64)
        teacher = PeftModel.from_pretrained(self.teacher, self.prepared.adapter_source.path).eval()
        student = get_peft_model(self.student, dataclasses.replace(peft_config, inference_mode=False))
        set_peft_model_state_dict(student, tensors)
        compare = dict(task_type=self.task_type, has_head=self.has_head, head_map=head_map)

        def held_out_agreement() -> dict:
            result = agreement(teacher, student, self.batches(self.held_texts, held_out_tokens(request.calibration_tokens)), **compare)
            return result | {"held_out_tokens": result["tokens"]}

        self.report["agreement"] = held_out_agreement()
        if not plan.alignment.refine:
            return tensors
        good_enough = plan.alignment.refine_below
        if good_enough is not None and self.report["agreement"]["value"] >= good_enough:
            self.report["distill"] = {"skipped": f"held-out agreement {self.report['agreement']['value']:.4f} is already at least {good_enough}"}
            return tensors
        self.report["agreement_before_distill"] = self.report.pop("agreement")
        with self.reporter.progress("Distilling", request.distill_steps) as advance:
            final_loss = distill(teacher, student, self.endless_batches(self.fit_texts, request.calibration_tokens),
                                 steps=request.distill_steps, lr=request.lr, seed=request.seed,
                                 on_step=lambda loss: advance(f"loss {loss:.4f}"), **compare)
        self.report["distill"] = {"steps": request.distill_steps, "lr": request.lr, "seed": request.seed, "final_loss": round(final_loss, 6)}
        self.report["agreement"] = held_out_agreement()
        trained = get_peft_model_state_dict(student)
        return {key: trained[key].detach().clone().contiguous() if key in trained else value for key, value in tensors.items()}


def _no_pairs() -> CalibrationDataError:
    return CalibrationDataError(
        "The calibration text gave no token that both tokenizers cut at the same characters, so nothing can be fitted.",
        "Give --calibration-data with ordinary sentences in a language both models read.",
    )


def has_tokenizer_files(folder) -> bool:
    names = ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model")
    return any((folder / name).is_file() for name in names) or any(folder.glob("*.model"))


def identity_r2(stats) -> float | None:
    """Activation evidence of compatibility: the share of the teacher's input variance that the
    student's same-index dimensions explain as they are (None across widths). Beside the best
    linear map's share (``linear_r2``), it says whether a copy would have read the right inputs."""
    if stats.ss.shape != stats.tt.shape:
        return None
    return round(r_squared(stats, torch.eye(stats.ss.shape[0], dtype=torch.float64)), 4)
