"""The node's CoAP resources (aiocoap). Application only: the wire is aiocoap's, the rules are service.py's.

    /.well-known/core   CoRE Link Format list of the below (RFC 6690)
    /enroll      POST   signed enrollment request -> signed answer with the node's key share
    /round       GET    the current round (CBOR), observable
    /model       GET    the current global weights (AITW), block-wise
    /update      POST   a signed update item (block-wise), OSCORE only
    /manifest    POST   a signed dataset-manifest item, OSCORE only
    /report      POST   a signed work-utility report item, OSCORE only
    /allocation  GET    the latest signed allocation statement (CBOR); ?cycle=N for cycle N; 4.04 if none
    /status      GET    JSON for operators
    /demand      POST   open a group round on the demand server's model; GET: its state and aggregate (loopback)

Errors become CoAP errors with a diagnostic payload: unknown device 4.01, bad signature 4.03,
malformed CBOR, schema violations, sequence conflicts and rejected updates 4.00.
"""

from __future__ import annotations

import ipaddress
import json
import logging

import aiocoap
from aiocoap import resource
from aiocoap.numbers.contentformat import ContentFormat

from ..uplink.errors import BadSignature, MessageError, SequenceConflict, UnknownDevice
from ..utility.errors import ReportRefused
from .block1 import MAX_BODY, Block1Receiver
from .fedavg import UpdateRejected
from .fedbuff import StaleUpdate
from .service import NodeService

log = logging.getLogger("aitn.node")
CBOR = ContentFormat.CBOR
_ERRORS = ((UnknownDevice, aiocoap.UNAUTHORIZED), (BadSignature, aiocoap.FORBIDDEN),
           (MessageError, aiocoap.BAD_REQUEST), (SequenceConflict, aiocoap.BAD_REQUEST),
           (UpdateRejected, aiocoap.BAD_REQUEST), (StaleUpdate, aiocoap.BAD_REQUEST),
           (ReportRefused, aiocoap.BAD_REQUEST))


def _refuse(service: NodeService, e: Exception, kind: str) -> aiocoap.Message:
    """Count the refusal and answer it: the error's code, its reason as the diagnostic payload."""
    service.refused(e, kind)
    return aiocoap.Message(code=_code_for(e), payload=str(e).encode()[:1024], content_format=ContentFormat.TEXT)


def _oscore_sid(request) -> bytes | None:
    """The OSCORE recipient id the request was protected with, or None for an unprotected request."""
    ctx = getattr(request.remote, "security_context", None)
    return None if ctx is None else ctx.recipient_id


class Enroll(resource.Resource):
    rt = "aitn.enroll"

    def __init__(self, service: NodeService) -> None:
        super().__init__()
        self.service = service

    async def render_post(self, request):
        try:
            answer = self.service.enroll(request.payload)
        except tuple(e for e, _ in _ERRORS) as e:
            return _refuse(self.service, e, "enroll")
        return aiocoap.Message(code=aiocoap.CHANGED, payload=answer, content_format=CBOR)


class RoundResource(resource.ObservableResource):
    rt = "aitn.round"

    def __init__(self, service: NodeService) -> None:
        super().__init__()
        self.service = service
        service.rounds.listeners.append(lambda _r: self.updated_state())

    async def render_get(self, request):
        return aiocoap.Message(payload=self.service.round_message(_oscore_sid(request)), content_format=CBOR)


class Model(resource.Resource):
    rt = "aitn.model"

    def __init__(self, service: NodeService) -> None:
        super().__init__()
        self.service = service

    async def render_get(self, request):
        # an enrolled device gets the slice of its width (HeteroFL); anyone else the full model
        return aiocoap.Message(payload=self.service.model_for(_oscore_sid(request)),
                               content_format=ContentFormat.OCTETSTREAM)


