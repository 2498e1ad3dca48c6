"""``bb local-model``: the bundled small model, served for the local lane."""

from __future__ import annotations

import os
import subprocess
from typing import Annotated

import typer

from blackboard.cli.common import DEPLOY, JsonOpt, app, emit_json, fail, me
from blackboard.errors import BlackboardError

local_model_app = typer.Typer(
    help="The bundled SmolLM2-135M model, served over the OpenAI API (extra: "
    "local-model)."
)
app.add_typer(local_model_app, name="local-model", rich_help_panel=DEPLOY)


@local_model_app.command()
def serve(
    host: Annotated[str, typer.Option("--host", help="Where to listen.")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option("--port", help="Port to listen on.")] = 8799,
) -> None:
    """Serve the bundled model (llama.cpp's OpenAI-compatible server) until ^C.

    Prints the two variables that point the local lane at it.
    """
    from agents import local_model

    if not 0 < port < 65536:
        fail(f"--port {port}: give 1-65535", 2)
    try:
        cmd = local_model.server_command(host=host, port=port)
    except BlackboardError as e:
        fail(str(e))
    typer.echo(
        f"serving {local_model.MODEL} at http://{host}:{port}/v1; point the local"
        f" lane at it:\n  export BB_LOCAL_BASE_URL=http://{host}:{port}/v1"
        f" BB_LOCAL_MODEL={local_model.MODEL}",
        err=True,
    )
    try:
        code = subprocess.call(cmd, env=os.environ.copy())
    except KeyboardInterrupt:
        code = 0
    raise typer.Exit(code)


@local_model_app.command()
def info(as_json: JsonOpt = False) -> None:
    """Where the bundled model is, and whether it can be served."""
    from agents import local_model

    missing = local_model.missing()
    try:
        path = str(local_model.gguf_path())
        size = os.path.getsize(path)
    except BlackboardError:
        path, size = None, None
    out = {
        "model": local_model.MODEL,
        "gguf": path,
        "bytes": size,
        "missing": missing,
        "servable": not missing,
    }
    if as_json:
        emit_json(out)
        return
    typer.echo(f"model    {local_model.MODEL}")
    typer.echo(f"gguf     {path or '-'}" + (f" ({size:,} bytes)" if size else ""))
    if missing:
        typer.echo(f"missing  {', '.join(missing)}: {local_model.INSTALL}")
    else:
        typer.echo(f"serve it {me()} local-model serve [--port 8799]")
