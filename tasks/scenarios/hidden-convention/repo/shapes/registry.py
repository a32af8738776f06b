"""Every public function of the shapes package is registered here, by its dotted name.

Decorate each public function with `@register`; tests/test_registry.py fails any that is not.
"""

REGISTRY = {}


def register(fn):
    REGISTRY[f"{fn.__module__}.{fn.__name__}"] = fn
    return fn
