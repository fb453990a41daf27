"""One alignment run: load both base models and tokenizers, calibrate, fit the maps, and later
evaluate (and optionally distill) the converted adapter. The only part of alignment that reads
weights; the math lives in stats.py, correlation.py, lstsq.py, fold.py and refine.py."""

from __future__ import annotations

import dataclasses
import os.path
import re
from dataclasses import dataclass

import torch
from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from transformers import AutoTokenizer

from collections.abc import Iterator

from ..calibration import MAX_LENGTH, ChatPrompt, PairedBatch, load_texts, paired_batches
from ..errors import CalibrationDataError, UnsupportedError
from ..summary import (Agreement, AlignedModule, AlignmentMemory, AlignmentSummary, CalibrationSummary, Distillation,
                       GenerationFidelity)
from ..tasks import LABELLED, WRITES_TEXT, model_class
from ..transform import AdapterModule, fuse_aligned, read_module, source_part
from .budget import budget_bytes, point_shapes, schedule
from .capture import LAST_HIDDEN, collect_statistics, input_point, output_point
from .fit import fit_point
from .fold import fold_head, fold_input, fold_output
from . import answer_ends, answer_training, generative
from .fresh import fresh_module
from .placement import available_memory, free_bytes, load_dtype, resolve_device, training_autocast
from .refine import agreement, distill

HELD_OUT_SHARE = 0.2  # of the calibration texts, kept apart to measure agreement
# tokens of prompt and answer one output-distillation example holds (the models' positions permitting):
# a longer prompt loses its beginning, never its end (generative.keep_last)
ANSWER_WINDOW = 1024
MAX_HELD_OUT_PROMPTS = 32  # output-space fidelity: enough to see a change, few enough to generate twice
PROBE_PROMPTS = 32  # the teacher's first answers (one generation batch), read to see how its answers end
# prompts answered at once (left-padded, with the KV cache). Measured on 2 CPU cores: 16 took a third longer; 64 took
# a quarter less on ner's short answers but a third more on people's, where one long row holds the whole batch
GENERATION_BATCH = 32
# the teacher's answer budget when --max-new-tokens is not given: ANSWER_BUDGET tokens (a quarter of the window at
# most), raised up to LONGEST_ANSWER_BUDGET (half the window at most) when most probe answers run past it and end within that
ANSWER_BUDGET, LONGEST_ANSWER_BUDGET = 64, 256
MIN_PROMPTS = 4  # output-space distillation: at least this many prompts (one held out)
MIN_PAIRED_TOKENS = 64  # a fitted map needs at least this many paired tokens (or all that --calibration-tokens asks)
EVAL_EVERY, PATIENCE = 10, 3  # a check every 10 steps; end after 3 without a gain (answer_training.distill_on_answers says how)
GENERATION_AGREEMENT = "token F1 of greedy generations vs the teacher's"
MIXED_PRECISION = True  # output distillation's steps and generations autocast where the device is fast at it (placement.training_autocast)


