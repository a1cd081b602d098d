"""Drop-in guarantees on both architectures (docs/guarantees.md): concurrent calls on one patched model, lean
batches, outputs in prompt coordinates (logits, log-likelihoods, labels=, logits_to_keep), per-call reports, the
training-mode warning and state hygiene."""

from __future__ import annotations

import copy
import dataclasses
import threading
import warnings

import pytest
import torch
from conftest import clip, computed

import stop_hf
from stop_hf import StopConfig, compat
from stop_hf.pruners import PRUNERS
from stop_hf.testing import build_processor, masked_reference_logits, tiny_checkpoint
from stop_hf.testing.reference import identical, masked_reference_output

ARCHS = ("llava_onevision", "qwen2_5_vl")
PLACEHOLDER = {"llava_onevision": "<video>", "qwen2_5_vl": "<|vision_start|><|video_pad|><|vision_end|>"}


def _method_cases() -> list[tuple[str, bool]]:
    """Every registered method (except the identity), with and without sink where the config allows it."""
    cases = []
    for method in sorted(PRUNERS):
        if method == "none":
            continue
        for sink in (False, True):
            try:
                StopConfig(method=method, retention=0.25, sink=sink)
            except ValueError:
                continue
            cases.append((method, sink))
    return cases


METHOD_CASES = _method_cases()


def config(**fields) -> dict:
    """A config dict; FastVID-style global features use the frame mean (the tiny LLaVA-OV ships no SigLIP head)."""
    if "global_feature" in {f.name for f in dataclasses.fields(StopConfig)}:
        fields.setdefault("global_feature", "mean")
    return fields


def prompt(arch: str, videos: int = 1, question: str = "what happens in the video ?") -> str:
    return f"<|im_start|>user\n{PLACEHOLDER[arch] * videos}{question}<|im_end|>\n<|im_start|>assistant\n"


def frames(arch: str, count: int, seed: int = 0) -> torch.Tensor:
    # Qwen2.5-VL: 56x84 frames are resized to the processor's minimum (grid 20x28 patches per temporal patch)
    return (
        clip(count, seed=seed) if arch == "llava_onevision" else clip(count, seed=seed, height=112, width=168)
    )


def make_inputs(arch: str, processor, texts: list[str], videos: list[torch.Tensor]) -> dict:
    kwargs = {}
    if arch == "qwen2_5_vl" and videos:
        kwargs = {
            "video_metadata": [
                {"total_num_frames": len(v), "fps": 2.0, "frames_indices": list(range(len(v)))}
                for v in videos
            ],
            "cap_pixels_per_frame": True,
        }
    return dict(processor(text=texts, videos=videos or None, padding=True, return_tensors="pt", **kwargs))


@pytest.fixture(scope="module", params=ARCHS)
def arch(request):
    return request.param


@pytest.fixture(scope="module")
def processor(arch):
    return build_processor(arch)


@pytest.fixture(scope="module")
def reference(arch):
    """The unpatched tiny model of `arch` (never patched: the oracle)."""
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(tiny_checkpoint(arch)).eval()


@pytest.fixture()
def model(reference):
    return copy.deepcopy(reference)


@pytest.fixture(scope="module")
def inputs(arch, processor):
    return make_inputs(arch, processor, [prompt(arch)], [frames(arch, 4)])


def report_key(report: list[dict]) -> list[tuple]:
    return [
        (e["tokens_before"], e["tokens_after"], tuple(e["index"].tolist()), tuple(e["placements"]))
        for e in report
    ]


