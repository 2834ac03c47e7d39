"""One image, several tasks: one request naming them all (`POST /v1/predict?tasks=...`) against one request per
task sent at once, the way a client without it would fan out.

For each task count, each way runs closed loop for `duration_s` with `concurrency` images in flight; an
image is done when every task's answer is in. Reported: images per second, p50 / p99 per image, failures.
"""

from __future__ import annotations

import asyncio

from .closed_loop import closed_loop

WAYS = ("one request", "a request per task")


async def _answer_image(session, url: str, tasks: list[str], image: bytes, headers: dict, together: bool) -> bool:
    if together:
        calls = [session.post(f"{url}/v1/predict", params={"tasks": ",".join(tasks)}, data=image, headers=headers)]
    else:
        calls = [session.post(f"{url}/v1/tasks/{task}/predict", data=image, headers=headers) for task in tasks]

    async def ok(call) -> bool:
        async with call as response:
            await response.read()
            return response.status == 200
    return all(await asyncio.gather(*(ok(call) for call in calls)))


async def _load(url: str, tasks: list[str], image: bytes, content_type: str, together: bool, duration_s: float,
                concurrency: int) -> dict:
    headers = {"Content-Type": content_type}
    done = await closed_loop(lambda session, _: _answer_image(session, url, tasks, image, headers, together),
                             concurrency, duration_s=duration_s)
    return {"images_per_s": done["per_s"], "p50_ms": done["p50_ms"], "p99_ms": done["p99_ms"],
            "images": done["answered"], "failed": done["failed"]}


def compare_multi_task(url: str, tasks: list[str], image: bytes, content_type: str, duration_s: float,
                       concurrency: int, counts: tuple[int, ...] = (1, 2, 4, 8)) -> dict:
    """Per task count (at most the tasks given), both ways, and the images/s of one request over the fan-out."""
    levels = {}
    for count in sorted({min(c, len(tasks)) for c in counts}):
        named = tasks[:count]
        ways = {way: asyncio.run(_load(url.rstrip("/"), named, image, content_type, way == WAYS[0],
                                              duration_s, concurrency)) for way in WAYS}
        fan_out = ways[WAYS[1]]["images_per_s"]
        levels[f"{count} tasks"] = {"ways": ways, "speedup": round(ways[WAYS[0]]["images_per_s"] / fan_out, 3)
                                    if fan_out else None}
    return {"concurrency": concurrency, "duration_s": duration_s, "levels": levels}


def format_multi_task(doc: dict) -> str:
    lines = ["| tasks per image | way | images/s | p50 ms | p99 ms | failed |", "| ---: | --- | ---: | ---: | ---: | ---: |"]
    for level, entry in doc["levels"].items():
        for way, row in entry["ways"].items():
            lines.append(f"| {level.split()[0]} | {way} | {row['images_per_s']} | {row['p50_ms']} | {row['p99_ms']} "
                         f"| {row['failed']} |")
    speedups = ", ".join(f"{level}: {entry['speedup']}x" for level, entry in doc["levels"].items())
    return "\n".join(lines) + f"\n\nimages/s of one request over a request per task: {speedups}"
