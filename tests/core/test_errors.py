"""Every error the package raises on purpose is a `TaleError` and keeps the built-in base it had before."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import tale_integrations
from tale_integrations.core import errors
from tale_integrations.core.errors import TaleError

#: Exception classes that are not errors a caller sees, with the reason each stays outside the family.
NOT_RAISED_TO_CALLERS = {
    # Control flow inside the server: raised when a waiting request's client disconnected and answered
    # by a handler in the same module; no caller ever catches it.
    "tale_integrations.serve.app._ClientGone",
}

#: The built-in base each named error had before the family existed (``except ValueError`` still works).
BUILTIN_BASE = {
    "TaleValueError": ValueError,
    "TaleTypeError": TypeError,
    "EstimatorError": RuntimeError,
    "PromptTooLongError": ValueError,
    "RunMismatchError": ValueError,
    "DatasetError": ValueError,
    "DatasetNotFoundError": FileNotFoundError,
    "RunLockedError": RuntimeError,
    "ConflictingSettings": TypeError,
    "LearnedEstimatorError": ValueError,
    "EmbeddedModelMissing": FileNotFoundError,
    "BatcherClosed": RuntimeError,
    "JobCancelled": Exception,
    "APIError": Exception,
}

#: The modules that raised each named error before it moved to ``core/errors.py``; they re-export it.
REEXPORTED_BY = {
    "EstimatorError": "tale_integrations.core.estimators",
    "PromptTooLongError": "tale_integrations.core.generation",
    "RunMismatchError": "tale_integrations.core.records",
    "DatasetError": "tale_integrations.eval.datasets",
    "LearnedEstimatorError": "tale_integrations.core.learned",
    "DatasetNotFoundError": "tale_integrations.core.datasets",
    "ConflictingSettings": "tale_integrations.backends.hf.settings",
    "EmbeddedModelMissing": "tale_integrations.backends.embedded",
    "BatcherClosed": "tale_integrations.serve.batcher",
    "JobCancelled": "tale_integrations.serve.batcher",
}


def _package_exceptions() -> tuple[dict[str, type[BaseException]], list[str]]:
    """Every exception class defined at module level anywhere in the package, by qualified name, and the
    modules that could not be imported (an optional extra missing)."""
    found: dict[str, type[BaseException]] = {}
    missing: list[str] = []
    for info in pkgutil.walk_packages(tale_integrations.__path__, "tale_integrations.", onerror=missing.append):
        try:
            module = importlib.import_module(info.name)
        except ImportError as exc:
            missing.append(f"{info.name} ({exc})")
            continue
        for obj in vars(module).values():
            # warning categories are not errors: they are never raised to a caller
            if inspect.isclass(obj) and issubclass(obj, BaseException) and not issubclass(obj, Warning) \
                    and obj.__module__ == module.__name__:
                found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return found, missing


PACKAGE_EXCEPTIONS, UNIMPORTABLE = _package_exceptions()


def test_the_walk_sees_every_module():
    if UNIMPORTABLE:  # TALE_REQUIRE_ALL=1 turns this skip into a failure (tests/require_all.py)
        pytest.skip(f"could not import {', '.join(UNIMPORTABLE)}")
    assert "tale_integrations.core.errors.DatasetError" in PACKAGE_EXCEPTIONS
    assert "tale_integrations.serve.errors.APIError" in PACKAGE_EXCEPTIONS
    assert NOT_RAISED_TO_CALLERS <= PACKAGE_EXCEPTIONS.keys(), "an allow-listed class no longer exists"


@pytest.mark.parametrize("name", sorted(PACKAGE_EXCEPTIONS.keys() - NOT_RAISED_TO_CALLERS))
def test_every_package_error_is_a_tale_error(name):
    assert issubclass(PACKAGE_EXCEPTIONS[name], TaleError), f"{name} should derive from TaleError"


@pytest.mark.parametrize("name", sorted(BUILTIN_BASE))
def test_each_named_error_keeps_its_builtin_base(name):
    cls = next(c for q, c in PACKAGE_EXCEPTIONS.items() if q.rsplit(".", 1)[1] == name)
    assert issubclass(cls, TaleError)
    assert issubclass(cls, BUILTIN_BASE[name])


@pytest.mark.parametrize("name", sorted(REEXPORTED_BY))
def test_old_modules_reexport_the_same_class(name):
    module = importlib.import_module(REEXPORTED_BY[name])
    assert getattr(module, name) is getattr(errors, name)
    assert name in module.__all__


def test_catching_the_old_base_still_works():
    with pytest.raises(ValueError):
        raise errors.DatasetError("unknown data set 'x'")
    with pytest.raises(TaleError):
        raise errors.EstimatorError("estimator failed")
