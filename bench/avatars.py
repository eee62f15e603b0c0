"""Avatar upload: a 4 MB, 12 MP JPEG through the gateway at 8 concurrent clients, and the thumbnail step alone
against sharp (libvips, what the original implementation used) on the same files, in the same run.

Runs projects, credits, avatars and the gateway as real uvicorn subprocesses on free ports, against dedicated
databases (recreated each run), a dedicated exchange and a temporary image directory. Every ten uploads use a
new user, who starts with the 100-credit signup bonus, so credits never run out and are really reserved and
captured. sharp is installed with npm into /tmp at bench time; without it only our figures are reported.

    uv run python -m bench.avatars [--requests 48] [--concurrency 8] [--thumbnail-runs 30]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import httpx
from PIL import Image, ImageFilter

from bench.gateway import Process, free_port
from bench.lib import Stats, measure, report
from lumiku_avatars import images
from lumiku_common.auth import mint_user_token
from lumiku_common.settings import ServiceSettings

DATABASES = {
    "projects": "lumiku_projects_bench_av",
    "credits": "lumiku_credits_bench_av",
    "avatars": "lumiku_avatars_bench",
}
EXCHANGE = "lumiku.events.bench-avatars"
SHARP_DIR = Path("/tmp/lumiku-sharp")
SIZE = (4000, 3000)
TARGET_BYTES = 4 * 1024 * 1024
SHARP_SCRIPT = """
const sharp = require('sharp');
const fs = require('fs');
sharp.concurrency(Number(process.env.SHARP_THREADS || 1));
const [file, runs] = [process.argv[2], Number(process.argv[3])];
const input = fs.readFileSync(file);
const thumb = () => sharp(input).rotate().resize(200, 200, {fit: 'cover'}).jpeg({quality: 85}).toBuffer();
(async () => {
  await thumb();
  const times = [];
  for (let i = 0; i < runs; i++) {
    const t = process.hrtime.bigint();
    await thumb();
    times.push(Number(process.hrtime.bigint() - t) / 1e6);
  }
  const version = JSON.parse(fs.readFileSync(__dirname + '/node_modules/sharp/package.json')).version;
  console.log(JSON.stringify({version, times}));
})();
"""


def photo_jpeg() -> bytes:
    """A photo-like 12 MP JPEG of about 4 MB: smooth gradients with fine grain, at the quality that hits 4 MB."""
    base = Image.linear_gradient("L").resize(SIZE).convert("RGB")
    grain = Image.effect_noise(SIZE, 48).filter(ImageFilter.GaussianBlur(0.6)).convert("RGB")
    picture = Image.blend(base, grain, 0.35)
    low, high, best = 40, 98, b""
    while low <= high:
        quality = (low + high) // 2
        out = io.BytesIO()
        picture.save(out, "JPEG", quality=quality)
        if out.tell() <= TARGET_BYTES * 1.05:
            best, low = out.getvalue(), quality + 1
        else:
            high = quality - 1
    return best


def multipart(image: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="name"\r\n\r\nBench avatar\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="photo.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()
    return head + image + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


async def recreate_databases(postgres_url: str) -> None:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(f"{postgres_url.rstrip('/')}/postgres", isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            for database in DATABASES.values():
                await conn.execute(text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
    finally:
        await engine.dispose()


def start_suite(env: dict[str, str]) -> list[Process]:
    processes: list[Process] = []
    urls: dict[str, str] = {}
    try:
        for name in ("projects", "credits"):
            process = Process(
                name, f"lumiku_{name}.main:create_app", free_port(), env | {"DATABASE_NAME": DATABASES[name]}
            )
            processes.append(process)
            process.wait_ready()
            urls[name] = process.url
        avatars_env = env | {"DATABASE_NAME": DATABASES["avatars"], "SERVICE_URLS": json.dumps(urls)}
        avatars = Process("avatars", "lumiku_avatars.main:create_app", free_port(), avatars_env)
        processes.append(avatars)
        avatars.wait_ready()
        urls["avatars"] = avatars.url
        gateway = Process(
            "gateway", "lumiku_gateway.main:create_app", free_port(), env | {"SERVICE_URLS": json.dumps(urls)}
        )
        processes.append(gateway)
        gateway.wait_ready()
    except BaseException:
        for p in reversed(processes):
            p.stop()
        raise
    return processes


async def upload_stats(gateway: str, image: bytes, requests: int, concurrency: int, secret: str) -> Stats:
    body, content_type = multipart(image)
    run = uuid.uuid4().hex[:8]
    tokens: dict[str, str] = {}

    def headers(i: int) -> dict[str, str]:
        user = f"bench-{run}-{'w' if i < 0 else ''}{abs(i) // 10}"
        if user not in tokens:
            tokens[user] = mint_user_token(secret, user)
        return {"Authorization": f"Bearer {tokens[user]}", "content-type": content_type}

    async with httpx.AsyncClient(base_url=gateway, timeout=120) as client:
        projects: dict[str, str] = {}

        async def project_for(h: dict[str, str]) -> str:
            key = h["Authorization"]
            if key not in projects:
                response = await client.post("/api/apps/avatar-creator/projects", json={"name": "Bench"}, headers=h)
                response.raise_for_status()
                projects[key] = response.json()["project"]["id"]
            return projects[key]

        async def upload(i: int) -> None:
            h = headers(i)
            project = await project_for({k: v for k, v in h.items() if k != "content-type"})
            response = await client.post(
                f"/api/apps/avatar-creator/projects/{project}/avatars", content=body, headers=h
            )
            if response.status_code != 201:
                raise RuntimeError(f"{response.status_code}: {response.text[:200]}")

        # Projects first, so the timed operation is the upload alone.
        for i in [*range(-1, -concurrency - 1, -1), *range(requests)]:
            await project_for({k: v for k, v in headers(i).items() if k != "content-type"})
        name = f"upload 4MB 12MP JPEG via gateway c={concurrency}"
        return await measure(name, upload, concurrency=concurrency, requests=requests, warmup=concurrency)


def our_thumbnail_ms(path: Path, runs: int) -> list[float]:
    data = path.read_bytes()
    limits = images.Limits(max_pixels=40_000_000, max_side=65_535)
    images.make_thumbnail(data, limits)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        images.make_thumbnail(data, limits)
        times.append((time.perf_counter() - started) * 1000)
    return times


def sharp_thumbnail_ms(path: Path, runs: int) -> tuple[list[float], str] | str:
    """sharp's timings and version, or why it could not run."""
    if shutil.which("npm") is None or shutil.which("node") is None:
        return "node/npm not installed"
    if not (SHARP_DIR / "node_modules" / "sharp").exists():
        install = subprocess.run(
            ["npm", "install", "--silent", "--no-audit", "--no-fund", "--prefix", str(SHARP_DIR), "sharp"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        if install.returncode != 0:
            return f"npm install sharp failed: {install.stderr.strip()[-300:]}"
    script = SHARP_DIR / "thumb.js"
    script.write_text(SHARP_SCRIPT)
    result = subprocess.run(
        ["node", str(script), str(path), str(runs)], capture_output=True, text=True, timeout=300, cwd=SHARP_DIR
    )
    if result.returncode != 0:
        return f"sharp failed: {result.stderr.strip()[-300:]}"
    payload = json.loads(result.stdout)
    return payload["times"], payload["version"]


def thumbnail_stats(name: str, times: list[float]) -> Stats:
    ordered = sorted(times)
    return Stats(
        name=name,
        concurrency=1,
        requests=len(times),
        errors=0,
        seconds=round(sum(times) / 1000, 3),
        throughput=round(1000 * len(times) / sum(times), 1),
        p50_ms=round(statistics.median(ordered), 2),
        p95_ms=round(ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))], 2),
        p99_ms=round(ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))], 2),
        mean_ms=round(statistics.fmean(times), 2),
    )


