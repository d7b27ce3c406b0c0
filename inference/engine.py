"""CaptionEngine: a batch of decoded images + CaptionOptions -> captions, on transformers' BLIP."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from transformers import BlipForConditionalGeneration, BlipProcessor

from blipq.contract.errors import BlipqError, InvalidOptions, ModelFailed, ModelUnavailable
from blipq.contract.images import ImagePolicy
from blipq.contract.options import CaptionOptions
from blipq.inference.decode import decode_image
from blipq.inference.device import resolve_device, resolve_dtype, use_torch_threads
from blipq.inference.fixed_slots import FixedSlotDecoder
from blipq.inference.preprocess import preprocessing_for
from blipq.inference.search import CohortSearch, SearchRequest, search_rules, step_together
from blipq.inference.settings import Decoder, InferenceSettings, VisionEngine
from blipq.inference.speedups import cache_keyword, prefilled_cache, use_sdpa_in_vision_encoder
from blipq.inference.text_decoder import StaticTextDecoder
from blipq.inference.vision import choose_vision_encoder

log = logging.getLogger(__name__)


class CaptionEngine:
    """Runs BLIP caption generation exactly as `BlipForConditionalGeneration.generate` does.

    Pre-processing (`prepare`) is separate from generation so callers can run it on a thread
    pool while the previous batch is on the model; its output equals the PIL-backend processor's
    bit for bit (`blipq.inference.preprocess`). Every image of one `generate` call shares the same
    options; the prompt is identical, so no padding is involved and batching does not change the result.
    """

    def __init__(
        self,
        model: BlipForConditionalGeneration,
        processor: BlipProcessor,
        device: torch.device,
        dtype: torch.dtype,
        decoder: Decoder = "blipq",
        fixed_slots: bool | None = None,
    ) -> None:
        self.model = model.to(device=device, dtype=dtype).eval()
        use_sdpa_in_vision_encoder(self.model)
        self.processor = processor
        self.preprocessing = preprocessing_for(processor.image_processor, device)
        self.tokenizer = processor.tokenizer
        self.device = device
        self.dtype = dtype
        text_config = model.config.text_config
        self._sep_token_id: int = text_config.sep_token_id
        self._max_positions: int = text_config.max_position_embeddings
        self._cache_keyword = cache_keyword(self.model)
        self._prompt_cache: dict[str, list[int]] = {}
        self._prompt_lock = threading.Lock()
        self.generate_calls = 0  # model calls, split retries included
        self.vision_backend = "torch"
        self._vision_encoder: torch.nn.Module | None = None  # None: the model's own vision_model
        self._search_rules = None
        if decoder == "blipq":
            self._search_rules, unhandled = search_rules(self.model)
            if unhandled:
                log.warning("the checkpoint's generation config sets %s: transformers generates", ", ".join(unhandled))
        self.decoder: Decoder = "blipq" if self._search_rules is not None else "transformers"
        # On CUDA the decoder's steps run on fixed shapes, each captured once as a CUDA graph; on the CPU the
        # cohorts' steps run together eagerly (`fixed_slots` chooses either way, graphs only on CUDA).
        on_cuda = device.type == "cuda"
        self._text_decoder = (
            FixedSlotDecoder(self.model, graphs=on_cuda)
            if (on_cuda if fixed_slots is None else fixed_slots)
            else StaticTextDecoder(self.model)
        )

    @classmethod
    def load(
        cls,
        checkpoint: Path,
        *,
        device: str = "auto",
        dtype: str = "auto",
        vision_engine: VisionEngine = "torch",
        torch_threads: int = 0,
        decoder: Decoder = "blipq",
        fixed_slots: bool | None = None,
    ) -> CaptionEngine:
        """Load a local checkpoint directory (see `resolve_checkpoint`) onto a device, with the vision encoder
        `vision_engine` picks (`auto`: a matching TensorRT engine if there is one, else torch), torch's CPU
        threads set (`use_torch_threads`), the `decoder` that searches captions and its layout (`fixed_slots`:
        fixed-shape steps, CUDA graphs on CUDA; by default on CUDA only)."""
        torch_device = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, torch_device)
        use_torch_threads(torch_threads, torch_device)
        try:
            model = BlipForConditionalGeneration.from_pretrained(checkpoint, dtype=torch_dtype)
            # The PIL backend, whatever is installed: captions must not depend on whether torchvision is there.
            processor = BlipProcessor.from_pretrained(checkpoint, backend="pil")
        except (OSError, ValueError) as exc:
            raise ModelUnavailable(f"cannot load a BLIP checkpoint from {checkpoint}: {exc}") from None
        engine = cls(model, processor, torch_device, torch_dtype, decoder, fixed_slots)
        encoder = choose_vision_encoder(vision_engine, checkpoint, torch_device, torch_dtype)
        if encoder is not None:
            engine.use_vision_encoder(encoder, "tensorrt")
        return engine

    @classmethod
    def configured(cls, checkpoint: Path, settings: InferenceSettings) -> CaptionEngine:
        """`load` with the device, dtype, vision encoder and torch threads of `settings`."""
        return cls.load(
            checkpoint,
            device=settings.device,
            dtype=settings.dtype,
            vision_engine=settings.vision_engine,
            torch_threads=settings.torch_threads,
            decoder=settings.decoder,
        )

    def use_vision_encoder(self, encoder: torch.nn.Module, name: str) -> None:
        """Run `encoder` (pixel_values -> last_hidden_state) instead of the model's vision encoder; the
        decoder stays transformers' and runs in the same dtype."""
        self._vision_encoder = encoder
        self.vision_backend = name

    def check_options(self, options: CaptionOptions) -> None:
        """Raise `InvalidOptions` for options this checkpoint cannot honour, before any model work."""
        used = self.prompt_length(options.prompt)
        if options.max_length <= used:
            raise InvalidOptions(
                f"max_length ({options.max_length}) leaves no room for a caption after the prompt "
                f"({used} tokens including the start token)"
            )
        if options.max_length > self._max_positions:
            raise InvalidOptions(
                f"max_length ({options.max_length}) exceeds this model's {self._max_positions} positions"
            )

    def prepare(self, image: Image.Image) -> torch.Tensor:
        """One decoded image (see `decode_image`) -> what `generate` takes for it. Thread-safe."""
        return self.preprocessing.prepare(image)

    def prepare_file(self, data: bytes, policy: ImagePolicy, *, fast_decode: bool = False) -> torch.Tensor:
        """An image file's bytes, decoded and prepared. `fast_decode`: a JPEG at least twice the model's input
        is decoded at a reduced scale (see `decode_image`). Thread-safe."""
        reduce_to = self.preprocessing.size if fast_decode else None
        return self.prepare(decode_image(data, policy, reduce_to=reduce_to))

    def pixel_values(self, prepared: Sequence[torch.Tensor]) -> torch.Tensor:
        """Prepared images -> the vision encoder's input batch, on the model's device and in its dtype."""
        return self.preprocessing.pixel_values(prepared, self.device, self.dtype)

    def caption(self, images: Sequence[Image.Image], options: CaptionOptions) -> list[str]:
        """Caption decoded images in one batch."""
        if not images:
            return []
        self.check_options(options)
        prepared = [self.prepare(image) for image in images]
        return [self.decode(ids, options) for ids in self.generate(prepared, options)]

    def generate(self, prepared: Sequence[torch.Tensor], options: CaptionOptions) -> list[list[int]]:
        """Token ids per prepared image (prompt included, up to and including the end token).

        The same steps as `BlipForConditionalGeneration.generate`, with the vision encoder and the image's
        cross-attention keys/values run once per image before the search (`blipq.inference.search` over
        `StaticTextDecoder`, or transformers' own where `decoder` says so).
        """
        if self._search_rules is not None:
            run = self.start_search(prepared, options)
            results: dict[int, list[int]] = {}
            while True:
                results.update(self.advance_search(run))
                if run.done:
                    return [results[image] for image in range(len(prepared))]
                self.step_searches([run])
        self.check_options(options)
        self.generate_calls += 1
        start_ids = self._start_ids(options)
        with torch.inference_mode():
            image_embeds = self._image_embeds(prepared)
            rows = self._transformers_generate(image_embeds, start_ids, bool(options.prompt), options).tolist()
        start = self.prompt_length(options.prompt)
        return [self._trim(row, start) for row in rows]

    def start_search(self, prepared: Sequence[torch.Tensor], options: CaptionOptions) -> CohortSearch:
        """Run the vision encoder and the prompt for `prepared` images: a search that `advance_search` and
        `step_searches` take on, alone or together with other searches started before or after it."""
        if self._search_rules is None:
            raise RuntimeError("this engine generates with transformers (see `decoder`)")
        self.check_options(options)
        self.generate_calls += 1
        request = SearchRequest(options.num_beams, options.max_length, options.min_length, options.repetition_penalty)
        with torch.inference_mode():
            image_embeds = self._image_embeds(prepared)
            return CohortSearch(self._text_decoder, image_embeds, self._start_ids(options), request, self._search_rules)

    def advance_search(self, run: CohortSearch) -> dict[int, list[int]]:
        """The images of `run` that finished with its last step, by their index in `start_search`'s batch,
        with their token ids (as `generate` returns them)."""
        with torch.inference_mode():
            finished = run.advance()
        start = run.prompt_length
        return {image: self._trim(ids, start) for image, ids in finished.items()}

    def step_searches(self, runs: Sequence[CohortSearch]) -> None:
        """One decoder step for every run that is not done, in one pass."""
        with torch.inference_mode():
            step_together(self._text_decoder, list(runs))

    def _start_ids(self, options: CaptionOptions) -> list[int]:
        """Like BLIP: the prompt's first token becomes the decoder's start token, its closing [SEP] is dropped."""
        prompt_ids = self._prompt_ids(options.prompt)
        bos: int = self.model.config.text_config.bos_token_id
        return [bos, *prompt_ids[1:-1]] if prompt_ids else [bos]

    def _image_embeds(self, prepared: Sequence[torch.Tensor]) -> torch.Tensor:
        pixel_values = self.pixel_values(prepared)
        if self._vision_encoder is None:
            embeds: torch.Tensor = self.model.vision_model(pixel_values=pixel_values)[0]
            return embeds
        encoded: torch.Tensor = self._vision_encoder(pixel_values)
        return encoded

    def _transformers_generate(
        self, image_embeds: torch.Tensor, start_ids: list[int], prompted: bool, options: CaptionOptions
    ) -> torch.Tensor:
        """transformers' beam search or greedy search, with the image's cross-attention keys and values
        computed once (see `prefilled_cache`)."""
        text_config = self.model.config.text_config
        input_ids = torch.tensor([start_ids] * image_embeds.shape[0], dtype=torch.long, device=self.device)
        output: torch.Tensor = self.model.text_decoder.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids) if prompted else None,
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=self.device),
            eos_token_id=text_config.sep_token_id,
            pad_token_id=text_config.pad_token_id,
            num_beams=options.num_beams,
            max_length=options.max_length,
            min_length=options.min_length,
            repetition_penalty=options.repetition_penalty,
            do_sample=False,
            **{self._cache_keyword: prefilled_cache(self.model, image_embeds, options.num_beams)},
        )
        return output

    def generate_each(self, prepared: Sequence[torch.Tensor], options: CaptionOptions) -> list[list[int] | BlipqError]:
        """Like `generate`, but a failure costs only the image that causes it.

        A failing batch (CUDA out of memory, a model error on one input) is split in halves and
        retried until every image is captioned or is alone in failing. Errors are returned in
        place of that image's token ids.
        """
        try:
            return list(self.generate(prepared, options))
        except BlipqError as exc:  # invalid options: the same for every image
            return [exc] * len(prepared)
        except Exception as exc:
            release_cached_memory()
            if len(prepared) == 1:
                log.exception("model failed on one image")
                return [ModelFailed(f"model failed: {type(exc).__name__}: {exc}")]
            log.warning("model failed on a batch of %d (%s); retrying in halves", len(prepared), exc)
            middle = len(prepared) // 2
            return self.generate_each(prepared[:middle], options) + self.generate_each(prepared[middle:], options)

    def decode(self, token_ids: Sequence[int], options: CaptionOptions) -> str:
        """The caption text without the prompt, as the original BLIP caption decoder returned it."""
        start = self.prompt_length(options.prompt)
        text: str = self.tokenizer.decode(list(token_ids[start:]), skip_special_tokens=True)
        return text.strip()

    def prompt_length(self, prompt: str) -> int:
        """Tokens fed to the decoder before generation starts: the start token plus the prompt."""
        ids = self._prompt_ids(prompt)
        return len(ids) - 1 if ids else 1

    def _prompt_ids(self, prompt: str) -> list[int]:
        """Tokenised prompt as BlipProcessor produces it ([CLS] ... [SEP]); [] for no prompt."""
        if not prompt:
            return []
        with self._prompt_lock:
            if prompt not in self._prompt_cache:
                self._prompt_cache[prompt] = list(self.tokenizer(prompt)["input_ids"])
            return self._prompt_cache[prompt]

    def _trim(self, row: list[int], start: int) -> list[int]:
        """Cut the padding that batched generation adds after a sequence's end token."""
        try:
            end = row.index(self._sep_token_id, start)
        except ValueError:
            return row
        return row[: end + 1]


def quiet_transformers() -> None:
    """Keep transformers' per-load progress bars and advisory warnings out of user-facing output."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()


def release_cached_memory() -> None:
    """Give cached GPU memory back after an out-of-memory error, before retrying smaller batches."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
