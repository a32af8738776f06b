import importlib
import inspect
import pkgutil
import unittest

import shapes
from shapes.registry import REGISTRY


class RegistryTest(unittest.TestCase):
    def test_every_public_function_is_registered(self):
        for info in pkgutil.iter_modules(shapes.__path__, "shapes."):
            module = importlib.import_module(info.name)
            for name, fn in inspect.getmembers(module, inspect.isfunction):
                dotted = f"{module.__name__}.{name}"
                if (
                    fn.__module__ != module.__name__
                    or name.startswith("_")
                    or dotted == "shapes.registry.register"
                ):
                    continue
                with self.subTest(function=dotted):
                    self.assertIn(dotted, REGISTRY, f"{dotted} is public but not registered")
