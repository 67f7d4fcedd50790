"""Load a repository script (benchmarks/, tools/) as a module, for tests of its functions."""

import importlib.util
import os


def load_script(relpath: str, name: str):
    path = os.path.join(os.path.dirname(__file__), "..", relpath)
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
