"""`aitn node serve`: the node's aiocoap server, OSCORE-wrapped, with the round clock."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

from .block1 import MAX_BODY
from .resources import build_site
from .rounds import RoundConfig
from .incentives import IncentiveConfig
from .service import NodeService

log = logging.getLogger("aitn.node")
TICK_SECONDS = 1.0


def parse_listen(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"--listen {text!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


async def serve(folder: Path, listen: tuple[str, int], cfg: RoundConfig, board: str = "",
                ready=None, stop: asyncio.Event | None = None, max_body: int = MAX_BODY,
                incentives: IncentiveConfig = IncentiveConfig()) -> None:
    import aiocoap
    from aiocoap.credentials import CredentialsMap
    from aiocoap.oscore_sitewrapper import OscoreSiteWrapper

    service = NodeService(folder, cfg, CredentialsMap(), board, incentives)
    site = OscoreSiteWrapper(build_site(service, max_body), service.credentials)
    ctx = await aiocoap.Context.create_server_context(site, bind=listen)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("node 0x%s serving on %s:%d, round %d", service.key.address.hex(), *listen, service.rounds.current.id)
    if ready is not None:
        ready(service)
    try:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), TICK_SECONDS)
            except asyncio.TimeoutError:
                service.rounds.tick()
                service.incentives.tick()
    finally:
        await ctx.shutdown()
        service.close()