# ------------------------------------------------------------------------------------------------ concurrency
@pytest.mark.parametrize(("method", "sink"), METHOD_CASES)
def test_threads_match_the_serial_run(arch, processor, model, method, sink):
    """8 threads x 10 calls (forward and generate alternating, four different videos/lengths) on one patched model:
    every output is bit-identical to the serial run and every thread reads its own call's report."""
    questions = ["what happens ?", "what is the color of the car in the video ?", "who ?", "count the dogs ."]
    pool = [
        make_inputs(arch, processor, [prompt(arch, question=q)], [frames(arch, n, seed=i)])
        for i, (q, n) in enumerate(
            zip(questions, (1, 2, 1, 3) if arch == "llava_onevision" else (2, 4, 2, 6))
        )
    ]
    stop_hf.patch(model, config(method=method, retention=0.25, sink=sink))

    def run(i: int, kind: int):
        with torch.no_grad():
            if kind == 0:
                return model(**pool[i]).logits
            out = model.generate(
                **pool[i], max_new_tokens=2, do_sample=False, output_logits=True, return_dict_in_generate=True
            )
            return torch.cat([out.sequences.float().flatten(), torch.cat(out.logits).flatten()])

    serial = {
        (i, kind): (run(i, kind), report_key(stop_hf.last_prune_report(model)))
        for i in range(4)
        for kind in (0, 1)
    }
    assert len({serial[(i, 0)][1][0][1] for i in range(4)}) > 1  # the videos keep different token counts

    barrier, failures = threading.Barrier(8), []

    def worker(thread: int):
        barrier.wait()
        for call in range(10):
            i, kind = (thread + call) % 4, (thread + call // 4) % 2
            try:
                out = run(i, kind)
                report = report_key(stop_hf.last_prune_report(model))
            except Exception as exc:  # noqa: BLE001 - reported below with the call that failed
                failures.append((thread, call, repr(exc)))
                continue
            expected, expected_report = serial[(i, kind)]
            if not identical(out, expected) or report != expected_report:
                failures.append((thread, call, "output" if report == expected_report else "report"))

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


def test_report_is_per_thread_and_empty_after_a_text_only_call(arch, processor, model, inputs):
    stop_hf.patch(model, config(method="uniform", retention=0.25))
    text_only = make_inputs(arch, processor, [prompt(arch, videos=0, question="what is the sky ?")], [])
    with torch.no_grad():
        model(**inputs)
    mine = report_key(stop_hf.last_prune_report(model))
    assert mine and mine[0][1] < mine[0][0]
    other: list = []

    def text_call():
        with torch.no_grad():
            model(**text_only)
        other.append(stop_hf.last_prune_report(model))

    thread = threading.Thread(target=text_call)
    thread.start()
    thread.join()
    assert other == [[]]  # that thread's last call pruned nothing
    assert report_key(stop_hf.last_prune_report(model)) == mine  # this thread's report is untouched
    with torch.no_grad():
        model.generate(**text_only, max_new_tokens=2, do_sample=False)
    assert stop_hf.last_prune_report(model) == []


# ------------------------------------------------------------------------------------------------ lean batches
def prefill_lengths(model) -> list[int]:
    """Spies on the language model's input: the sequence length of every prefill it runs."""
    lengths: list[int] = []

    def spy(module, args, kwargs):
        cache = compat.cache_of(kwargs)
        if cache is None or cache.get_seq_length() == 0:
            lengths.append(kwargs["inputs_embeds"].shape[1])

    model.model.language_model.register_forward_pre_hook(spy, with_kwargs=True)
    return lengths


def batch_case(arch: str, processor, case: str) -> tuple[list[str], list[list[torch.Tensor]]]:
    """Per row: the prompt and its videos. 'short_long': 4 and 16 frames (LLaVA-OV batches one frame count per
    call, so its long row holds four 4-frame videos); 'text_row': a video row beside a text-only row."""
    if case == "text_row":
        return [prompt(arch), prompt(arch, videos=0, question="what is the color of the sky ?")], [
            [frames(arch, 4)],
            [],
        ]
    if arch == "llava_onevision":
        long = [frames(arch, 4, seed=s) for s in (2, 3, 4, 5)]
        return [prompt(arch), prompt(arch, videos=4, question="what changes ?")], [
            [frames(arch, 4, seed=1)],
            long,
        ]
    return [prompt(arch), prompt(arch, question="what changes ?")], [
        [frames(arch, 4, seed=1)],
        [frames(arch, 16, seed=2)],
    ]


@pytest.mark.parametrize("case", ["short_long", "text_row"])
def test_lean_batch_prefill_length_and_outputs(arch, processor, model, case):
    texts, videos = batch_case(arch, processor, case)
    batch = make_inputs(arch, processor, texts, [v for row in videos for v in row])
    singles = [make_inputs(arch, processor, [t], v) for t, v in zip(texts, videos)]
    stop_hf.patch(model, config(method="visionzip", retention=0.1))
    lengths = prefill_lengths(model)
    with torch.no_grad():
        batched_logits = model(**batch).logits
    report = stop_hf.last_prune_report(model)
    video_token = model.config.video_token_id
    kept = []
    for row in range(len(texts)):
        text = int(((batch["input_ids"][row] != video_token) & batch["attention_mask"][row].bool()).sum())
        video = sum(e["tokens_after"] for e in report for r, _ in e["placements"] if r == row)
        kept.append(text + video)
    assert lengths == [max(kept)]  # not the original (padded) length
    assert max(kept) < batch["input_ids"].shape[1]
    print(f"{arch} {case}: prefill {batch['input_ids'].shape[1]} -> {max(kept)} (rows {kept})")

    lengths.clear()
    kwargs = dict(max_new_tokens=3, min_new_tokens=3, output_logits=True, return_dict_in_generate=True)
    with torch.no_grad():
        greedy = model.generate(**batch, do_sample=False, **kwargs)
        beams = model.generate(**batch, do_sample=False, num_beams=2, **kwargs)
        torch.manual_seed(0)
        sampled = model.generate(**batch, do_sample=True, **kwargs)
    assert lengths == [max(kept)] * 3  # beams widen the batch, not the sequence
    start = batch["input_ids"].shape[1]
    for row, single in enumerate(singles):
        length = single["input_ids"].shape[1]
        with torch.no_grad():
            alone_logits = model(**single).logits
            alone = model.generate(**single, do_sample=False, **kwargs)
            alone_beams = model.generate(**single, do_sample=False, num_beams=2, **kwargs)
        assert (batched_logits[row, -1] - alone_logits[0, -1]).abs().max() <= 1e-5
        assert torch.equal(greedy.sequences[row, start:], alone.sequences[0, length:])
        assert torch.equal(beams.sequences[row, start:], alone_beams.sequences[0, length:])
        # sampling draws depend on the batch; the distribution it samples from does not
        assert (sampled.logits[0][row] - alone.logits[0][0]).abs().max() <= 1e-5


# ------------------------------------------------------------------------------------------------ prompt coordinates
def test_forward_logits_are_in_prompt_coordinates(arch, model, reference, inputs):
    stop_hf.patch(model, config(method="holitom", retention=0.25, position_mode="original"))
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True)
    report = stop_hf.last_prune_report(model)
    ref, keep = masked_reference_logits(reference, inputs, report)
    assert out.logits.shape[:2] == inputs["input_ids"].shape
    assert torch.equal(computed(out.logits), keep)  # NaN exactly at the dropped video positions
    assert torch.isnan(out.logits[~keep]).all()
    assert (out.logits[keep] - ref[keep]).abs().max() <= 1e-5
    for hidden in out.hidden_states:
        assert hidden.shape[:2] == inputs["input_ids"].shape and torch.equal(computed(hidden), keep)


