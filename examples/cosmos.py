"""GNA on Cosmos-1.0 7B 704p with torch.compile, no model code changes.

    python examples/cosmos.py                  # random weights; full config on a GPU, tiny on CPU
    python examples/cosmos.py --checkpoint DIR # a local diffusers checkpoint of the transformer
"""

from run_model import main

if __name__ == "__main__":
    raise SystemExit(main("cosmos"))