def held_out_tokens(calibration_tokens: int) -> int:
    return max(512, calibration_tokens // 2)


class AlignmentSession:
    """Alignment's own inputs, named: the plan, the two bases (with their weights), the adapter as
    read and as parsed, the calibration source, the request's options, and where progress goes."""

    def __init__(self, plan, *, source, target, adapter, parsed, calibration, options, reporter):
        self.plan, self.source, self.target, self.adapter, self.parsed = plan, source, target, adapter, parsed
        self.calibration, self.options, self.reporter = calibration, options, reporter
        request = options
        self.device = resolve_device(request.device)
        # as asked, else float32 on the CPU where it fits, else the checkpoint's own dtype (load_dtype says why);
        # accelerate's device map places (and offloads) big models
        dtype, self.dtype_reason = load_dtype(request.dtype, self.device, [source.source.path, target.source.path],
                                              [source.config, target.config], available=available_memory())
        self.method = plan.alignment.method
        self.task_type = plan.task_type
        self.has_head = bool(plan.heads)
        self.num_labels = parsed.num_labels
        # a model that writes text is distilled on what the teacher writes: the calibration texts are its prompts
        self.generative = plan.alignment.refine and self.task_type in WRITES_TEXT
        texts = list(calibration.texts) if calibration else load_texts()  # a file's texts were read in prepare
        if self.generative and len(texts) < MIN_PROMPTS:
            raise CalibrationDataError(
                f"Output-space distillation needs at least {MIN_PROMPTS} prompts (one held out to measure fidelity), and the "
                f"calibration data holds {len(texts)}.", "Give --calibration-data with more of the task's prompts, one per line "
                "(.txt) or one {\"prompt\": ...} per line (.jsonl).")
        held = max(1, int(len(texts) * HELD_OUT_SHARE)) if len(texts) > 1 else 0
        if self.generative:
            held = min(held, MAX_HELD_OUT_PROMPTS)
        self.fit_texts, self.held_texts = texts[: len(texts) - held], texts[len(texts) - held :] or texts
        if self.generative and calibration is None:
            reporter.stage("No task prompts given (--calibration-data): the teacher answers the built-in multilingual sample "
                           "instead, which says little about your task")
        auto_class = model_class(self.task_type) if plan.source_prefix or self.generative else model_class(None)
        kwargs = {"dtype": dtype, "device_map": "auto" if self.device == "auto" else self.device}
        reporter.stage("Loading source and target base models" + (" for calibration" if not self.generative else "")
                       + f" ({self.dtype_reason})")
        if self.num_labels and self.task_type in LABELLED:
            # the base's own head (if any) is replaced by the adapter's, whatever its size
            kwargs |= {"num_labels": self.num_labels, "ignore_mismatched_sizes": True}
        loaded = {}
        for side, files in (("source base", source.source), ("target base", target.source)):
            try:
                if not has_tokenizer_files(files.path):  # transformers would build an empty one
                    raise OSError("no tokenizer files")
                tokenizer = AutoTokenizer.from_pretrained(files.path)
            except (OSError, ValueError, TypeError) as err:
                raise UnsupportedError(
                    f"Alignment runs both models on calibration text, but the {side} {files.reference!r} has no usable tokenizer ({type(err).__name__}).",
                    "Save the model's tokenizer into its folder (tokenizer.save_pretrained), or convert between models of equal widths.",
                ) from None
            try:
                model = auto_class.from_pretrained(files.path, **kwargs).eval()
            except (OSError, ValueError) as err:
                raise UnsupportedError(
                    f"Alignment needs the weights of the {side} {files.reference!r}, which could not be loaded ({err}).",
                    "Point it at a complete model folder or Hub repo.",
                ) from None
            loaded[side] = (tokenizer, model)
        (self.teacher_tokenizer, self.teacher), (self.student_tokenizer, self.student) = loaded["source base"], loaded["target base"]
        # a text never runs past either model's positions (small models may have 64)
        positions = [n for model in (self.teacher, self.student) if (n := max_positions(model.config))]
        self.max_length = min([MAX_LENGTH] + positions)
        self.answer_window = min([ANSWER_WINDOW] + positions)
        self.dtypes = {"source": _dtype_name(self.teacher.dtype), "target": _dtype_name(self.student.dtype)}

    def batches(self, texts: list[str], max_tokens: int) -> Iterator[PairedBatch]:
        """Batches are made as they are used, never all held: memory does not grow with tokens."""
        return paired_batches(texts, self.teacher_tokenizer, self.student_tokenizer, max_tokens=max_tokens, max_length=self.max_length)

    def endless_batches(self, texts: list[str], max_tokens: int) -> Iterator[PairedBatch]:
        while True:  # distillation cycles through the calibration text, in order
            before = None
            for before in self.batches(texts, max_tokens):
                yield before
            if before is None:  # not one paired token: cycling would never end
                raise _no_pairs()

    def fit(self) -> FittedAlignment:
        """Calibrate, fit P_in / P_out for every mapped module and fold them into the adapter, and
        fit the head's input map: statistics -> fitted maps -> folded modules, pass by pass.

        The capture points are grouped into passes that fit the memory budget (align/budget.py;
        small models: one pass, float64 statistics). Each pass runs the calibration text through
        both models once for its points; then each point is fitted, folded into the modules that
        read or write it, and its statistics freed. Only the folded modules (r x d) and the head's
        map are kept, never a d x d map."""
        request, plan = self.options, self.plan
        role_names = list(plan.aligned_roles)  # plain roles: fused projections are split, aligned, and fused again
        layer_pairs = [(t, s[0]) for t, s in plan.layer_map.rows()]
        method = self.method
        shapes = point_shapes(role_names, layer_pairs, plan.source_dims, plan.target_dims)
        activation = max(self.teacher.dtype.itemsize, self.student.dtype.itemsize)
        planned = schedule(shapes, method=method, budget=budget_bytes(request.memory_budget), rank=self._rank(), activation_bytes=activation)
        dtype = torch.float64 if planned.element == 8 else torch.float32
        full = {shape.point: shape.full(method) for shape in shapes}
        config = self.adapter.config
        folded = {(t, role): module for t, s in layer_pairs for role in role_names
                  if (module := source_part(plan, self.parsed, config, s, role)) is not None}
        fits: dict[tuple[int | None, str], dict] = {}
        tokens = None
        with self.reporter.progress("Calibrating (paired tokens)", request.calibration_tokens * len(planned.passes)) as advance:
            for group in planned.passes:
                stats = collect_statistics(
                    self.teacher.base_model, self.student.base_model, plan.source_arch, plan.target_arch, [g.point for g in group],
                    self.batches(self.fit_texts, request.calibration_tokens), on_batch=lambda tokens: advance(amount=tokens),
                    dtype=dtype, full=lambda point: full[point], dims=(plan.source_dims, plan.target_dims),
                )
                if tokens is None:
                    tokens = next(iter(stats.values())).n if stats else 0
                    if tokens == 0:
                        raise _no_pairs()
                    needed = min(MIN_PAIRED_TOKENS, request.calibration_tokens)
                    if tokens < needed:
                        raise CalibrationDataError(
                            f"The calibration text gave {tokens} paired tokens, and fitting a map needs at least {needed}.",
                            "Give --calibration-data with more text in a language both models read (a few hundred sentences).",
                        )
                for shape in group:
                    key = (shape.point.student_layer, shape.point.point)
                    fits[key] = fit_point(stats.pop(key), shape.kind, method, ridge=request.ridge)
                    if shape.kind != "head":  # fold now, so the d x d map can go with the statistics
                        folded = fold_point(folded, shape, fits[key].pop("map"), role_names)
                del stats
        head_map = fits[(None, LAST_HIDDEN)].pop("map").cpu() if (None, LAST_HIDDEN) in fits else None
        heads = self.parsed.heads if head_map is None else {name: fold_head(params, head_map) for name, params in self.parsed.heads.items()}
        return FittedAlignment(fuse_aligned(plan, folded), head_map, heads, self._fit_report(fits, layer_pairs, role_names, tokens, planned))

    def _fit_report(self, fits, layer_pairs, role_names, tokens, planned) -> AlignmentSummary:
        rows = []
        for target_layer, source_layer in layer_pairs:
            for role in role_names:
                p_in, p_out = fits[(target_layer, input_point(role))], fits[(target_layer, output_point(role))]
                rows.append(AlignedModule(target_layer=target_layer, source_layer=source_layer, role=role,
                                          input_fit=round(p_in["score"], 4), output_fit=round(p_out["score"], 4), score=p_in["score_name"],
                                          identity_r2=p_in["identity_r2"], linear_r2=round(p_in["linear_r2"], 4)))
        head = fits[(None, LAST_HIDDEN)]
        calibration = self.calibration
        return dataclasses.replace(
            self._planned(),
            calibration=CalibrationSummary(source=calibration.pinned if calibration else "built-in multilingual sample", tokens=tokens,
                                           dataset=calibration.hub_dataset if calibration else None),
            modules=tuple(rows),
            head_input_fit=round(head["score"], 4),
            score=head["score_name"],
            memory=AlignmentMemory(passes=len(planned.passes), statistics_dtype=planned.dtype_name, predicted_alignment_bytes=planned.peak,
                                   budget_bytes=planned.budget),
        )

    def fresh(self) -> FittedAlignment:
        """A new adapter on the target (align/fresh.py): the source's kind, rank and scaling on each
        mapped module, initialised as peft does. Reads no source tensor and runs no calibration.
        Several layer stacks (an encoder-decoder): each by its own plan, keyed ``<stack>/<role>``."""
        generator = torch.Generator().manual_seed(self.options.seed)
        modules = {}
        for plan in self.plan.stacks or (self.plan,):
            parsed = self.parsed.stacks[plan.stack] if plan.stack else self.parsed
            sources = self._source_modules(plan, parsed, [(t, s) for t, sources in plan.layer_map.rows() for s in sources[:1]],
                                           [r for m in plan.modules for r in m.source_roles])
            for target_layer, _ in plan.layer_map.rows():
                for mapping in plan.modules:
                    like = next((sources[(target_layer, r)] for r in mapping.source_roles if (target_layer, r) in sources), None)
                    if like is None:
                        continue
                    target = self.student.get_submodule(plan.module_path(mapping.target_role, target_layer, target=True))
                    role = f"{plan.stack}/{mapping.target_role}" if plan.stack else mapping.target_role
                    modules[(target_layer, role)] = fresh_module(like, target, generator=generator)
        return FittedAlignment(modules, None, self.parsed.heads, self._planned())

    def _rank(self) -> int:
        ranks = [t.shape[0] for key, t in self.adapter.tensors.items() if "lora_A" in key and t.ndim == 2]
        return max(ranks, default=1)

    def _source_modules(self, plan, parsed, layer_pairs, role_names) -> dict[tuple[int, str], AdapterModule]:
        """The teacher's modules each mapped (target layer, role) starts from (alignment maps one
        source layer per target layer, copying roles: plan._check_alignable)."""
        config = self.adapter.config
        modules = {}
        for target_layer, source_layer in layer_pairs:
            for role in role_names:
                params = parsed.layers.get((source_layer, role))
                if params is not None:
                    modules[(target_layer, role)] = read_module(params, config, plan.module_path(role, source_layer, target=False))
        return modules

    def refine(self, tensors: dict[str, torch.Tensor], peft_config, fitted: FittedAlignment | None) -> tuple[dict[str, torch.Tensor], dict]:
        """Agreement on held-out text, and with ``refine`` a short distillation: the final tensors
        and the evaluation (AlignmentSummary's agreement, agreement_before_distill and distill, by name).
        The teacher's adapter comes from memory, never re-read from disk."""
        request, plan = self.options, self.plan
        teacher = get_peft_model(self.teacher, dataclasses.replace(self.adapter.config, inference_mode=True))
        set_peft_model_state_dict(teacher, self.adapter.tensors)
        teacher.eval()
        student = get_peft_model(self.student, dataclasses.replace(peft_config, inference_mode=False))
        set_peft_model_state_dict(student, tensors)
        if self.generative:
            # a fresh LoRA starts at B = 0: the target base itself, so its start need not be measured again
            lora_b = [t for key, t in tensors.items() if "lora_B" in key]
            evaluation = self._refine_on_answers(teacher, student, starts_at_base=bool(lora_b) and not any(t.any() for t in lora_b))
            return _trained(student, tensors), evaluation
        head_map = fitted.head_map if fitted is not None and fitted.head_map is not None else torch.eye(plan.target_dims.hidden, dtype=torch.float64)
        compare = dict(task_type=self.task_type, has_head=self.has_head, head_map=head_map)

        def held_out_agreement() -> Agreement:
            result = agreement(teacher, student, self.batches(self.held_texts, held_out_tokens(request.calibration_tokens)), **compare)
            return Agreement(metric=result["metric"], value=result["value"], held_out_tokens=result["tokens"])

        before = held_out_agreement()
        if not plan.alignment.refine:
            return tensors, {"agreement": before}
        good_enough = plan.alignment.refine_below
        if good_enough is not None and before.value >= good_enough:
            return tensors, {"agreement": before, "distill": Distillation(skipped=f"held-out agreement {before.value:.4f} is already at least {good_enough}")}
        with self.reporter.progress("Distilling", request.distill_steps) as advance:
            final_loss = distill(teacher, student, self.endless_batches(self.fit_texts, request.calibration_tokens),
                                 steps=request.distill_steps, lr=request.lr, seed=request.seed,
                                 on_step=lambda loss: advance(f"loss {loss:.4f}"), **compare)
        report = {"agreement_before_distill": before,
                  "distill": Distillation(steps=request.distill_steps, lr=request.lr, seed=request.seed, final_loss=round(final_loss, 6)),
                  "agreement": held_out_agreement()}
        return _trained(student, tensors), report

    def _say_cut_prompts(self, prompts: list[str], max_new_tokens: int) -> int:
        """How many prompts are longer than the teacher's window leaves them (their beginnings are cut), said when any are."""
        limit = generative.prompt_tokens(self.answer_window, max_new_tokens)
        texts = [generative.prompt_text(p, self.teacher_tokenizer, side="source base") for p in prompts]
        cut = sum(len(ids) > limit for ids in self.teacher_tokenizer(texts)["input_ids"])
        if cut:
            self.reporter.stage(f"{cut} of {len(prompts)} prompts are longer than {limit} tokens: the teacher reads their last "
                                f"{limit} (a prompt's end, where the answer follows, is kept)")
        return cut

    def _autocast(self, model) -> torch.dtype | None:
        """The dtype ``model``'s steps and generations autocast to (placement.training_autocast), or
        None: a ``--dtype`` given is what everything computes in (the same numbers on every machine)."""
        return training_autocast(model) if MIXED_PRECISION and not self.options.dtype else None

    def _fast_dtypes(self, **models) -> dict[str, torch.dtype | None]:
        """The dtype each model's frozen weights are copied to once (generative.FrozenCopies), for its
        generations and training steps under autocast (``_autocast``), only where the models'
        copies together fit in half the memory free on each device; else None (generations then run
        in the weights' dtype: without copies, autocast casts every weight on every decoding step)."""
        dtypes = {name: self._autocast(model) for name, model in models.items()}
        need: dict[torch.device, int] = {}
        for name, model in models.items():
            for device, size in (generative.FrozenCopies.extra_bytes(model, dtypes[name]) if dtypes[name] else {}).items():
                need[device] = need.get(device, 0) + size
        fits = all((free := free_bytes(device)) is None or 2 * size <= free for device, size in need.items())
        return {name: dtype if fits else None for name, dtype in dtypes.items()}

    def _refine_on_answers(self, teacher, student, *, starts_at_base: bool) -> dict:
        """Output-space distillation (align/generative.py): the teacher answers the prompts once,
        the student's adapter learns its answers until held-out fidelity stops improving; the
        evaluation (agreement, distill, fidelity, calibration) by name."""
        request = self.options
        # the teacher answers a training prompt only when distillation reaches it: an early stop leaves the rest unwritten
        train_prompts = self.fit_texts[: max(1, request.distill_steps * request.batch_size)]
        # chat messages both models can read, checked before anything runs (the teacher's side by _say_cut_prompts)
        for chat in (p for p in train_prompts + self.held_texts if isinstance(p, ChatPrompt)):
            generative.prompt_text(chat, self.student_tokenizer, side="target base")
        stops, restart = tuple(request.stop), restart_marker(train_prompts + self.held_texts)
        budget = request.max_new_tokens or min(ANSWER_BUDGET, self.answer_window // 4)
        options = dict(max_new_tokens=budget, max_length=self.answer_window)

        # generation autocasts only where the frozen weights' copies fit (each decoding step would cast them again)
        fast = self._fast_dtypes(teacher=teacher, student=student)
        computed = lambda dtype, model: f"{_dtype_name(dtype)} autocast" if dtype else _dtype_name(model.dtype)  # noqa: E731
        in_dtype = lambda dtype: f" ({_dtype_name(dtype)} autocast)" if dtype else ""  # noqa: E731 (for a progress label)

        def write(prompts: list[str], advance=lambda n: None, *, learnt: bool = True, tokens: int | None = None,
                  as_written: bool = False) -> list[generative.Example]:
            """The teacher's answers (at most ``tokens``, else the budget), each with the prompt as the
            teacher read it, cut to their first lines where that rule holds (not ``as_written``: the
            probe's, which decide it); those the student learns from (``learnt``) with the teacher's
            likelihood when the span term is on."""
            texts = [generative.prompt_text(p, self.teacher_tokenizer, side="source base") for p in prompts]
            with generative.merged_adapter(teacher), generative.computing_in(teacher, fast["teacher"]):
                answers = generative.generate(teacher, self.teacher_tokenizer, texts, stops=stops, restarts=restart,
                                              **dict(options, max_new_tokens=tokens or options["max_new_tokens"]),
                                              batch_size=GENERATION_BATCH, on_batch=advance,
                                              likelihood=learnt and request.span_weight > 0)
            return [answer_ends.first_line(a) for a in answers] if one_line and not as_written else answers

        def for_student(prompts: list[str], answers: list[generative.Example]) -> list[generative.Example]:
            """The answers with each prompt as the target reads it (chat messages: in its own chat template)."""
            return [dataclasses.replace(a, prompt=generative.prompt_text(p, self.student_tokenizer, side="target base"))
                    for p, a in zip(prompts, answers)]

        one_line = None
        train = answer_training.TeacherAnswers(train_prompts, lambda prompts: for_student(prompts, write(prompts)), seed=request.seed,
                                          chunk=GENERATION_BATCH, group=request.batch_size)
        probe = train.first(PROBE_PROMPTS)  # the first prompts training reads: their answers serve it too
        teacher_writing = "Teacher writing answers ({})" + in_dtype(fast["teacher"])

        def how_they_end(answers: list[generative.Example]) -> tuple[str | None, list[bool], list[generative.Example]]:
            """Why the answers are their first lines (or None), which the budget cut short, and the answers as they will be learnt."""
            effect = lambda: answer_ends.line_effect(teacher, self.teacher_tokenizer, answers, max_length=self.answer_window)  # noqa: E731
            rule = None if stops else answer_ends.one_line_answers(answers, effect=effect)
            cut_short = answer_ends.cut_by_budget(answers, first_lines=rule is not None)
            return rule, cut_short, [answer_ends.first_line(a) for a in answers] if rule else answers

        with self.reporter.progress(teacher_writing.format("probe prompts"), len(probe)) as advance:
            probed = write(probe, lambda n: advance(amount=n), as_written=True)  # how do its answers end? measured on the first batch
        one_line, cut_short, probed = how_they_end(probed)
        too_long, first_budget, fitted, cut_again = sum(cut_short), budget, None, None
        longest = min(LONGEST_ANSWER_BUDGET, self.answer_window // 2)
        # only for the user's prompts (the built-in text has no answers to fit) and a budget not given
        raise_to = (longest if request.max_new_tokens is None and self.calibration is not None and probed and 2 * too_long >= len(probed)
                    and longest > budget else None)
        if raise_to:  # answers longer than the default budget: do most end within the most it may rise to?
            # (its prompts keep window - raise_to tokens, the rest window - budget: the same unless a prompt is that long)
            with self.reporter.progress(teacher_writing.format(f"probe prompts again, up to {raise_to} tokens"), len(probe)) as advance:
                rule_again, cut_again, again = how_they_end(write(probe, lambda n: advance(amount=n), tokens=raise_to, as_written=True))
            if 2 * sum(cut_again) < len(again):
                count = lambda text: len(self.teacher_tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
                one_line, probed = rule_again, again
                # a one-line rule seen only in the longer answers may leave first lines within the first budget
                fitted = max(first_budget, answer_ends.fitting_budget(again, count, cap=raise_to))
        if one_line:  # the rest stop at their first line break, which saves most of the generation
            stops = ("\n",)
        budget = options["max_new_tokens"] = fitted or budget
        answer_end = one_line or "EOS" + "".join(f", {s!r}" for s in stops + restart) + f" or {budget} tokens"
        # why the budget rose, or that the answers were cut: the run and the card say so
        note = answer_ends.budget_note(cut_short, cut_again, first_budget=first_budget, budget=budget, raise_to=raise_to,
                                       adopted=fitted is not None)
        if note:
            answer_end += f" ({note})"
            self.reporter.stage(note[0].upper() + note[1:])
        cut = self._say_cut_prompts(train_prompts + self.held_texts, budget)
        train.add(probe, for_student(probe, probed))
        with self.reporter.progress(teacher_writing.format("held-out prompts"), len(self.held_texts)) as advance:
            held = [a for a in for_student(self.held_texts, write(self.held_texts, lambda n: advance(amount=n), learnt=False))
                    if a.answer.strip()]
        if not train.written or not held:
            raise CalibrationDataError(
                f"The teacher wrote no answer to {train.empty + len(self.held_texts) - len(held)} of {len(probe) + len(self.held_texts)} "
                "prompts, which leaves nothing to distil.", "Give prompts the adapter answers (its task's inputs, without the "
                "answers), or raise --max-new-tokens.")
        tokenizer, length = self.student_tokenizer, self.answer_window
        with student.disable_adapter():  # the same model, its adapter off: the target base
            base_bpb = generative.bits_per_byte(student, tokenizer, held, max_length=length)
        start_bpb = base_bpb if starts_at_base else generative.bits_per_byte(student, tokenizer, held, max_length=length)
        # the steps autocast even without the copies: measured 0.67 s a step against 1.1 s in float32
        run, autocast = None, self._autocast(student)
        if request.distill_steps > 0:
            with self.reporter.progress("Distilling on the teacher's answers" + in_dtype(autocast), request.distill_steps) as advance:
                run = answer_training.distill_on_answers(
                    student, tokenizer, train, held, steps=request.distill_steps, lr=request.lr, seed=request.seed,
                    batch_size=request.batch_size, max_length=length, eval_every=EVAL_EVERY, patience=PATIENCE, autocast=autocast,
                    start_bpb=start_bpb, cast_once=fast["student"] is not None, span_weight=request.span_weight,
                    on_step=lambda loss: advance(f"loss {loss:.4f}, {len(train.written)} teacher answers"))
        final_bpb = min(v for _, v in run.held_out_bpb) if run else start_bpb
        held_prompts = [a.prompt for a in held]
        # no held-out answer is scored past the teacher's longest: generation stops a little after it
        answer_tokens = [len(tokenizer(a.answer, add_special_tokens=False)["input_ids"]) for a in held]
        gen = dict(stops=stops, restarts=restart, max_new_tokens=min(budget, max(answer_tokens) + 8), max_length=length)
        with self.reporter.progress("Measuring held-out generations" + in_dtype(fast["student"]), 2 * len(held)) as advance:
            with student.disable_adapter(), generative.computing_in(student, fast["student"]):
                written_base = generative.generate(student, tokenizer, held_prompts, **gen, batch_size=GENERATION_BATCH,
                                                   on_batch=lambda n: advance(amount=n))
            with generative.merged_adapter(student), generative.computing_in(student, fast["student"]):
                written = generative.generate(student, tokenizer, held_prompts, **gen, batch_size=GENERATION_BATCH,
                                              on_batch=lambda n: advance(amount=n))
        converted, base = generative.generation_agreement(written, held), generative.generation_agreement(written_base, held)
        calibration = self.calibration
        source = calibration.pinned if calibration else "built-in multilingual sample (no task prompts given)"
        if any(isinstance(p, ChatPrompt) for p in train_prompts + self.held_texts):
            source += "; chat messages, each model reading them in its own chat template"
        fidelity = GenerationFidelity(
            prompts=source, train_prompts=len(train.written), held_out_prompts=len(held), max_new_tokens=budget, stop=stops,
            answer_end=answer_end, prompts_cut=cut,
            computed_in={"teacher answers": computed(fast["teacher"], teacher),
                         "training steps": computed(autocast, student) if run else "none (--distill-steps 0)",
                         "held-out generations": computed(fast["student"], student), "bits per byte": computed(None, student)},
            bits_per_byte={"target base": round(base_bpb, 4), "start": round(start_bpb, 4), "converted": round(final_bpb, 4)},
            token_f1={"target base": round(base["token_f1"], 4), "converted": round(converted["token_f1"], 4)},
            exact_match={"target base": round(base["exact_match"], 4), "converted": round(converted["exact_match"], 4)},
            held_out_curve=run.held_out_bpb if run else ((0, round(start_bpb, 4)),), unseen_curve=run.unseen_bpb if run else ())
        report = {"agreement": Agreement(metric=GENERATION_AGREEMENT, value=round(converted["token_f1"], 4), held_out_tokens=sum(answer_tokens)),
                  "fidelity": fidelity,
                  "calibration": CalibrationSummary(source=source, tokens=0, prompts=len(train.written) + train.empty + len(self.held_texts),
                                                    dataset=calibration.hub_dataset if calibration else None)}
        if run is not None:
            report["distill"] = Distillation(steps=run.steps, lr=request.lr, seed=request.seed, final_loss=round(run.final_loss, 6),
                                             max_steps=request.distill_steps, best_step=run.best_step, cooldown_from=run.cooldown_from,
                                             span_weight=request.span_weight or None)
        else:
            report["distill"] = Distillation(skipped="--distill-steps 0")
        return report

    def report(self, fitted: FittedAlignment | None, evaluation: dict) -> AlignmentSummary:
        """The alignment report of the run: what was asked, where it ran, the fit, the evaluation
        (``refine``'s: agreement, and with distillation agreement_before_distill and distill)."""
        return dataclasses.replace(fitted.report if fitted is not None else self._planned(), **evaluation)

    def _planned(self) -> AlignmentSummary:
        plan = self.plan
        return AlignmentSummary(method=self.method or "direct", reason=plan.alignment.reason, device=self.device, dtypes=self.dtypes)


def _trained(student, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The student's adapter tensors back on the CPU, in the converted adapter's own dtype (peft may
    train adapters in float32 on a bf16 base), under the keys of ``tensors``."""
    trained = get_peft_model_state_dict(student)
    return {key: trained[key].detach().to("cpu", value.dtype).contiguous() if key in trained else value for key, value in tensors.items()}


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def restart_marker(prompts: list[str]) -> tuple[str, ...]:
    """The prompts' common opening ("Sentence:", "### Question:"), when they share one of at least
    three visible characters: a teacher that writes it again has finished its answer and begun a
    new example, so generation stops there and the answer ends before it."""
    prefix = os.path.commonprefix(prompts) if len(prompts) > 1 else ""
    if prefix and prefix[-1].isalnum() and any(len(p) > len(prefix) and p[len(prefix)].isalnum() for p in prompts):
        prefix = re.sub(r"\w+$", "", prefix)  # a word the prompts only begin alike is not part of it
    prefix = prefix.strip()
    return (prefix,) if len(prefix) >= 3 else ()


@dataclass(frozen=True)
class FittedAlignment:
    """What calibration and fitting hand forward: the folded module per (target layer, role), the
    head's input map (student -> teacher, None without a head point) and the fit's report."""

    modules: dict[tuple[int, str], AdapterModule]
    head_map: torch.Tensor | None
    heads: dict[str, dict[str, torch.Tensor]]  # the adapter's task heads read through the head map (as they are without one)
    report: AlignmentSummary  # the plan, where it ran, and the fits; no evaluation yet


def fold_point(folded: dict[tuple[int, str], AdapterModule], shape, fitted, role_names) -> dict[tuple[int, str], AdapterModule]:
    """``folded`` with one capture point's map folded into the modules that read (P_in) or write (P_out) it."""
    layer, point = shape.point.student_layer, shape.point.point
    result = dict(folded)
    for role in role_names:
        key = (layer, role)
        if key not in result:
            continue
        if shape.kind == "in" and input_point(role) == point:
            result[key] = fold_input(result[key], fitted)
        elif shape.kind == "out" and output_point(role) == point:
            result[key] = fold_output(result[key], fitted)
    return result


def _no_pairs() -> CalibrationDataError:
    return CalibrationDataError(
        "The calibration text gave no token that both tokenizers cut at the same characters, so nothing can be fitted.",
        "Give --calibration-data with ordinary sentences in a language both models read.",
    )


def has_tokenizer_files(folder) -> bool:
    names = ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model")
    return any((folder / name).is_file() for name in names) or any(folder.glob("*.model"))



def max_positions(config) -> int | None:
    """The longest input a model's position embeddings take (None: no such limit in its config)."""
    for key in ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None