def test_attentions_are_in_prompt_coordinates(arch, model, reference, inputs):
    """Eager attention weights: NaN rows at dropped queries, zero weight on dropped keys, the masked reference's
    weights everywhere else."""
    stop_hf.patch(model, config(method="visionzip", retention=0.25, position_mode="original"))
    model.set_attn_implementation("eager")
    with torch.no_grad():
        attentions = model(**inputs, output_attentions=True).attentions
    eager = copy.deepcopy(reference)
    eager.set_attn_implementation("eager")
    expected, keep = masked_reference_output(
        eager, inputs, stop_hf.last_prune_report(model), output_attentions=True
    )
    length = inputs["input_ids"].shape[1]
    assert len(attentions) == len(expected.attentions)
    for weights, ref in zip(attentions, expected.attentions):
        assert weights.shape == (1, ref.shape[1], length, length)
        assert torch.isnan(weights[0][:, ~keep[0]]).all()
        rows = weights[0][:, keep[0]]
        assert (rows[..., ~keep[0]] == 0).all()
        assert (rows - ref[0][:, keep[0]]).abs().max() <= 1e-5


def continuation_log_likelihood(logits: torch.Tensor, input_ids: torch.Tensor, context: int) -> torch.Tensor:
    """Sum of log p(token) over input_ids[context:], from logits (L, V) of one row."""
    log_probs = logits[context - 1 : -1].log_softmax(-1)
    return log_probs.gather(-1, input_ids[context:, None]).sum()


