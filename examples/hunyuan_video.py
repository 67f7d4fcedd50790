"""GNA on HunyuanVideo 720p with torch.compile, no model code changes.

    python examples/hunyuan_video.py                  # random weights; full config on a GPU, tiny on CPU
    python examples/hunyuan_video.py --checkpoint DIR # a local diffusers checkpoint of the transformer
"""

from run_model import main

if __name__ == "__main__":
    raise SystemExit(main("hunyuan"))
