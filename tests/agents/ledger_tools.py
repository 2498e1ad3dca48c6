"""Python tools for the tool fault test: each call appends one ledger line.

The ledger is the file named by ``TOOL_LEDGER``; a line per performance, so a
test can tell a call that ran twice from one that ran once.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from agents.tools import tool


@tool(effect="irreversible")
def step(n: int) -> dict[str, int]:
    """Perform step n of the plan (appends it to the ledger).

    Args:
        n: The step's number.
    """
    with Path(os.environ["TOOL_LEDGER"]).open("a") as f:
        f.write(f"step-{n}\n")
    return {"step": n, "done": True}


TOOLS = [step]


@tool(effect="read")
async def nap(seconds: float) -> str:
    """Sleep, then say so (a tool that can outlast its timeout).

    Args:
        seconds: How long to sleep.
    """
    await asyncio.sleep(seconds)
    return "rested"


SLOW = [nap]