def test_continuation_log_likelihoods_equal_the_masked_reference(arch, processor, model, reference):
    """lmms-eval style multiple choice: score each option by slicing the logits at the context length."""
    video = frames(arch, 4)
    context = make_inputs(arch, processor, [prompt(arch)], [video])
    options = ["the dog runs", "a red car", "two cats sit on the table"]
    stop_hf.patch(model, config(method="visionzip", retention=0.1, sink=True, position_mode="original"))
    length = context["input_ids"].shape[1]
    scores, expected = [], []
    for option in options:
        full = make_inputs(arch, processor, [prompt(arch) + option], [video])
        assert torch.equal(full["input_ids"][0, :length], context["input_ids"][0])
        with torch.no_grad():
            logits = model(**full).logits[0]
        ref, _ = masked_reference_logits(reference, full, stop_hf.last_prune_report(model))
        scores.append(continuation_log_likelihood(logits, full["input_ids"][0], length))
        expected.append(continuation_log_likelihood(ref[0], full["input_ids"][0], length))
    scores, expected = torch.stack(scores), torch.stack(expected)
    assert torch.isfinite(scores).all() and (scores != 0).all()
    assert (scores - expected).abs().max() <= 1e-5
    # the three options in one left-padded batch score the same
    batch = make_inputs(arch, processor, [prompt(arch) + o for o in options], [video] * 3)
    with torch.no_grad():
        logits = model(**batch).logits
    for row in range(3):
        real = batch["attention_mask"][row].bool()
        batched = continuation_log_likelihood(logits[row][real], batch["input_ids"][row][real], length)
        assert abs(float(batched - scores[row])) <= 1e-5


def test_labels_loss_equals_the_masked_reference_loss(arch, processor, model, reference, inputs):
    stop_hf.patch(model, config(method="fastvid", retention=0.25, position_mode="original"))
    labels = inputs["input_ids"].clone()  # every position, video included: dropped positions must be ignored
    labels[:, :3] = -100
    out = model(**inputs, labels=labels)
    ref, keep = masked_reference_logits(reference, inputs, stop_hf.last_prune_report(model))
    valid = keep[:, :-1] & (labels[:, 1:] != -100)
    expected = torch.nn.functional.cross_entropy(ref[:, :-1][valid], labels[:, 1:][valid])
    assert torch.isfinite(out.loss) and abs(out.loss.item() - expected.item()) <= 1e-5
    out.loss.backward()  # differentiable through the expansion
    as_tuple = model(**inputs, labels=labels, return_dict=False)
    assert abs(float(as_tuple[0]) - float(out.loss)) <= 1e-6 and as_tuple[1].shape[1] == labels.shape[1]


def same_positions_close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """NaN at the same positions, equal elsewhere up to float reordering (lm_head over fewer rows)."""
    return torch.equal(torch.isnan(a), torch.isnan(b)) and float((a - b).nan_to_num().abs().max()) <= 1e-6


def test_logits_to_keep_keeps_its_meaning(arch, model, inputs):
    stop_hf.patch(model, config(method="uniform", retention=0.25))
    with torch.no_grad():
        full = model(**inputs).logits
        length = full.shape[1]
        for keep in (1, 3, length - 1):  # the last keeps reach into the video: computed and mapped
            assert same_positions_close(model(**inputs, logits_to_keep=keep).logits, full[:, -keep:])
        positions = torch.tensor([0, 5, length - 2, length - 1])
        assert same_positions_close(model(**inputs, logits_to_keep=positions).logits, full[:, positions])


# ------------------------------------------------------------------------------------------------ modes, hygiene
def test_training_mode_warns_once(arch, model, inputs):
    stop_hf.patch(model, config(method="uniform", retention=0.25))
    model.train()
    with pytest.warns(UserWarning, match="training mode"):
        model(**inputs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model(**inputs)
    model.eval()


def test_training_mode_opt_in_does_not_warn(arch, model, inputs):
    stop_hf.patch(model, config(method="uniform", retention=0.25, allow_training=True))
    model.train()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model(**inputs)
    model.eval()
    with pytest.raises(stop_hf.StopConfigError, match="allow_training"):
        StopConfig(method="uniform", retention=0.25, allow_training="yes")


def test_no_unpruned_tensors_stay_referenced(arch, model, inputs):
    stop_hf.patch(model, config(method="visionzip", retention=0.1))
    state = model._stop_state
    with torch.no_grad():
        model(**inputs)  # a plain forward (use_cache from the config)
        assert state.encoded.get() is None
        model.generate(**inputs, max_new_tokens=2, do_sample=False)
    assert state.encoded.get() is None and state.capturing() is None
    call = state.call.get()
    assert call.video_mask is None and call.prefill is None and call.labels is None
    entry = stop_hf.last_prune_report(model)[0]
    assert entry["result"].embeds.device.type == "cpu" and entry["index"].device.type == "cpu"
    assert entry["result"].embeds.shape[0] == entry["tokens_after"] - (1 if arch == "llava_onevision" else 0)
