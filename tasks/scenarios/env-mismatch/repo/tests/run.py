"""The project's test runner: `python tests/run.py` runs every check_* function of tests/test_*.py.

There is no pytest here. A test module with no check_* function fails, so that a test written for another
runner cannot pass by being ignored.
"""

import importlib.util
import sys
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_module(path):
    """Run one module's checks; return (passed, failed)."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception:
        traceback.print_exc()
        print(f"FAIL {path.name}: import error")
        return 0, 1
    checks = sorted(
        (name, fn) for name, fn in vars(module).items() if name.startswith("check_") and callable(fn)
    )
    if not checks:
        others = sorted(name for name in vars(module) if name.startswith("test_")) or ["none"]
        print(f"FAIL {path.name}: no check_* functions (found: {', '.join(others)})")
        return 0, 1
    passed = failed = 0
    for name, fn in checks:
        try:
            fn()
        except Exception:
            traceback.print_exc()
            print(f"FAIL {path.name}::{name}")
            failed += 1
        else:
            print(f"ok   {path.name}::{name}")
            passed += 1
    return passed, failed


def main():
    sys.path.insert(0, str(ROOT))
    passed = failed = 0
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        p, f = run_module(path)
        passed, failed = passed + p, failed + f
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
