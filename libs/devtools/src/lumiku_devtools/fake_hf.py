"""A stand-in for the Hugging Face inference API (`POST {base}/{model}`), for tests, benchmarks and people
(`lumiku fake-hf`). It answers like the real one: an image for the text-to-image JSON body (drawn from the
prompt and `parameters.seed`, at the asked size), or one of its failures:

  ok[:s]        200 image/png, after s seconds (default: the server's --delay)
  loading[:s]   503 {"error": "Model ... is currently loading", "estimated_time": s}
  rate[:s]      429 with Retry-After: s
  error         500 {"error": "..."}
  bad           400 {"error": "Input validation error: ..."}
  text          200 text/plain (not an image)
  hang[:s]      no answer for s seconds (a timeout, for a client with a shorter one), then an image

A body whose `parameters` are not the text-to-image task's (or whose `inputs` is no text) is refused with 400, as
the real server validates its input, whatever the script says.

Each call takes the next answer from the model's script (POST /_control/script {"model", "answers": [...]}, or
`FakeHuggingFace.script`), else from the default `--mode`. Every call is recorded (GET /_control/calls).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from lumiku_generation.drawing import draw_png

# The text-to-image task's parameters (huggingface.js tasks/text-to-image/spec/input.json).
TASK_PARAMETERS = frozenset(
    {"guidance_scale", "negative_prompt", "num_inference_steps", "width", "height", "target_size", "scheduler", "seed"}
)


@dataclass
class Call:
    model: str
    body: dict[str, Any]
    authorization: str | None
    at: float
    answer: str
    answered: float | None = None  # when the image was sent (time.monotonic())


@dataclass
class FakeHuggingFace:
    mode: str = "ok"
    delay: float = 0.0
    scripts: dict[str, deque[str]] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    image_size: tuple[int, int] | None = None  # None: the size the request asks for
    # Fixed images by size (benchmarks: the answer's time is then only `delay`); otherwise drawn per call.
    images: dict[tuple[int, int], bytes] = field(default_factory=dict)

    def script(self, model: str, *answers: str) -> None:
        self.scripts.setdefault(model, deque()).extend(answers)

    def reset(self, mode: str = "ok", delay: float = 0.0) -> None:
        self.mode, self.delay = mode, delay
        self.scripts.clear()
        self.calls.clear()

    def calls_to(self, model: str | None = None) -> list[Call]:
        return [c for c in self.calls if model is None or c.model == model]

    def _next(self, model: str) -> str:
        queued = self.scripts.get(model)
        return queued.popleft() if queued else self.mode

    async def answer(self, model: str, body: dict[str, Any], authorization: str | None) -> Response:
        invalid = _invalid(body)
        answer = "invalid" if invalid else self._next(model)
        call = Call(model, body, authorization, time.monotonic(), answer)
        self.calls.append(call)
        if invalid:
            return JSONResponse({"error": f"Input validation error: {invalid}"}, 400)
        kind, _, arg = answer.partition(":")
        seconds = float(arg) if arg else None
        if kind == "loading":
            wait = 1.0 if seconds is None else seconds
            return JSONResponse({"error": f"Model {model} is currently loading", "estimated_time": wait}, 503)
        if kind == "rate":
            wait = 1 if seconds is None else seconds
            return JSONResponse({"error": "Rate limit reached"}, 429, headers={"Retry-After": f"{wait:g}"})
        if kind == "error":
            return JSONResponse({"error": "Internal server error"}, 500)
        if kind == "bad":
            return JSONResponse({"error": "Input validation error: `inputs` must be a prompt"}, 400)
        if kind == "text":
            return Response("this is not an image", 200, media_type="text/plain")
        await asyncio.sleep(self.delay if seconds is None else seconds)
        parameters = body.get("parameters") or {}
        width, height = self.image_size or (int(parameters.get("width", 256)), int(parameters.get("height", 256)))
        image = self.images.get((width, height))
        if image is None:
            image = await asyncio.to_thread(
                draw_png, str(body.get("inputs", "")), int(parameters.get("seed", 0)), width, height
            )
        call.answered = time.monotonic()
        return Response(image, 200, media_type="image/png")

    def app(self) -> FastAPI:
        app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)

        @app.post("/_control/script")
        async def script(request: Request) -> dict[str, str]:
            body = await request.json()
            self.script(body["model"], *body["answers"])
            return {"status": "ok"}

        @app.post("/_control/reset")
        async def reset(request: Request) -> dict[str, str]:
            body = await request.json() if await request.body() else {}
            self.reset(body.get("mode", "ok"), float(body.get("delay", 0.0)))
            return {"status": "ok"}

        @app.get("/_control/calls")
        async def calls() -> list[dict[str, Any]]:
            return [{"model": c.model, "body": c.body, "answer": c.answer} for c in self.calls]

        @app.post("/{model:path}")
        async def infer(model: str, request: Request) -> Response:
            return await self.answer(model, await request.json(), request.headers.get("authorization"))

        return app


def _invalid(body: dict[str, Any]) -> str | None:
    if not isinstance(body.get("inputs"), str):
        return "`inputs` must be a prompt"
    parameters = body.get("parameters") or {}
    unknown = sorted(set(parameters) - TASK_PARAMETERS) if isinstance(parameters, dict) else ["parameters"]
    return f"unknown parameters {', '.join(unknown)}" if unknown else None


def serving(fake: FakeHuggingFace, port: int = 0) -> contextlib.AbstractAsyncContextManager[str]:
    """Serves the stand-in over real TCP on this event loop (real timeouts); yields its base URL."""
    from lumiku_devtools.testing import served

    return served(fake.app(), port, lifespan="off", startup_timeout=4)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=8900)
    parser.add_argument("--mode", default="ok", help="default answer: ok, loading:S, rate:S, error, bad, text, hang:S")
    parser.add_argument("--delay", type=float, default=2.0, help="seconds before each image")


def run(args: argparse.Namespace) -> None:
    fake = FakeHuggingFace(mode=args.mode, delay=args.delay)
    print(
        f"Hugging Face stand-in on http://127.0.0.1:{args.port} (mode {args.mode}, {args.delay:g} s per image).\n"
        f"Point generation at it: HUGGINGFACE_INFERENCE_URL=http://127.0.0.1:{args.port} HUGGINGFACE_TOKEN=fake"
    )
    uvicorn.run(fake.app(), host="127.0.0.1", port=args.port, log_level="warning")
