"""Every error we raise on purpose is in one tree, drawn in blackboard.errors."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import blackboard
from blackboard import errors
from blackboard.errors import BlackboardError

PACKAGES = ["blackboard", "agents", "projections", "replay"]


def our_exceptions() -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for name in PACKAGES:
        pkg = importlib.import_module(name)
        for mod in pkgutil.walk_packages(pkg.__path__, f"{name}."):
            if mod.name.endswith("__main__"):
                continue
            module = importlib.import_module(mod.name)
            for attr, obj in vars(module).items():
                if (
                    inspect.isclass(obj)
                    and issubclass(obj, BaseException)
                    and obj.__module__ == module.__name__
                    and not attr.startswith("_")
                ):
                    found[f"{module.__name__}.{attr}"] = obj
    return found


def test_every_public_error_is_rooted_in_blackboard_error_and_drawn():
    found = our_exceptions()
    assert len(found) > 20
    outside = [n for n, cls in found.items() if not issubclass(cls, BlackboardError)]
    assert outside == []
    tree = errors.__doc__ or ""
    missing = [n for n, cls in found.items() if cls.__name__ not in tree]
    assert missing == []
    assert blackboard.BlackboardError is BlackboardError
