"""Loading local checkpoints: plain folders, merged TALE-PT checkpoints, base + LoRA adapter folders,
with safetensors only and clear errors that name the path at fault.

The public loading API of the local backend, used by `HFGenerator` and by ``training`` (which loads
the base it trains and merges adapters with it): `check_source` resolves where the weights come
from, `check_device` and `resolve_dtype` the device and dtype, `load_checkpoint` loads them.

A TALE-PT output folder (``training/checkpoints.py``) whose run has not finished is refused unless
``allow_unfinished``: until ``tale_pt.json`` is written, last, its adapter files may be missing,
cut short, or left from an earlier attempt.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..._optional import require
from ...core.errors import TaleTypeError, TaleValueError
from ..embedded import EMBEDDED_MODEL_NAME
from .settings import DTYPE_NAMES

torch = require("torch", extra="hf", purpose="the local Hugging Face backend")
transformers = require("transformers", extra="hf", purpose="the local Hugging Face backend")

__all__ = ["Source", "check_device", "check_source", "config_window", "load_checkpoint", "resolve_dtype"]


@dataclass(frozen=True, slots=True)
class Source:
    """Where the weights come from: a base model (path or hub id) and an optional LoRA adapter."""

    base: str | None  # None: the embedded model
    adapter: str | None = None


def _is_hub_id(text: str) -> bool:
    return text.count("/") == 1 and not text.startswith((".", "/", "~")) and os.sep == "/"


def _check_weights(path: Path, argument: str, pattern: str) -> None:
    if any(path.glob(pattern)):
        return
    pickled = sorted(p.name for p in path.glob("*.bin")) + sorted(p.name for p in path.glob("*.pt"))
    if pickled:
        raise TaleValueError(
            f"{argument}={str(path)!r} holds only pickle weights ({', '.join(pickled[:3])}); only safetensors are "
            "loaded (pickle files can run code). Convert them, e.g. load once and save_pretrained(..., "
            "safe_serialization=True)"
        )
    raise TaleValueError(f"{argument}={str(path)!r} has no safetensors weights ({pattern})")


def _adapter_base(adapter: Path) -> str:
    try:
        config = json.loads((adapter / "adapter_config.json").read_text())
    except (OSError, ValueError) as exc:
        raise TaleValueError(f"adapter={str(adapter)!r}: unreadable adapter_config.json ({exc})") from exc
    base = config.get("base_model_name_or_path")
    if not base:
        raise TaleValueError(f"adapter={str(adapter)!r} does not name its base model; pass base=PATH")
    return base


#: What a TALE-PT output folder holds (``training/checkpoints.py``): ``run.json`` (kind ``tale-pt``,
#: written first), ``checkpoints/`` while training, ``tale_pt.json`` once the run is complete.
_RUN_FILE, _CHECKPOINTS_DIR, _FINISHED_FILE = "run.json", "checkpoints", "tale_pt.json"


def _check_finished(path: Path, argument: str) -> None:
    """Refuse a TALE-PT output folder whose training has not finished (no ``tale_pt.json``)."""
    if (path / _FINISHED_FILE).is_file() or not path.is_dir():
        return
    try:
        is_run = json.loads((path / _RUN_FILE).read_text(encoding="utf-8")).get("kind") == "tale-pt"
    except (OSError, ValueError, AttributeError):
        is_run = False
    if is_run or (path / _CHECKPOINTS_DIR).is_dir():
        raise TaleValueError(
            f"{argument}={str(path)!r} is a TALE-PT training run that has not finished (no {_FINISHED_FILE}, which "
            "training writes last), so its adapter may be missing or partial. Finish it by running the same "
            "`tale train` command again (it resumes from its latest checkpoint), or pass allow_unfinished=True to "
            "load what is there"
        )


def check_source(model: Any, adapter: Any = None, *, allow_unfinished: bool = False) -> Source:
    """Validate the paths early (at construction, before any weights load).

    Args:
        model: A model folder, an adapter folder, a hub id, or None (the embedded model).
        adapter: A LoRA adapter folder to apply on ``model`` (or on the base it names).
        allow_unfinished: Accept a TALE-PT output folder whose training has not finished.

    Raises:
        TaleValueError: among others, a TALE-PT run folder that is not finished (the message names
            it and the fix).
    """
    if adapter is not None:
        if not isinstance(adapter, (str, os.PathLike)):
            raise TaleTypeError(f"adapter must be a path, got {type(adapter).__name__}")
        adapter_path = Path(os.fspath(adapter)).expanduser()
        if not allow_unfinished:
            _check_finished(adapter_path, "adapter")
        if not (adapter_path / "adapter_config.json").is_file():
            what = "does not exist" if not adapter_path.exists() else "has no adapter_config.json"
            raise FileNotFoundError(f"adapter={str(adapter_path)!r} {what}; pass a PEFT LoRA adapter folder")
        _check_weights(adapter_path, "adapter", "adapter_model*.safetensors")
        base = model if model is not None else _adapter_base(adapter_path)
        return Source(base=_check_base(base, "model" if model is not None else "the adapter's base_model_name_or_path"),
                      adapter=str(adapter_path))
    if model is None:
        return Source(base=None)
    if not isinstance(model, (str, os.PathLike)):
        raise TaleTypeError(f"model must be a path or a hub id, got {type(model).__name__}")
    path = Path(os.fspath(model)).expanduser()
    if not allow_unfinished:
        _check_finished(path, "model")
    if (path / "adapter_config.json").is_file() and not (path / "config.json").is_file():
        return check_source(None, path, allow_unfinished=True)  # an adapter folder given as the model (checked)
    return Source(base=_check_base(os.fspath(model), "model"))


def _check_base(base: Any, argument: str) -> str:
    source = os.fspath(base)
    path = Path(source).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise TaleValueError(
                f"{argument}={source!r} is not a Hugging Face model folder (no config.json in it); pass the "
                "folder that holds config.json and the safetensors weights"
            )
        _check_weights(path, argument, "*.safetensors")
        return str(path)
    head = Path(source).parts[0] if Path(source).parts else ""
    if _is_hub_id(source) and Path(head).expanduser().is_dir():
        raise FileNotFoundError(
            f"{argument}={source!r} does not exist; {head}/ is a local folder, so this names a path, not a hub id. "
            "Pass an existing local Hugging Face model folder"
        )
    if not _is_hub_id(source):
        raise FileNotFoundError(
            f"{argument}={source!r} does not exist; pass a local Hugging Face model folder, or leave "
            f"model unset to use the embedded {EMBEDDED_MODEL_NAME}"
        )
    return source


def check_device(device: Any) -> str:
    """Validate ``device`` before anything loads: a device torch knows, and present on this machine.

    Raises:
        ValueError: an unknown device, or a CUDA device on a machine without one (rather than running
            silently somewhere else).
    """
    if not isinstance(device, str) or not device.strip():
        raise TaleTypeError(f"device must be a string such as 'cpu', 'cuda' or 'cuda:1', got {device!r}")
    if device == "auto":
        return device
    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise TaleValueError(f"device={device!r} is not a device torch knows; pass 'cpu', 'cuda' or 'cuda:N'") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise TaleValueError(
                f"device={device!r}, but no CUDA device is available here (torch {torch.__version__}, "
                f"CUDA build {torch.version.cuda or 'none'}); pass device='cpu' or leave device unset"
            )
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise TaleValueError(f"device={device!r}, but this machine has {torch.cuda.device_count()} CUDA device(s); "
                             f"pass cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return device


def resolve_dtype(dtype: Any, device: str) -> Any:
    """bfloat16 on CUDA and float32 on CPU unless the caller chose."""
    if dtype is None:
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPE_NAMES:
        raise TaleValueError(f"dtype must be one of {sorted(DTYPE_NAMES)} or a torch.dtype, got {dtype!r}")
    name = DTYPE_NAMES[dtype]
    return name if name == "auto" else getattr(torch, name)


def config_window(config: Any) -> int:
    """A model config's maximum sequence length, prompt included (2048 where the config names none)."""
    window = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    return int(window) if window else 2048


