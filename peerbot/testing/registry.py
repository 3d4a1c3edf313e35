"""A local container registry (the Distribution API v2 a puller uses), for ``peerbot doctor``'s image check.

As strict as ghcr.io or Docker Hub where a client can tell:

- **Anonymous token flow**: ``GET /v2/<name>/manifests/<reference>`` without a token answers 401 with
  ``WWW-Authenticate: Bearer realm=".../token",service="...",scope="repository:<name>:pull"``; the client
  asks the realm for a token and tries again with ``Authorization: Bearer <token>``. A token is good for the
  repositories its scope named, nothing else.
- **Private images**: an anonymous token does not open them (401 ``UNAUTHORIZED``), as on ghcr.io.
- **Unknown images and tags**: 404 ``MANIFEST_UNKNOWN`` (or ``NAME_UNKNOWN``), errors shaped as the
  Distribution spec says (``{"errors": [{"code", "message", "detail"}]}``).
- **HEAD** works like GET without a body; the manifest's digest is in ``Docker-Content-Digest``.

Usage::

    with RegistryStandIn() as registry:
        registry.add_image("peerbot-ai/peerbot-worker", "0.1.0")
        reference = registry.reference("peerbot-ai/peerbot-worker", "0.1.0")  # 127.0.0.1:PORT/...:0.1.0
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import secrets
import threading
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final, Self

from aiohttp import web

MANIFEST_TYPE: Final = "application/vnd.oci.image.manifest.v1+json"
SERVICE: Final = "registry.standin"
#: Seconds start() waits for the server thread to listen.
START_TIMEOUT_SECONDS: Final = 10.0
_SCOPE = re.compile(r"^repository:(?P<name>[a-z0-9._/-]+):(?P<actions>[a-z,*]+)$")


@dataclass
class _Image:
    tags: dict[str, str] = field(default_factory=dict)  # tag -> digest
    private: bool = False


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    body = {"errors": [{"code": code, "message": message, "detail": None}]}
    return web.json_response(body, status=status, headers=headers)


class RegistryStandIn:
    """A registry on 127.0.0.1 (see the module docstring); ``start()``/``stop()`` or ``with``."""

    def __init__(self) -> None:
        self._images: dict[str, _Image] = {}
        self._tokens: dict[str, frozenset[str]] = {}  # token -> repositories it may pull
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._stopped: asyncio.Event | None = None
        self.requests: list[tuple[str, str, bool]] = []  # method, path, had a token

    # --- set-up -------------------------------------------------------------------------------------------

    def add_image(self, name: str, tag: str, *, private: bool = False) -> str:
        """Publish ``name:tag``; returns its digest."""
        digest = "sha256:" + hashlib.sha256(f"{name}:{tag}".encode()).hexdigest()
        with self._lock:
            image = self._images.setdefault(name, _Image())
            image.tags[tag] = digest
            image.private = private
        return digest

    @property
    def host(self) -> str:
        if self._port is None:
            raise RuntimeError("the registry stand-in is not running: call start() first")
        return f"127.0.0.1:{self._port}"

    def reference(self, name: str, tag: str) -> str:
        """An image reference pointing here (``127.0.0.1:PORT/name:tag``)."""
        return f"{self.host}/{name}:{tag}"

    # --- lifecycle ----------------------------------------------------------------------------------------

    def start(self) -> Self:
        ready = threading.Event()
        failure: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, args=(ready, failure), name="registry", daemon=True)
        self._thread.start()
        if not ready.wait(START_TIMEOUT_SECONDS) or failure:
            raise RuntimeError(f"the registry stand-in did not start: {failure}")
        return self

    def stop(self) -> None:
        loop, stopped = self._loop, self._stopped
        if loop is not None and stopped is not None and loop.is_running():
            loop.call_soon_threadsafe(stopped.set)
        if self._thread is not None:
            self._thread.join(START_TIMEOUT_SECONDS)
        self._thread = None
        self._port = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _run(self, ready: threading.Event, failure: list[BaseException]) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stopped = asyncio.Event()
            app = web.Application()
            app.router.add_get("/token", self._token)
            app.router.add_get("/v2/", self._base)
            app.router.add_route("*", r"/v2/{name:.+}/manifests/{reference}", self._manifest)
            self._runner = web.AppRunner(app, access_log=None)
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            await site.start()
            sockets = getattr(site._server, "sockets", None) or []
            self._port = sockets[0].getsockname()[1]
            ready.set()
            await self._stopped.wait()
            await self._runner.cleanup()

        try:
            asyncio.run(main())
        except BaseException as error:  # reported to start()
            failure.append(error)
            ready.set()

    # --- handlers -----------------------------------------------------------------------------------------

    def _challenge(self, request: web.Request, name: str | None) -> dict[str, str]:
        realm = f"http://{request.host}/token"
        scope = f',scope="repository:{name}:pull"' if name else ""
        return {"WWW-Authenticate": f'Bearer realm="{realm}",service="{SERVICE}"{scope}'}

    def _granted(self, request: web.Request) -> frozenset[str] | None:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            return None
        with self._lock:
            return self._tokens.get(token.strip())

    async def _token(self, request: web.Request) -> web.Response:
        if request.query.get("service") != SERVICE:
            return _error(400, "UNSUPPORTED", f"service must be {SERVICE}")
        names = set()
        for scope in request.query.getall("scope", []):
            match = _SCOPE.match(scope)
            if match is None:
                return _error(400, "UNSUPPORTED", f"malformed scope {scope!r}")
            names.add(match.group("name"))
        token = secrets.token_urlsafe(24)
        with self._lock:
            # Anonymous: public repositories only.
            self._tokens[token] = frozenset(
                name for name in names if name in self._images and not self._images[name].private
            )
        return web.json_response({"token": token, "access_token": token, "expires_in": 300})

    async def _base(self, request: web.Request) -> web.Response:
        if self._granted(request) is None:
            return _error(401, "UNAUTHORIZED", "authentication required", self._challenge(request, None))
        return web.json_response({})

    async def _manifest(self, request: web.Request) -> web.StreamResponse:
        name, reference = request.match_info["name"], request.match_info["reference"]
        granted = self._granted(request)
        self.requests.append((request.method, request.path, granted is not None))
        if request.method not in ("GET", "HEAD"):
            return _error(405, "UNSUPPORTED", "the stand-in serves pulls only")
        if granted is None:
            return _error(401, "UNAUTHORIZED", "authentication required", self._challenge(request, name))
        with self._lock:
            image = self._images.get(name)
            digest = None
            if image is not None:
                digest = image.tags.get(reference) or (
                    reference if reference in image.tags.values() else None
                )
        if image is not None and image.private and name not in granted:
            return _error(401, "UNAUTHORIZED", "authentication required", self._challenge(request, name))
        if name not in granted and image is None:
            # A registry does not say whether a repository exists to someone who may not see it.
            return _error(401, "UNAUTHORIZED", "authentication required", self._challenge(request, name))
        if image is None:
            return _error(404, "NAME_UNKNOWN", f"repository {name} not known to registry")
        if digest is None:
            return _error(404, "MANIFEST_UNKNOWN", f"manifest unknown: {name}:{reference}")
        body = json.dumps({"schemaVersion": 2, "mediaType": MANIFEST_TYPE, "layers": []}).encode()
        headers = {"Docker-Content-Digest": digest, "Content-Type": MANIFEST_TYPE}
        if request.method == "HEAD":
            return web.Response(status=200, headers={**headers, "Content-Length": str(len(body))})
        return web.Response(status=200, body=body, headers=headers)


def parse_challenge(header: str) -> dict[str, Any]:
    """``Bearer realm="...",service="..."`` as a dict (for tests)."""
    scheme, _, rest = header.partition(" ")
    values = dict(re.findall(r'(\w+)="([^"]*)"', rest))
    return {"scheme": scheme, **values}


__all__ = ["RegistryStandIn", "parse_challenge"]