async def run(requests: int, concurrency: int, thumbnail_runs: int) -> Path:
    base = ServiceSettings()
    await recreate_databases(base.postgres_url)
    workdir = Path(tempfile.mkdtemp(prefix="lumiku-bench-avatars-"))
    image = photo_jpeg()
    sample = workdir / "photo.jpg"
    sample.write_bytes(image)
    env = {
        **os.environ,
        "ENVIRONMENT": "development",
        "EVENTS_EXCHANGE": EXCHANGE,
        "QUEUE_PREFIX": "bench.",
        "STORAGE_PATH": str(workdir / "objects"),
        "RATE_LIMIT_ENABLED": "false",
        "LOG_LEVEL": "WARNING",
    }
    processes = start_suite(env)
    try:
        uploads = await upload_stats(processes[-1].url, image, requests, concurrency, base.jwt_secret)
    finally:
        for p in reversed(processes):
            p.stop()

    ours = thumbnail_stats("thumbnail step: Pillow (ours), 1 thread", our_thumbnail_ms(sample, thumbnail_runs))
    stats, ratios = [uploads, ours], {}
    notes: dict[str, object] = {
        "image": f"{SIZE[0]}x{SIZE[1]} JPEG, {len(image)} bytes",
        "pillow": Image.__version__,
        "machine": f"{os.cpu_count()} CPUs; client, gateway, services, PostgreSQL and RabbitMQ share them",
    }
    sharp = sharp_thumbnail_ms(sample, thumbnail_runs)
    if isinstance(sharp, str):
        print(f"sharp not measured: {sharp}")
        notes["sharp"] = sharp
    else:
        times, version = sharp
        stats.append(thumbnail_stats(f"thumbnail step: sharp {version}, 1 thread", times))
        ratios["thumbnail p50 ours/sharp"] = round(ours.p50_ms / stats[-1].p50_ms, 3)
        notes["sharp"] = (
            f"sharp {version}, sharp.concurrency(1), rotate+cover resize 200x200+JPEG q85 from the same file"
        )
    shutil.rmtree(workdir, ignore_errors=True)
    return report("avatars", stats, ratios, notes)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=48)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--thumbnail-runs", type=int, default=30)
    args = parser.parse_args(argv)
    asyncio.run(run(args.requests, args.concurrency, args.thumbnail_runs))


if __name__ == "__main__":
    main()