def load_checkpoint(
    base: str, adapter: str | None, *, device: str, dtype: Any, merge: bool, trust_remote_code: bool
) -> tuple[Any, Any]:
    """Load (model, tokenizer); with an adapter, a PEFT model (merged into plain weights if ``merge``)."""
    kwargs: dict[str, Any] = {"dtype": dtype, "use_safetensors": True, "trust_remote_code": trust_remote_code}
    if device == "auto" or device == "cuda":
        kwargs["device_map"] = "auto"
    elif device.startswith("cuda"):
        kwargs["device_map"] = {"": device}
    tokenizer_source = adapter if adapter and (Path(adapter) / "tokenizer_config.json").is_file() else base
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_source, trust_remote_code=trust_remote_code)
        model = transformers.AutoModelForCausalLM.from_pretrained(base, **kwargs)
    except ImportError:
        raise
    except Exception as exc:  # corrupt weights surface as several library-specific types
        raise OSError(f"could not load the model from {base!r}: {exc}") from exc
    if "device_map" not in kwargs:
        model.to(device)
    if adapter is None:
        return model, tokenizer
    peft = require("peft", extra="hf", purpose="loading LoRA adapters")
    try:
        model = peft.PeftModel.from_pretrained(model, adapter, is_trainable=False)
    except Exception as exc:  # shape mismatches come as RuntimeError, missing modules as ValueError
        raise TaleValueError(
            f"adapter={adapter!r} does not fit the base model {base!r}: {exc}. Pass the base it was trained "
            "on (its adapter_config.json names it as base_model_name_or_path)"
        ) from exc
    if merge:
        model = model.merge_and_unload()
    return model, tokenizer
