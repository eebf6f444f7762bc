"""Causal language models: what deploykit reads from a decoder source and the contract its cached artifacts keep.

A source is a Hugging Face folder (``config.json`` + ``*.safetensors`` + ``tokenizer.json``) or a GGUF file (its
weights dequantized to float32 by transformers: the dequantized float model is the source of truth). Both are
read here without torch: the folder's config is JSON, the GGUF header is read with the ``gguf`` package.

Every cached-decoder artifact (ONNX, LiteRT, ExecuTorch) keeps one contract (``DecoderContract``, recorded in
its manifest under ``causal_lm``)::

    tokens[1, T] int32, input_pos[T] int32, k_cache/v_cache[L, Hkv, C, D] float32
        -> logits[1, T, V] float32, k_cache_out, v_cache_out (the caches with the T tokens written)

with two entry points: ``prefill`` (T = ``prefill_len`` tokens, padded; or any T <= C when the artifact takes a
dynamic length) and ``decode`` (T = 1). ``deploykit.transforms.cached_decoder`` builds the module that is exported.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from deploykit.errors import ModelLoadError, UnsupportedModelError, UsageError

# transformers class -> the family deploykit re-authors it as (deploykit.transforms.cached_decoder).
COVERED = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral", "Qwen2ForCausalLM": "qwen2"}
# GGUF's general.architecture -> the transformers class transformers builds from it.
GGUF_ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}
GGUF_MAGIC = b"GGUF"

INPUTS = ("tokens", "input_pos", "k_cache", "v_cache")
OUTPUTS = ("logits", "k_cache_out", "v_cache_out")
ENTRY_POINTS = ("prefill", "decode")
DEFAULT_MAX_CONTEXT = 256
DEFAULT_PREFILL_LEN = 64
TOKENIZER_SUFFIX = ".tokenizer.json"


@dataclass(frozen=True)
class SourceInfo:
    """What a causal-LM source declares, read without loading its weights."""

    path: str
    format: str                 # "hf_folder" or "gguf"
    architecture: str           # the transformers class, e.g. LlamaForCausalLM
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    hidden: int
    vocab: int
    max_positions: int
    sliding_window: Optional[int] = None

    @property
    def family(self) -> str:
        return COVERED[self.architecture]


@dataclass(frozen=True)
class DecoderContract:
    """The cached decoder's shapes and entry points, recorded in the artifact's manifest."""

    family: str
    layers: int
    kv_heads: int
    head_dim: int
    vocab: int
    max_context: int
    prefill_len: Optional[int]          # None: the prefill entry takes any length up to max_context
    bos_token_id: Optional[int] = None
    eos_token_ids: tuple = ()
    quantization: str = "fp32"
    entry_points: dict = field(default_factory=lambda: {"prefill": "prefill", "decode": "decode"})

    @property
    def cache_shape(self) -> tuple:
        return (self.layers, self.kv_heads, self.max_context, self.head_dim)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["eos_token_ids"] = list(self.eos_token_ids)
        data["inputs"], data["outputs"] = list(INPUTS), list(OUTPUTS)
        return data

    @classmethod
    def from_dict(cls, data) -> "DecoderContract":
        """The contract from a manifest section; a malformed one is a damaged manifest (exit 2)."""
        try:
            known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
            contract = cls(**{**known, "eos_token_ids": tuple(int(t) for t in known.get("eos_token_ids", ()))})
            ints = (contract.layers, contract.kv_heads, contract.head_dim, contract.vocab, contract.max_context)
            if not all(isinstance(v, int) and 0 < v < 1 << 24 for v in ints):
                raise ValueError("sizes")
            if contract.prefill_len is not None and not 0 < int(contract.prefill_len) <= contract.max_context:
                raise ValueError("prefill_len")
            return contract
        except (TypeError, ValueError, KeyError, AttributeError):
            raise ModelLoadError("the manifest's causal_lm section is malformed",
                                 "re-export the model with deploykit export") from None


def is_gguf(path: "str | Path") -> bool:
    p = Path(path)
    try:
        with open(p, "rb") as handle:
            return p.is_file() and handle.read(4) == GGUF_MAGIC
    except OSError:
        return False


def is_hf_folder(path: "str | Path") -> bool:
    p = Path(path)
    return p.is_dir() and (p / "config.json").is_file() and any(p.glob("*.safetensors"))


def read_source(path: "str | Path") -> SourceInfo:
    """SourceInfo of a Hugging Face folder or a GGUF file; an architecture deploykit does not cover names itself."""
    p = Path(path)
    info = _read_gguf(p) if is_gguf(p) else _read_hf(p)
    if info.architecture not in COVERED:
        raise UnsupportedModelError(
            f"{p}: the model's architecture {info.architecture} is not covered",
            f"deploykit re-authors {', '.join(sorted(COVERED))} decoders; export this one with its own tool and "
            "check it with deploykit verify on a covered model's artifact")
    return info


def _read_hf(p: Path) -> SourceInfo:
    try:
        config = json.loads((p / "config.json").read_text())
        if not isinstance(config, dict):
            raise ValueError("not an object")
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{p}/config.json cannot be read ({exc})", "give the model's own config.json") from None
    if not (p / "tokenizer.json").is_file():
        raise ModelLoadError(f"{p}: no tokenizer.json in the model folder",
                             "copy the model's tokenizer.json (from the same repository) into the folder")
    archs = config.get("architectures") or [config.get("model_type", "unknown")]
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    try:
        heads = int(text["num_attention_heads"])
        hidden = int(text["hidden_size"])
        return SourceInfo(str(p), "hf_folder", str(archs[0]), int(text["num_hidden_layers"]), heads,
                          int(text.get("num_key_value_heads") or heads),
                          int(text.get("head_dim") or hidden // heads), hidden, int(text["vocab_size"]),
                          int(text.get("max_position_embeddings") or 0), _window(text))
    except (KeyError, TypeError, ValueError):
        if str(archs[0]) not in COVERED:
            return SourceInfo(str(p), "hf_folder", str(archs[0]), 0, 0, 0, 0, 0, 0, 0)
        raise ModelLoadError(f"{p}/config.json lacks the decoder's sizes (layers, heads, hidden, vocab)",
                             "give the model's own config.json") from None


def _window(config: dict) -> Optional[int]:
    if config.get("use_sliding_window") is False:
        return None
    value = config.get("sliding_window")
    return int(value) if isinstance(value, int) and value > 0 else None


def _read_gguf(p: Path) -> SourceInfo:
    try:
        import gguf
    except ImportError:
        from deploykit.registry import require

        require(("gguf",), "reading a GGUF model")
        raise
    try:
        reader = gguf.GGUFReader(str(p))
        fields = {name: _field_value(f) for name, f in reader.fields.items()
                  if not name.startswith("tokenizer.ggml.") or name == "tokenizer.ggml.model"}
        arch = str(fields["general.architecture"])
    except Exception as exc:    # gguf raises ValueError/KeyError/struct errors on damaged files
        raise ModelLoadError(f"{p}: not a readable GGUF file ({type(exc).__name__}: {str(exc)[:120]})",
                             "re-download the model file") from None
    cls = GGUF_ARCHITECTURES.get(arch, arch)
    if cls not in COVERED:
        return SourceInfo(str(p), "gguf", cls, 0, 0, 0, 0, 0, 0, 0)
    get = lambda key, default=None: fields.get(f"{arch}.{key}", default)  # noqa: E731
    heads, hidden = int(get("attention.head_count")), int(get("embedding_length"))
    vocab = get("vocab_size") or len(reader.fields["tokenizer.ggml.tokens"].data)
    return SourceInfo(str(p), "gguf", cls, int(get("block_count")), heads,
                      int(get("attention.head_count_kv") or heads), int(get("attention.key_length") or hidden // heads),
                      hidden, int(vocab), int(get("context_length") or 0))


def _field_value(f):
    """A GGUF metadata field's value (strings decoded, one-element arrays unwrapped)."""
    parts = [f.parts[i] for i in f.data]
    if f.types and f.types[0].name == "STRING":
        return bytes(parts[0]).decode("utf-8", "replace") if len(parts) == 1 else None
    values = [p.tolist()[0] if hasattr(p, "tolist") and len(p) == 1 else p for p in parts]
    return values[0] if len(values) == 1 else values