class Items(Block1Receiver):
    """POST of one signed item of ``kind``; answered 2.04 with CBOR {seq, status}.

    The body is assembled here (agent/node/block1.py: linear, bounded), and an unprotected request is
    refused at its first block, before anything is kept.
    """

    def __init__(self, service: NodeService, kind: str, max_body: int) -> None:
        super().__init__(max_body)
        self.service, self.kind = service, kind
        self.rt = f"aitn.{kind}"

    def admit(self, request):
        if _oscore_sid(request) is None:
            return _refuse(self.service, UnknownDevice("OSCORE required: enroll first, then send protected"),
                           self.kind)
        return None

    async def handle(self, request, body, blocks: int):
        sid = _oscore_sid(request)
        try:
            answer = self.service.receive(self.kind, sid, bytes(body))
        except tuple(e for e, _ in _ERRORS) as e:
            return _refuse(self.service, e, self.kind)
        return aiocoap.Message(code=aiocoap.CHANGED, payload=answer, content_format=CBOR)


class Demand(resource.Resource):
    """The node's own Flower ClientApp opens group rounds (POST) and collects their aggregate (GET).

    Loopback only and unprotected: the SuperNode runs on the node's own machine.
    """

    rt = "aitn.demand"

    def __init__(self, service: NodeService) -> None:
        super().__init__()
        self.service = service

    def _local(self, request) -> bool:
        if _oscore_sid(request) is not None:
            return False
        try:
            ip = ipaddress.ip_address(request.remote.sockaddr[0].split("%")[0])
        except (AttributeError, ValueError, IndexError, TypeError):
            return False
        mapped = getattr(ip, "ipv4_mapped", None)
        return ip.is_loopback or (mapped is not None and mapped.is_loopback)

    async def render_post(self, request):
        if not self._local(request):
            return _refuse(self.service, UnknownDevice("the demand bridge is loopback only"), "demand")
        try:
            answer = self.service.demand_open(request.payload)
        except MessageError as e:
            return _refuse(self.service, e, "demand")
        return aiocoap.Message(code=aiocoap.CREATED, payload=answer, content_format=CBOR)

    async def render_get(self, request):
        if not self._local(request):
            return _refuse(self.service, UnknownDevice("the demand bridge is loopback only"), "demand")
        return aiocoap.Message(payload=self.service.demand_status(), content_format=CBOR)


class Allocation(resource.Resource):
    rt = "aitn.allocation"

    def __init__(self, service: NodeService) -> None:
        super().__init__()
        self.service = service

    async def render_get(self, request):
        cycle = None
        for q in request.opt.uri_query:
            name, _, value = q.partition("=")
            if name != "cycle" or not value.isdigit():
                return aiocoap.Message(code=aiocoap.BAD_REQUEST, payload=f"unknown query {q!r}; ?cycle=N".encode())
            cycle = int(value)
        data = self.service.incentives.statement(cycle)
        if data is None:
            return aiocoap.Message(code=aiocoap.NOT_FOUND, payload=b"no allocation statement for that cycle yet")
        return aiocoap.Message(payload=data, content_format=CBOR)


class Status(resource.Resource):
    rt = "aitn.status"

    def __init__(self, service: NodeService) -> None:
        super().__init__()
        self.service = service

    async def render_get(self, request):
        return aiocoap.Message(payload=json.dumps(self.service.status(), sort_keys=True).encode(),
                               content_format=ContentFormat.JSON)


def _code_for(e: Exception):
    for cls, code in _ERRORS:
        if isinstance(e, cls):
            return code
    return aiocoap.INTERNAL_SERVER_ERROR


def build_site(service: NodeService, max_body: int = MAX_BODY) -> resource.Site:
    site = resource.Site()
    site.add_resource([".well-known", "core"], resource.WKCResource(site.get_resources_as_linkheader,
                                                                     impl_info=None))
    site.add_resource(["enroll"], Enroll(service))
    site.add_resource(["round"], RoundResource(service))
    site.add_resource(["model"], Model(service))
    for kind in ("update", "manifest", "report"):
        site.add_resource([kind], Items(service, kind, max_body))
    site.add_resource(["allocation"], Allocation(service))
    site.add_resource(["status"], Status(service))
    site.add_resource(["demand"], Demand(service))
    return site
