"""Greedy and beam search over `StaticTextDecoder` (one `CohortSearch` per group of images started together),
with the semantics of transformers' `generate` for BLIP.

What transformers does, and this follows step for step (the parity tests compare token for token):
- scores: greedy picks the arg-max of the processed logits; beam search adds the processed log-softmax to
  each beam's running score and keeps the best 2 x beams continuations of each image (beam 0 alone at the
  first step, the others starting at -1e9);
- processors, in transformers' order: the repetition penalty (over every token so far, prompt included:
  scores below 0 multiplied by it, others divided), then the minimum length (the end token barred while the
  sequence is shorter);
- a continuation ends on the end token or at max_length; among the first `beams` continuations, the ended
  ones compete with the image's finished sequences on score / generated length ** length_penalty, and the
  best `beams` unfinished ones run on;
- an image stops improving by the early-stopping rule (`early_stopping` False: when its best running score
  over the current generated length cannot beat its worst finished one; True: once `beams` sequences
  finished; "never": over max_length when the length penalty is positive), and its result is its best
  finished sequence.
The masks are added as transformers adds them (-1e9 terms), so that ties break the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from transformers import BlipForConditionalGeneration

from blipq.inference.text_decoder import StaticTextDecoder

EarlyStopping = bool | Literal["never"]

#: Scores that must never win, as transformers writes them.
_NEVER = -1.0e9


@dataclass(frozen=True)
class SearchRules:
    """What a caption request leaves to the checkpoint's generation config."""

    eos_token_id: int
    pad_token_id: int
    length_penalty: float = 1.0
    early_stopping: EarlyStopping = False


@dataclass(frozen=True)
class SearchRequest:
    num_beams: int
    max_length: int
    min_length: int
    repetition_penalty: float


def step_together(decoder: StaticTextDecoder, runs: list[CohortSearch]) -> None:
    """One decoder step for every run that is not done, in one pass over the layers: each gets the logits
    its next `advance` takes."""
    live = [run for run in runs if not run.done]
    if live:
        logits = decoder.step([run.cohort for run in live], [run.next_tokens() for run in live])
        for run, rows in zip(live, logits, strict=True):
            run.pending = rows


class CohortSearch:
    """One cohort's images through the search: the decoder's cohort, the search state, and which of the
    images given at the start each of its images is. Images leave as soon as their search is done."""

    def __init__(
        self,
        decoder: StaticTextDecoder,
        image_embeds: torch.Tensor,
        start_ids: list[int],
        request: SearchRequest,
        rules: SearchRules,
    ) -> None:
        device = image_embeds.device
        prompt = torch.tensor([start_ids], dtype=torch.long, device=device)
        self.decoder = decoder
        self.cohort, self.pending = decoder.start(image_embeds, prompt, request.num_beams, request.max_length)
        images = image_embeds.shape[0]
        self.state: _GreedyState | _BeamState = (
            _GreedyState(images, prompt, request, rules)
            if request.num_beams == 1
            else _BeamState(images, prompt, request, rules)
        )
        self.images = torch.arange(images, device=device)  # the starting index of each image still here
        self.prompt_length = len(start_ids)  # where the generated tokens start
        self.done = False

    def advance(self) -> dict[int, list[int]]:
        """Take the pending logits (one row per row of the cohort, from the start or the last step); the
        images that finished, by starting index, with their token ids. The cohort's slots follow the beams
        kept and lose the finished images."""
        done = self.state.advance(self.pending)
        if self.state.parent_rows is not None:
            self.decoder.reorder(self.cohort, self.state.parent_rows)
        finished = done.nonzero().view(-1).tolist()
        if not finished:
            return {}
        starting = self.images.tolist()
        results = {starting[index]: self.state.result(index).tolist() for index in finished}
        if len(finished) == len(starting):
            self.done = True
            self.decoder.release(self.cohort)
        else:
            kept = (~done).nonzero().view(-1)
            self.state.keep(kept)
            self.decoder.keep(self.cohort, kept)
            self.images = self.images.index_select(0, kept)
        return results

    def next_tokens(self) -> torch.Tensor:
        """The token each row feeds at the next step."""
        return self.state.last_tokens()