def check_context(max_context: int, prefill_len: Optional[int], info: Optional[SourceInfo] = None) -> None:
    """Refuse a maximum context or prefill length the model or the cache protocol cannot take (exit 2)."""
    if not isinstance(max_context, int) or not 8 <= max_context <= 32768:
        raise UsageError(f"--max-context {max_context} is out of range", "give 8 to 32768 tokens")
    if prefill_len is not None and not 1 <= prefill_len <= max_context:
        raise UsageError(f"--prefill-len {prefill_len} must be 1..--max-context ({max_context})",
                         "give a prefill length no longer than the context")
    if info and info.max_positions and max_context > info.max_positions:
        raise UsageError(f"--max-context {max_context} exceeds the model's {info.max_positions} positions",
                         f"give --max-context {info.max_positions} or less")
    if info and info.sliding_window and max_context > info.sliding_window:
        raise UsageError(f"--max-context {max_context} exceeds the model's sliding window ({info.sliding_window})",
                         "deploykit's cache has no sliding window: keep the context within it")


def context_for(requested: Optional[int], info: SourceInfo) -> int:
    """The context to export: the one asked for, else DEFAULT_MAX_CONTEXT or the model's positions when fewer."""
    if requested is not None:
        return requested
    return min(DEFAULT_MAX_CONTEXT, info.max_positions) if info.max_positions else DEFAULT_MAX_CONTEXT


