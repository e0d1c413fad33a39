"""``dmn-demo``: try a trained DMN in the browser (a Gradio page on this machine)."""

from __future__ import annotations

import importlib.util
import sys
from enum import Enum
from typing import Annotated, Optional

import typer

from .errors import err_console, user_errors

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False,
                  help="Serve a web page where you upload an image, type phrases and see what "
                       "the model segments (overlay, masks, heat maps, per-word dynamic filters).")
Opt = typer.Option


class Dtype(str, Enum):
    fp32 = "fp32"
    bf16 = "bf16"


@app.command()
@user_errors
def demo_cmd(
    model: Annotated[str, Opt(help="Model folder (dmn-export), run directory, checkpoint "
                              "file or Hugging Face Hub repo id (user/name).")] = ...,
    host: Annotated[str, Opt(help="Address to listen on; 0.0.0.0 makes the page reachable "
                             "from other machines.")] = "127.0.0.1",
    port: Annotated[int, Opt(min=1, max=65535, help="TCP port.")] = 7860,
    device: Annotated[Optional[str], Opt(help="cpu, cuda, cuda:1… (default: cuda if "
                                         "available).")] = None,
    dtype: Annotated[Dtype, Opt(help="bf16 = autocast on the device.")] = Dtype.fp32,
    max_megapixels: Annotated[float, Opt(min=0.01, help="Refuse larger images (with a "
                                         "message in the page).")] = 50.0,
    local_files_only: Annotated[bool, Opt("--local-files-only", help="Hub ids: use the local "
                                          "cache only (as HF_HUB_OFFLINE=1).")] = False,
    revision: Annotated[Optional[str], Opt(help="Hub ids: branch, tag or commit.")] = None,
) -> None:
    """dmn-demo --model X [--host 127.0.0.1] [--port 7860]; Ctrl-C stops it."""
    if importlib.util.find_spec("gradio") is None:
        raise ValueError("the demo needs Gradio: pip install 'dmn[demo]'")
    from dmn_model import Segmenter

    from .demo import serve

    seg = Segmenter.from_pretrained(model, device=device, dtype=dtype.value,
                                    local_files_only=local_files_only, revision=revision)
    err_console.print(f"loaded {model} ({len(seg.vocab)} words) on {seg.device}; starting the "
                      "server…", highlight=False)
    try:
        demo = serve(seg, host, port, model_name=str(model),
                     max_pixels=int(max_megapixels * 1e6), block=False)
    except OSError as exc:
        # Gradio says "Cannot find empty port in range: 7860-7860" for a port in use.
        raise ValueError(f"cannot listen on {host}:{port} ({exc}); pick another --port") from None
    err_console.print(f"DMN demo on {demo.local_url}  (Ctrl-C stops it)", highlight=False)
    try:
        demo.block_thread()
    finally:
        demo.close()


def main() -> None:
    app(prog_name="dmn-demo")


if __name__ == "__main__":
    sys.exit(main())