class _GreedyState:
    def __init__(self, images: int, prompt: torch.Tensor, request: SearchRequest, rules: SearchRules) -> None:
        self.request, self.eos = request, rules.eos_token_id
        self.length = prompt.shape[1]
        self.sequences = torch.full(
            (images, request.max_length), rules.pad_token_id, dtype=torch.long, device=prompt.device
        )
        self.sequences[:, : self.length] = prompt
        self.parent_rows: torch.Tensor | None = None  # greedy search never reorders

    def advance(self, logits: torch.Tensor) -> torch.Tensor:
        scores = _processed(logits, self.sequences[:, : self.length], self.request, self.eos)
        tokens = scores.argmax(dim=-1)
        self.sequences[:, self.length] = tokens
        self.length += 1
        ended: torch.Tensor = tokens == self.eos
        return ended | (self.length >= self.request.max_length)

    def last_tokens(self) -> torch.Tensor:
        return self.sequences[:, self.length - 1]

    def result(self, image: int) -> torch.Tensor:
        return self.sequences[image]

    def keep(self, images: torch.Tensor) -> None:
        self.sequences = self.sequences.index_select(0, images)


class _BeamState:
    def __init__(self, images: int, prompt: torch.Tensor, request: SearchRequest, rules: SearchRules) -> None:
        device = prompt.device
        beams = request.num_beams
        self.request, self.rules = request, rules
        self.prompt_length = self.length = prompt.shape[1]
        self.kept = 2 * beams  # enough continuations that `beams` of them can run on although `beams` ended
        self.first_beams = torch.arange(self.kept, device=device) < beams
        # The filler after an end token, as transformers chooses it (its pad id is a tensor, and 0 is falsy).
        fill = rules.pad_token_id or rules.eos_token_id
        self.running = torch.full((images, beams, request.max_length), fill, dtype=torch.long, device=device)
        self.running[:, :, : self.length] = prompt
        self.running_scores = torch.zeros((images, beams), device=device)
        self.running_scores[:, 1:] = _NEVER
        self.finished = self.running.clone()
        self.finished_scores = torch.full((images, beams), _NEVER, device=device)
        self.finished_flags = torch.zeros((images, beams), dtype=torch.bool, device=device)
        self.improvable = torch.ones((images, 1), dtype=torch.bool, device=device)
        self.parent_rows: torch.Tensor | None = None

    def advance(self, logits: torch.Tensor) -> torch.Tensor:
        images, beams = self.running_scores.shape
        request, rules, length = self.request, self.rules, self.length
        vocabulary = logits.shape[-1]
        log_probs = torch.log_softmax(logits, dim=-1)
        log_probs = _processed(
            log_probs, self.running.view(images * beams, -1)[:, :length], request, rules.eos_token_id
        )
        totals = (log_probs.view(images, beams, vocabulary) + self.running_scores[:, :, None]).view(images, -1)
        top_scores, top_indices = torch.topk(totals, k=self.kept)
        parents = top_indices // vocabulary
        candidates = torch.take_along_dim(self.running, parents[:, :, None], dim=1)
        candidates[:, :, length] = top_indices % vocabulary
        ended = (candidates[:, :, length] == rules.eos_token_id) | (length + 1 >= request.max_length)

        # The best `beams` continuations that did not end run on.
        open_scores = top_scores + ended.to(torch.float32) * _NEVER
        chosen = torch.topk(open_scores, k=beams)[1]
        self.running = torch.take_along_dim(candidates, chosen[:, :, None], dim=1)
        self.running_scores = torch.take_along_dim(open_scores, chosen, dim=1)
        offsets = torch.arange(images, device=logits.device)[:, None] * beams
        self.parent_rows = (torch.take_along_dim(parents, chosen, dim=1) + offsets).view(-1)

        # Ended continuations among the first `beams` join the finished ones if they score better.
        just_finished = ended & self.first_beams[None, :]
        scores = top_scores / ((length + 1 - self.prompt_length) ** rules.length_penalty)
        full = self.finished_flags.all(dim=-1, keepdim=True) & (rules.early_stopping is True)
        scores = scores + full.to(torch.float32) * _NEVER
        scores = scores + (~self.improvable).to(torch.float32) * _NEVER
        scores = scores + (~just_finished) * _NEVER
        merged_scores = torch.cat((self.finished_scores, scores), dim=1)
        best = torch.topk(merged_scores, k=beams)[1]
        self.finished = torch.take_along_dim(torch.cat((self.finished, candidates), dim=1), best[:, :, None], dim=1)
        self.finished_scores = torch.take_along_dim(merged_scores, best, dim=1)
        self.finished_flags = torch.take_along_dim(torch.cat((self.finished_flags, just_finished), dim=1), best, dim=1)

        self.length = length = length + 1
        self.improvable = self.improvable & _may_improve(
            self.running_scores, self.finished_scores, self.finished_flags,
            length - self.prompt_length, request.max_length - self.prompt_length, rules,
        )  # fmt: skip
        # Done: nothing can improve it, all of its continuations ended (max_length), or early stopping
        # with every finished slot filled. transformers runs such an image on until the whole batch stops,
        # but its finished sequences can no longer change.
        done = ~self.improvable[:, 0] | ended.all(dim=1)
        if rules.early_stopping is True:
            done |= self.finished_flags.all(dim=1)
        return done

    def last_tokens(self) -> torch.Tensor:
        return self.running[:, :, self.length - 1].reshape(-1)

    def result(self, image: int) -> torch.Tensor:
        return self.finished[image, 0]

    def keep(self, images: torch.Tensor) -> None:
        for name in ("running", "running_scores", "finished", "finished_scores", "finished_flags", "improvable"):
            setattr(self, name, getattr(self, name).index_select(0, images))


