"""The load: simulated users driving a realistic mix through the gateway (browse, create projects, upload
avatars, generate with the provider stand-in sync and async, track usage, read history and balance, delete),
and sibling apps publishing `avatar.used` straight to RabbitMQ, some of it broken on purpose. Every request is
recorded with its times and status; every use and grant with whether the system acknowledged it."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aio_pika
import httpx

from lumiku_common.ids import new_id
from lumiku_common.settings import ServiceSettings
from lumiku_devtools.system.timeline import Exchange
from lumiku_devtools.testing import auth
from lumiku_generation.drawing import draw_png

APP = "/api/apps/avatar-creator"
RETRYABLE = frozenset({502, 503, 504})


@dataclass
class Record:
    """What the harness knows for the checker: requests, acknowledged grants and uses, broken events."""

    exchanges: list[Exchange] = field(default_factory=list)
    grants: Counter[str] = field(default_factory=Counter)
    accepted_uses: dict[str, set[str]] = field(default_factory=dict)
    uncertain_uses: dict[str, set[str]] = field(default_factory=dict)
    events_confirmed: int = 0
    injected: dict[str, str] = field(default_factory=dict)  # event id -> what is wrong with it
    actions: Counter[str] = field(default_factory=Counter)

    def use(self, avatar_id: str, reference: str, acknowledged: bool | None) -> None:
        """`acknowledged` None: sent, no definite answer (it may or may not have been recorded)."""
        if acknowledged is None:
            self.uncertain_uses.setdefault(avatar_id, set()).add(reference)
        elif acknowledged:
            self.accepted_uses.setdefault(avatar_id, set()).add(reference)


@dataclass
class User:
    id: str
    headers: dict[str, str]
    projects: list[str] = field(default_factory=list)
    avatars: dict[str, str] = field(default_factory=dict)  # avatar -> project
    jobs: list[str] = field(default_factory=list)  # async generations not seen finished


class Load:
    def __init__(self, gateway_url: str, settings: ServiceSettings, users: int, seed: int):
        self.settings, self.record, self.random = settings, Record(), random.Random(seed)
        self.client = httpx.AsyncClient(base_url=gateway_url, timeout=httpx.Timeout(60, connect=5))
        self.users = [User(f"sys-{seed}-{i}", auth(settings, f"sys-{seed}-{i}")) for i in range(users)]
        self.admin = auth(settings, "sys-admin", "admin")
        self.retired: set[str] = set()  # avatars being deleted: no use is sent for them from then on
        self.images = [draw_png(f"upload {i}", i, 96, 96) for i in range(4)]
        self._connection: aio_pika.abc.AbstractRobustConnection | None = None
        self._exchange: aio_pika.abc.AbstractExchange | None = None

    async def __aenter__(self) -> Load:
        # A sibling app's own connection, straight to the broker (not through the cut proxy).
        self._connection = await aio_pika.connect_robust(self.settings.amqp_url)
        channel = await self._connection.channel(publisher_confirms=True)
        kind = aio_pika.ExchangeType.TOPIC
        self._exchange = await channel.declare_exchange(self.settings.events_exchange, kind, durable=True)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.aclose()
        if self._connection is not None:
            await self._connection.close()

    # --- the plumbing ----------------------------------------------------------------------------------

    async def call(self, route: str, method: str, url: str, **kwargs: Any) -> httpx.Response | None:
        started = time.monotonic()
        try:
            response = await self.client.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            self.record.exchanges.append(Exchange(started, time.monotonic(), method, route, None, repr(exc)))
            await asyncio.sleep(0.5)  # a client backs off when nothing answers (the gateway is down)
            return None
        detail = response.text[:200] if response.status_code >= 400 else ""
        self.record.exchanges.append(Exchange(started, time.monotonic(), method, route, response.status_code, detail))
        return response

    async def until_definite(
        self, route: str, method: str, url: str, tries: int = 8, **kw: Any
    ) -> httpx.Response | None:
        """Repeats an idempotent request (same Idempotency-Key) through outages until it gets a definite answer."""
        for attempt in range(tries):
            response = await self.call(route, method, url, **kw)
            if response is not None and response.status_code not in RETRYABLE:
                return response
            await asyncio.sleep(min(0.5 * 2**attempt, 4))
        return None

    async def publish(self, body: bytes, message_id: str, routing_key: str = "avatar.used") -> bool:
        assert self._exchange is not None
        message = aio_pika.Message(
            body, message_id=message_id, content_type="application/json", delivery_mode=aio_pika.DeliveryMode.PERSISTENT
        )
        try:
            await self._exchange.publish(message, routing_key, mandatory=True, timeout=10)
        except (TimeoutError, aio_pika.exceptions.AMQPError, ConnectionError):
            return False
        return True

    # --- the mix ------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Every user starts with a top-up (and the signup bonus, paid when the grant opens the wallet)."""
        await asyncio.gather(*(self.grant(user, 300) for user in self.users))

    async def run(self, stop: asyncio.Event) -> None:
        await asyncio.gather(*(self._user_loop(user, stop) for user in self.users), self._sibling(stop))

    async def _user_loop(self, user: User, stop: asyncio.Event) -> None:
        actions = {
            self.browse: 20,
            self.create_project: 4,
            self.upload: 12,
            self.generate: 5,
            self.track_usage: 14,
            self.use_by_event: 14,
            self.history: 8,
            self.balance: 8,
            self.follow_jobs: 4,
            self.delete_avatar: 3,
            self.delete_project: 1,
        }
        choices, weights = list(actions), list(actions.values())
        while not stop.is_set():
            action = self.random.choices(choices, weights)[0]
            self.record.actions[action.__name__] += 1
            await action(user)
            await asyncio.sleep(self.random.uniform(0.02, 0.2))

    async def _sibling(self, stop: asyncio.Event) -> None:
        """Now and then a broken `avatar.used`: not JSON, an avatar that never existed, a forged owner."""
        while not stop.is_set():
            await asyncio.sleep(self.random.uniform(2, 5))
            kind = self.random.choice(["malformed", "unknown avatar", "forged owner"])
            event_id = new_id()
            if kind == "malformed":
                body = b'{"id": "' + event_id.encode() + b'", "type": "avatar.used", "data": '
            else:
                owner, avatar = self._some_avatar()
                if kind == "unknown avatar" or avatar is None:
                    kind, avatar = "unknown avatar", new_id()
                else:
                    owner = f"forger-{new_id()}"
                body = self._envelope(event_id, owner or "nobody", avatar, f"broken-{event_id}")
            if await self.publish(body, event_id):
                self.record.injected[event_id] = kind

    def _some_avatar(self) -> tuple[str | None, str | None]:
        candidates = [(u.id, a) for u in self.users for a in u.avatars if a not in self.retired]
        return self.random.choice(candidates) if candidates else (None, None)

    def _envelope(self, event_id: str, user_id: str, avatar_id: str, reference: str) -> bytes:
        data = {"avatarId": avatar_id, "appId": "pose-generator", "appName": "Pose Generator"}
        data |= {"action": "generate_pose", "referenceId": reference, "referenceType": "generated_pose"}
        envelope = {"id": event_id, "type": "avatar.used", "version": 1, "source": "pose-generator"}
        envelope |= {"time": datetime.now(UTC).isoformat(), "userId": user_id, "subject": avatar_id, "data": data}
        return json.dumps(envelope).encode()

    def _avatar_of(self, user: User) -> str | None:
        live = [a for a in user.avatars if a not in self.retired]
        return self.random.choice(live) if live else None

    async def grant(self, user: User, amount: int) -> None:
        body = {"userId": user.id, "amount": amount, "type": "purchase", "description": "System test top-up"}
        body["idempotencyKey"] = f"sys-{new_id()}"
        response = await self.until_definite(
            "POST /credits/grants", "POST", "/api/credits/grants", 30, json=body, headers=self.admin
        )
        if response is not None and response.status_code in (200, 201):
            self.record.grants[user.id] += amount
        else:  # never acknowledged: the checker could not know whether it counts
            raise RuntimeError(f"grant to {user.id} never acknowledged: {response and response.text}")

    async def browse(self, user: User) -> None:
        response = await self.call("GET /projects", "GET", f"{APP}/projects", headers=user.headers)
        if response is not None and response.status_code == 200:
            user.projects = [p["id"] for p in response.json()["projects"]]
        if user.projects:
            project = self.random.choice(user.projects)
            await self.call("GET /projects/{id}", "GET", f"{APP}/projects/{project}", headers=user.headers)
            listed = await self.call(
                "GET /avatars?projectId", "GET", f"{APP}/avatars", params={"projectId": project}, headers=user.headers
            )
            if listed is not None and listed.status_code == 200:
                user.avatars.update({a["id"]: project for a in listed.json()["avatars"]})
        await self.call("GET /stats", "GET", f"{APP}/stats", headers=user.headers)

    async def create_project(self, user: User) -> None:
        if len(user.projects) >= 4:
            return
        body = {"name": f"Project {self.random.randrange(1000)}", "description": "system test"}
        response = await self.call("POST /projects", "POST", f"{APP}/projects", json=body, headers=user.headers)
        if response is not None and response.status_code == 201:
            user.projects.append(response.json()["project"]["id"])

    async def _project(self, user: User) -> str | None:
        if not user.projects:
            await self.create_project(user)
        return self.random.choice(user.projects) if user.projects else None

    async def upload(self, user: User) -> None:
        if (project := await self._project(user)) is None:
            return
        files = {"image": ("me.png", self.random.choice(self.images), "image/png")}
        response = await self.call(
            "POST /projects/{id}/avatars",
            "POST",
            f"{APP}/projects/{project}/avatars",
            data={"name": "Uploaded"},
            files=files,
            headers=user.headers,
        )
        if response is not None and response.status_code == 201:
            user.avatars[response.json()["avatar"]["id"]] = project
        elif response is not None and response.status_code == 402:
            await self.grant(user, 200)

    async def generate(self, user: User) -> None:
        if (project := await self._project(user)) is None:
            return
        body = {"prompt": "Portrait of a smiling person", "name": "Generated", "count": self.random.randint(1, 3)}
        asynchronous = self.random.random() < 0.5
        headers = {**user.headers, **({"Prefer": "respond-async"} if asynchronous else {})}
        route = "POST /projects/{id}/avatars/generate" + (" async" if asynchronous else "")
        response = await self.call(
            route, "POST", f"{APP}/projects/{project}/avatars/generate", json=body, headers=headers
        )
        if response is None:
            return
        if response.status_code == 201:
            user.avatars.update({a["id"]: project for a in response.json()["avatars"]})
        elif response.status_code == 202:
            user.jobs.append(response.json()["generation"]["id"])
        elif response.status_code == 402:
            await self.grant(user, 200)

    async def follow_jobs(self, user: User) -> None:
        for job in list(user.jobs):
            response = await self.call("GET /generations/{id}", "GET", f"{APP}/generations/{job}", headers=user.headers)
            if response is None or response.status_code != 200:
                continue
            generation = response.json()["generation"]
            if generation["status"] not in ("queued", "running"):
                user.jobs.remove(job)
                user.avatars.update({a: generation["projectId"] for a in generation["avatarIds"]})

    async def track_usage(self, user: User) -> None:
        if (avatar := self._avatar_of(user)) is None:
            return
        reference = f"http-{new_id()}"
        body = {"avatarId": avatar, "appId": "poster-editor", "appName": "Poster Editor", "action": "create_poster"}
        body |= {"referenceId": reference, "referenceType": "poster"}
        headers = {**user.headers, "Idempotency-Key": reference}
        response = await self.until_definite(
            "POST /track-usage", "POST", f"{APP}/track-usage", json=body, headers=headers
        )
        # 201: recorded; 400/404: refused (e.g. deleted meanwhile); anything else (a 409 while the first try is
        # still running, no answer at all) leaves it open whether it was recorded.
        definite = response is not None and response.status_code in (201, 400, 404)
        self.record.use(avatar, reference, (response is not None and response.status_code == 201) if definite else None)

    async def use_by_event(self, user: User) -> None:
        if (avatar := self._avatar_of(user)) is None:
            return
        event_id = new_id()
        reference = f"event-{event_id}"
        confirmed = await self.publish(self._envelope(event_id, user.id, avatar, reference), event_id)
        self.record.use(avatar, reference, True if confirmed else None)
        self.record.events_confirmed += confirmed

    async def history(self, user: User) -> None:
        if (avatar := self._avatar_of(user)) is None:
            return
        url = f"{APP}/avatars/{avatar}/usage-history"
        await self.call("GET /avatars/{id}/usage-history", "GET", url, params={"limit": 50}, headers=user.headers)

    async def balance(self, user: User) -> None:
        response = await self.call("GET /credits/balance", "GET", "/api/credits/balance", headers=user.headers)
        await self.call("GET /credits/transactions", "GET", "/api/credits/transactions", headers=user.headers)
        if response is not None and response.status_code == 200 and response.json().get("available", 100) < 60:
            await self.grant(user, 200)

    async def delete_avatar(self, user: User) -> None:
        if len(user.avatars) < 3 or (avatar := self._avatar_of(user)) is None:
            return
        self.retired.add(avatar)
        await self.call("DELETE /avatars/{id}", "DELETE", f"{APP}/avatars/{avatar}", headers=user.headers)
        user.avatars.pop(avatar, None)

    async def delete_project(self, user: User) -> None:
        if len(user.projects) < 3:
            return
        project = self.random.choice(user.projects)
        doomed = [a for a, p in user.avatars.items() if p == project]
        self.retired.update(doomed)
        response = await self.call("DELETE /projects/{id}", "DELETE", f"{APP}/projects/{project}", headers=user.headers)
        if response is not None and response.status_code in (200, 404):
            user.projects.remove(project)
            for avatar in doomed:
                user.avatars.pop(avatar, None)
