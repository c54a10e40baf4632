"""`scripts/make_corpus.py` imported as a module, for the tests of its functions."""

import importlib.util
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "make_corpus.py"


def load_make_corpus():
    spec = importlib.util.spec_from_file_location("make_corpus", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    # Registered so its functions pickle by name into the synthesis worker processes.
    sys.modules["make_corpus"] = module
    spec.loader.exec_module(module)
    return module
