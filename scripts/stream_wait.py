"""How long a classify request waits while streamed generations are open: against a running ``ptune serve``, open
``--streams`` long streams at once, and from the first streamed piece on send one-row classify requests one after
another until the streams end; report the classify latencies and the streams' durations as JSON.

    ptune serve reply=/tmp/replies/task-0000 topics=/tmp/tasks/task-0000 --port 8000 &
    python scripts/stream_wait.py http://127.0.0.1:8000 --stream-task reply --classify-task topics --streams 4

Only HTTP is used, so the same command measures any version of the server.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time

import httpx

TEXTS = ["My parcel never arrived and nobody answers my emails.", "Thanks, the new app is great.",
         "Why was I charged twice this month?", "Is the shop open on Sunday?"]


def read_stream(url: str, task: str, text: str, max_tokens: int, started: threading.Event, out: dict) -> None:
    """Stream one completion; ``out`` gets its pieces, and when its first piece and [DONE] arrived."""
    body = {"model": task, "prompt": text, "max_tokens": max_tokens, "stream": True}
    with httpx.Client(timeout=600) as client, client.stream("POST", f"{url}/v1/completions", json=body) as r:
        r.raise_for_status()
        out["pieces"] = 0
        for line in r.iter_lines():
            if line == "data: [DONE]":
                out["done"] = time.monotonic()
            elif line.startswith("data: ") and json.loads(line[6:])["choices"][0]["text"]:
                out["pieces"] += 1
                out.setdefault("first", time.monotonic())
                started.set()


def measure(args) -> dict:
    """Open the streams, then classify one row at a time while any is open."""
    results = [{} for _ in range(args.streams)]
    started = threading.Event()  # some stream has sent a piece
    t0 = time.monotonic()
    threads = [threading.Thread(target=read_stream, args=(args.url, args.stream_task, TEXTS[i % len(TEXTS)],
                                                          args.max_tokens, started, results[i]))
               for i in range(args.streams)]
    for thread in threads:
        thread.start()
    started.wait(600)
    waits = []
    with httpx.Client(base_url=args.url, timeout=600) as client:
        while any(thread.is_alive() for thread in threads) and len(waits) < args.max_classify:
            asked = time.monotonic()
            r = client.post("/v1/classify", json={"task": args.classify_task,
                                                  "rows": [{args.field: TEXTS[len(waits) % len(TEXTS)]}]})
            r.raise_for_status()
            waits.append(time.monotonic() - asked)
    for thread in threads:
        thread.join()
    ended = max(r["done"] for r in results)
    return {"streams": args.streams, "max_tokens": args.max_tokens, "pieces": [r["pieces"] for r in results],
            "streams_seconds": round(ended - t0, 2),
            "first_piece_seconds": [round(r["first"] - t0, 2) for r in results],
            "classify_requests_while_streaming": len(waits),
            "classify_seconds_median": round(statistics.median(waits), 3) if waits else None,
            "classify_seconds_max": round(max(waits), 3) if waits else None}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("url", help="the server, e.g. http://127.0.0.1:8000")
    ap.add_argument("--stream-task", required=True, help="a generation task")
    ap.add_argument("--classify-task", required=True, help="a classification task")
    ap.add_argument("--field", default="text", help="the classification task's field")
    ap.add_argument("--streams", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--max-classify", type=int, default=200, help="classify requests at most")
    print(json.dumps(measure(ap.parse_args(argv))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