def _processed(scores: torch.Tensor, sequences: torch.Tensor, request: SearchRequest, eos: int) -> torch.Tensor:
    """`scores` (rows x vocabulary) after the repetition penalty and the minimum length, for `sequences`
    (rows x tokens so far)."""
    if request.repetition_penalty != 1.0:
        seen = scores.gather(1, sequences)
        seen = torch.where(seen < 0, seen * request.repetition_penalty, seen / request.repetition_penalty)
        scores = scores.scatter(1, sequences, seen)
    if sequences.shape[1] < request.min_length:
        scores = scores.clone()
        scores[:, eos] = -torch.inf
    return scores


def _may_improve(
    running_scores: torch.Tensor,
    finished_scores: torch.Tensor,
    finished_flags: torch.Tensor,
    generated: int,
    most_generated: int,
    rules: SearchRules,
) -> torch.Tensor:
    """Per image: could a running beam still beat the worst finished sequence (transformers' heuristic)?"""
    hoped = most_generated if rules.early_stopping == "never" and rules.length_penalty > 0.0 else generated
    best_running: torch.Tensor = running_scores[:, :1] / (hoped**rules.length_penalty)
    worst_finished = torch.where(finished_flags, finished_scores.min(dim=1, keepdim=True)[0], _NEVER)
    return (best_running > worst_finished).any(dim=-1, keepdim=True)


#: Generation-config fields this search reads or that a caption request sets; any other field must be unset
#: (or at its neutral value) for the search to mean what transformers' `generate` means.
_HANDLED = {
    "max_length", "min_length", "num_beams", "repetition_penalty", "length_penalty", "early_stopping",
    "bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id", "use_cache", "output_attentions",
    "output_hidden_states", "output_scores", "output_logits", "return_dict_in_generate", "transformers_version",
    "_from_model_config", "do_sample", "temperature", "top_k", "top_p",
}  # fmt: skip
_NEUTRAL: dict[str, object] = {
    "no_repeat_ngram_size": 0, "encoder_no_repeat_ngram_size": 0, "num_return_sequences": 1, "num_beam_groups": 1,
    "diversity_penalty": 0.0, "encoder_repetition_penalty": 1.0, "renormalize_logits": False,
    "remove_invalid_values": False, "low_memory": False, "guidance_scale": 1.0,
}  # fmt: skip


def search_rules(model: BlipForConditionalGeneration) -> tuple[SearchRules | None, list[str]]:
    """The rules the text decoder's generation config sets, or None and the fields this search does not
    implement (the caller then lets transformers generate)."""
    config = model.text_decoder.generation_config
    text_config = model.config.text_config
    unhandled = sorted(
        key
        for key, value in config.to_dict().items()
        if key not in _HANDLED and value is not None and value != _NEUTRAL.get(key)
    )
    if config.do_sample:
        unhandled.append("do_sample")
    early_stopping = False if config.early_stopping is None else config.early_stopping
    if early_stopping not in (False, True, "never"):
        unhandled.append("early_stopping")
    if unhandled:
        return None, unhandled
    rules = SearchRules(
        eos_token_id=text_config.sep_token_id,
        pad_token_id=text_config.pad_token_id,
        length_penalty=1.0 if config.length_penalty is None else float(config.length_penalty),
        early_stopping=early_stopping,
    )
    return rules, []
