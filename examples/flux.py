"""GNA on FLUX.1-dev 4K with torch.compile, no model code changes.

    python examples/flux.py                  # random weights; full config on a GPU, tiny on CPU
    python examples/flux.py --checkpoint DIR # a local diffusers checkpoint of the transformer
"""

from run_model import main

if __name__ == "__main__":
    raise SystemExit(main("flux"))