def contract_of(manifest: Optional[dict]) -> Optional[DecoderContract]:
    """The DecoderContract recorded in an artifact's manifest, or None when the artifact is no cached decoder."""
    section = (manifest or {}).get("causal_lm")
    return DecoderContract.from_dict(section) if isinstance(section, dict) else None


def tokenizer_path(artifact: "str | Path") -> Path:
    """Where export writes the source's tokenizer beside the artifact (``model.onnx.tokenizer.json``)."""
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + TOKENIZER_SUFFIX)


@dataclass(frozen=True)
class LLMOptions:
    """How a causal LM is exported and judged (each default lives here once)."""

    prompts: Optional[str] = None           # a UTF-8 file, one prompt per line (default: data/prompts.txt)
    tokens: int = 32                        # greedy tokens judged per prompt
    max_context: Optional[int] = None       # None: DEFAULT_MAX_CONTEXT, or the model's positions when fewer
    prefill_len: int = DEFAULT_PREFILL_LEN   # the prefill signature's length where it must be fixed (<= the context)
    text: Optional[str] = None              # the perplexity text (default: data/perplexity.txt)
    runtime: Optional[str] = None           # verify: the runtime that runs the artifact (default: the format's)
    threads: Optional[int] = None
    timeout: float = 1800.0

    def __post_init__(self):
        if not isinstance(self.tokens, int) or not 1 <= self.tokens <= 4096:
            raise UsageError(f"--tokens {self.tokens} is out of range", "give 1 to 4096 greedy tokens")
        if self.max_context is not None:        # the prefill length is cut to the context where it is longer
            check_context(self.max_context, None)
        if not isinstance(self.prefill_len, int) or self.prefill_len < 1:
            raise UsageError(f"--prefill-len {self.prefill_len} must be at least 1", "e.g. --prefill-len 64")
        from deploykit.child import check_timeout

        check_timeout(self.timeout)


def llm_options_for(timeout: float, default_timeout: float) -> LLMOptions:
    """LLMOptions for a command whose --timeout is ``timeout``: a causal LM's own (longer) default stands unless the
    user changed --timeout from the command's ``default_timeout``."""
    return LLMOptions(timeout=timeout if timeout != default_timeout else LLMOptions.timeout)


class DecoderCalls:
    """What a runtime module gives for a cached-decoder artifact (``runtimes.<runtime>:decoder_calls(path,
    options: RunnerOptions) -> DecoderCalls``); the host-side loop (``deploykit.llm.session``) feeds the caches
    back and never knows which runtime it drives.

    ``entries`` maps each entry point ("prefill", "decode") to the token count its call takes — an int for a
    fixed-length signature/method, None for a call that takes any length up to the context. ``call(entry,
    feeds)`` runs one call with the feeds named as ``INPUTS`` (numpy, the contract's dtypes) and returns the
    outputs named as ``OUTPUTS`` (numpy copies the next call cannot overwrite). ``close()`` frees the runtime.
    """

    entries: dict = {}

    def call(self, entry: str, feeds: dict) -> dict:  # pragma: no cover - the protocol
        raise NotImplementedError

    def close(self) -> None:
        pass
