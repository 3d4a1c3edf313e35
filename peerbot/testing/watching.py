"""List, then watch, one Kubernetes resource the way a controller does; for the stand-ins' kubelets.

:class:`ListWatch` lists the objects matching a label selector, hands each to ``consider``, then follows
a watch from the list's ``resourceVersion`` (resuming after each server timeout, listing again after 410
Gone), handing every event to ``consider`` with its type. Calls go through the async client with
``_preload_content=False``, which does not check the status: an error status is raised here, with the
server's answer, instead of being read as an empty list.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any, Final, cast

import aiohttp

#: A watch is re-opened after this many seconds, as real controllers do (the server ends it then).
WATCH_SECONDS: Final = 300

Consider = Callable[[str, dict[str, Any]], None]


async def checked(call: Awaitable[Any], what: str) -> aiohttp.ClientResponse:
    """The raw response of a ``_preload_content=False`` call; an error status raises with its body."""
    response = cast(aiohttp.ClientResponse, await call)
    if response.status != 200:
        body = (await response.read()).decode(errors="replace")
        response.release()
        raise RuntimeError(f"the API server answered {response.status} to the {what}: {body}")
    return response


class ListWatch:
    """List, then watch, one resource with a label selector; ``consider(event type, object)`` for each."""

    def __init__(
        self,
        list_call: Callable[..., Awaitable[Any]],
        namespace: str,
        selector: str,
        consider: Consider,
        *,
        what: str = "list or watch",
        listed: asyncio.Event | None = None,
    ) -> None:
        self._list = list_call
        self._namespace = namespace
        self._selector = selector
        self._consider = consider
        self._what = what
        #: Set once the first list has been handed over (the watch follows from there).
        self.listed = listed if listed is not None else asyncio.Event()

    async def run(self) -> None:
        while True:
            response = await checked(
                self._list(self._namespace, label_selector=self._selector, _preload_content=False), self._what
            )
            data = json.loads(await response.read())
            response.release()
            for item in data.get("items") or []:
                self._consider("ADDED", item)
            self.listed.set()
            version = str(data["metadata"]["resourceVersion"])
            while version:
                version = await self._follow(version)

    async def _follow(self, version: str) -> str:
        """Follow one watch; returns the version to resume from, or ``""`` to list again (410 Gone)."""
        response = await checked(
            self._list(
                self._namespace,
                label_selector=self._selector,
                watch=True,
                resource_version=version,
                allow_watch_bookmarks=True,
                timeout_seconds=WATCH_SECONDS,
                _preload_content=False,
                _request_timeout=WATCH_SECONDS + 30,
            ),
            self._what,
        )
        try:
            async for line in response.content:
                if not line.strip():
                    continue
                event = json.loads(line)
                obj = event.get("object") or {}
                if event.get("type") == "ERROR":
                    if obj.get("code") == 410:
                        return ""
                    raise RuntimeError(f"the {self._what} failed: {obj.get('message')}")
                version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
                if event.get("type") in ("ADDED", "MODIFIED", "DELETED"):
                    self._consider(str(event["type"]), obj)
        finally:
            response.release()
        return version
