"""Soak test for `ptune serve`: minutes of mixed traffic against one server process, then a verdict.

    python scripts/soak.py --model embedded --minutes 5          # SmolLM2-135M, the embedded model
    python scripts/soak.py --model tiny --seconds 60             # a 2-layer random Llama (benchmarks/random_models.py)
    python scripts/soak.py --model path/to/model/folder --seconds 15 --json soak.json

Checkpoints are written with scripts/make_tasks.py into a temporary tasks folder (classification and generation
tasks, untrained), and ``python -m ptune serve`` serves some of them on 127.0.0.1 with ``--tasks-dir`` that
folder. Concurrent clients, each with its own connection, then send for the whole run a seeded mix of:

    classify       POST /v1/classify, one row
    generate       POST /v1/generate, one row
    complete       POST /v1/completions on a classification task (OpenAI, not streamed)
    stream         POST /v1/completions stream=true on a generation task, read to ``data: [DONE]``
    abandon        the same, closed by the client after the first event (a client going away mid-stream)
    add / delete   POST /v1/tasks a spare checkpoint under a new name, classify with it, DELETE it

Everything stays on loopback and is bounded: the run stops at ``--seconds`` (or ``--minutes``) or after
``--max-requests``, whichever comes first, and each request has a timeout. The server's resident memory (psutil) is
taken when the warm-up (the first ``--warmup`` seconds of the same traffic) ends and again at the end; latencies are
counted after the warm-up. When the traffic stops, a classify, a generate and a whole stream must still succeed
(no stream slot lost to the clients that went away), and the tasks listed must be the ones served at the start,
none lost or twice.

Exit status 1, with the reasons, if anything but a success or a documented refusal under load (408, 429, 503; 409
for an add when --max-tasks is reached) came back, if a connection failed other than by the client's own choice,
if a stream ended without ``[DONE]``, if the server logged a traceback or died, if a kind of request never
succeeded, if the task list is wrong, or if memory grew more than ``--max-growth-mb`` after the warm-up. The JSON
summary goes to stdout (and ``--json PATH``), a short table to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
sys.path.insert(0, str(SCRIPTS))

from load_test import MESSAGES, RssSampler, percentile  # noqa: E402

EMBEDDED = "embedded:SmolLM2-135M-Instruct"
REFUSALS = {408: "request timeout", 429: "too many streams", 503: "queue or connections full"}
ADD_REFUSALS = {409: "--max-tasks reached"}
MIX = {"classify": 30, "generate": 15, "complete": 10, "stream": 20, "abandon": 15, "live": 10}
KINDS = ["classify", "generate", "complete", "stream", "abandon", "add", "delete"]
TIMEOUT = 120.0  # seconds for any one request: far beyond a healthy answer, short of hanging the run


class Recorder:
    """Thread-safe tallies: answers by kind and status, latencies by kind (after the warm-up), failures."""

    def __init__(self, keep_failures: int = 20):
        self.lock = threading.Lock()
        self.statuses: dict[str, Counter] = defaultdict(Counter)
        self.latencies: dict[str, list[float]] = defaultdict(list)
        self.failures: Counter = Counter()
        self.examples: list[str] = []
        self.keep = keep_failures
        self.measuring = False
        self.requests = 0

    def answer(self, kind: str, status: int | str, seconds: float) -> None:
        with self.lock:
            self.statuses[kind][str(status)] += 1
            if self.measuring and isinstance(status, int) and status < 300:
                self.latencies[kind].append(seconds)

    def fail(self, kind: str, what: str, detail: str = "") -> None:
        with self.lock:
            self.failures[f"{kind}: {what}"] += 1
            if len(self.examples) < self.keep:
                self.examples.append(f"{kind}: {what} {detail}"[:300])

    def take(self, budget: int) -> bool:
        """Count one more request against ``budget``; False once it is spent."""
        with self.lock:
            if self.requests >= budget:
                return False
            self.requests += 1
            return True


def check_status(rec: Recorder, kind: str, response, seconds: float, allowed: dict | None = None) -> bool:
    """Record one answer; True for a success. A status outside 2xx and the documented refusals is a failure."""
    status = response.status_code
    rec.answer(kind, status, seconds)
    if status < 300:
        return True
    if status not in {**REFUSALS, **(allowed or {})}:
        rec.fail(kind, f"status {status}", response.text[:200])
    return False


class Traffic:
    """One client's requests, on its own connection; every method sends one request (a live cycle three)."""

    def __init__(self, client, rec: Recorder, plan: dict, name: str, seed: int):
        self.client, self.rec, self.plan, self.name = client, rec, plan, name
        self.rng = random.Random(seed)
        self.added = 0

    def message(self) -> str:
        return self.rng.choice(MESSAGES)

    def timed(self, kind: str, method: str, path: str, allowed: dict | None = None, **kwargs):
        t = time.perf_counter()
        response = self.client.request(method, path, **kwargs)
        ok = check_status(self.rec, kind, response, time.perf_counter() - t, allowed)
        if response.status_code in REFUSALS:
            time.sleep(0.2)  # refused under load: a polite client waits a little before its next request
        return ok, response

    def classify(self) -> None:
        task = self.rng.choice(self.plan["classification"])
        self.timed("classify", "POST", "/v1/classify", json={"task": task, "rows": [{"text": self.message()}]})

    def generate(self) -> None:
        task = self.rng.choice(self.plan["generation"])
        self.timed("generate", "POST", "/v1/generate",
                   json={"task": task, "rows": [{"text": self.message()}], "max_new_tokens": 8})

    def complete(self) -> None:
        task = self.rng.choice(self.plan["classification"])
        self.timed("complete", "POST", "/v1/completions", json={"model": task, "prompt": self.message()})

    def stream(self, abandon: bool = False) -> None:
        kind = "abandon" if abandon else "stream"
        body = {"model": self.rng.choice(self.plan["generation"]), "prompt": self.message(), "max_tokens": 16,
                "stream": True}
        t = time.perf_counter()
        with self.client.stream("POST", "/v1/completions", json=body) as response:
            if response.status_code >= 300:
                response.read()
                check_status(self.rec, kind, response, time.perf_counter() - t)
                if response.status_code in REFUSALS:
                    time.sleep(0.2)
                return
            events, done = 0, False
            for line in response.iter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    done = True
                    break
                events += 1
                if '"error"' in line:
                    self.rec.fail(kind, "error event in the stream", line[:200])
                if abandon:
                    break  # leaving the block closes the connection with the body unread
        self.rec.answer(kind, response.status_code, time.perf_counter() - t)
        if not abandon and not done:
            self.rec.fail(kind, "stream ended without [DONE]", f"after {events} events")

    def live(self) -> None:
        """Add a spare checkpoint under a new name, classify with it, delete it."""
        self.added += 1
        name = f"live-{self.name}-{self.added}"
        path = self.rng.choice(self.plan["spare"])
        ok, _ = self.timed("add", "POST", "/v1/tasks", ADD_REFUSALS, json={"name": name, "path": path})
        if not ok:
            return
        self.timed("classify", "POST", "/v1/classify", json={"task": name, "rows": [{"text": self.message()}]})
        for _ in range(5):  # a refusal under load is retried: the task must not stay behind
            ok, response = self.timed("delete", "DELETE", f"/v1/tasks/{name}")
            if ok or response.status_code not in REFUSALS:
                break
            time.sleep(0.5)
        if not ok:
            self.rec.fail("delete", f"{name} still served after five tries")


def client_loop(url: str, rec: Recorder, plan: dict, index: int, seed: int, deadline: float, budget: int) -> None:
    """One client: weighted random actions until the deadline or the shared request budget."""
    import httpx

    actions = list(MIX)
    weights = [MIX[a] for a in actions]
    with httpx.Client(base_url=url, timeout=TIMEOUT) as client:
        traffic = Traffic(client, rec, plan, f"c{index}", seed * 1000 + index)
        while time.monotonic() < deadline and rec.take(budget):
            action = traffic.rng.choices(actions, weights)[0]
            try:
                if action in ("stream", "abandon"):
                    traffic.stream(abandon=action == "abandon")
                else:
                    getattr(traffic, action)()
            except httpx.HTTPError as err:  # the client's own disconnects raise nothing: this is the server's
                rec.fail(action, f"connection: {type(err).__name__}", str(err)[:200])
                time.sleep(0.2)


def prepare_tasks(root: Path, model: str, served: int, generation: int, spare: int) -> dict:
    """Checkpoints under ``root`` by scripts/make_tasks.py: classification tasks in cls/ (the first ``served``
    served at the start, the next ``spare`` added and removed while serving) and generation tasks in gen/.

    Returns:
        dict: ``checkpoints`` ({name: folder} to serve), ``classification`` and ``generation`` (task names) and
        ``spare`` (paths relative to ``root`` for POST /v1/tasks).
    """
    import make_tasks

    make_tasks.main([str(root / "cls"), "--count", str(served + spare), "--model", model])
    make_tasks.main([str(root / "gen"), "--count", str(generation), "--model", model, "--type", "generation",
                     "--first-seed", "100"])
    cls = {f"cls-{i}": root / "cls" / f"task-{i:04d}" for i in range(served)}
    gen = {f"gen-{i}": root / "gen" / f"task-{i:04d}" for i in range(generation)}
    return {"checkpoints": {**cls, **gen}, "classification": list(cls), "generation": list(gen),
            "spare": [f"cls/task-{i:04d}" for i in range(served, served + spare)]}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """``python -m ptune serve`` on 127.0.0.1 in a child process, its log in a file; ``with`` gives its URL."""

    def __init__(self, checkpoints: dict, tasks_dir: Path, log: Path, extra: list[str], start_timeout: float):
        self.port = free_port()
        named = [f"{name}={folder}" for name, folder in checkpoints.items()]
        self.command = [sys.executable, "-m", "ptune", "serve", *named, "--tasks-dir", str(tasks_dir),
                        "--host", "127.0.0.1", "--port", str(self.port), *extra]
        self.log, self.start_timeout = log, start_timeout
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "ServerProcess":
        import httpx

        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(self.command, stdout=out, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with status {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=5).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        self.__exit__()
        raise RuntimeError(f"the server did not answer /health within {self.start_timeout:.0f} s:\n"
                           f"{self.log_tail()}")

    def __exit__(self, *exc) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=20)

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def logged_errors(self) -> list[str]:
        """Lines of the server's log that report an exception."""
        text = self.log.read_text(errors="replace").splitlines()
        return [line for line in text if line.startswith(("Traceback", "ERROR"))]


class MemoryWatch(RssSampler):
    """The server process's resident memory (MB), sampled every ``every`` seconds: marks on request (``now``), and
    the most (``peak``)."""

    def __init__(self, pid: int, every: float = 0.5):
        import psutil

        self.process = psutil.Process(pid)
        super().__init__(every, read=self.now)

    def now(self) -> float:
        try:
            return round(self.process.memory_info().rss / 2**20, 1)
        except Exception:  # the process is gone: psutil.NoSuchProcess, or a zombie on some systems
            return float("nan")


def run_traffic(url: str, rec: Recorder, plan: dict, args, memory: MemoryWatch) -> dict:
    """All clients until the deadline (or the request budget); memory marked at the warm-up's end and after."""
    start = time.monotonic()
    deadline = start + args.seconds
    threads = [threading.Thread(target=client_loop, daemon=True,
                                args=(url, rec, plan, i, args.seed, deadline, args.max_requests))
               for i in range(args.clients)]
    for thread in threads:
        thread.start()
    warm_end = start + args.warmup
    while time.monotonic() < warm_end and any(t.is_alive() for t in threads):
        time.sleep(0.05)
    rec.measuring = True
    after_warmup = memory.now()
    for thread in threads:  # a request outlives the deadline by its timeout at most
        thread.join(max(0.0, deadline - time.monotonic()) + TIMEOUT + 30)
    return {"seconds": round(time.monotonic() - start, 1), "hung_clients": sum(t.is_alive() for t in threads),
            "rss_after_warmup": after_warmup, "rss_end": memory.now()}


def settled_check(url: str, plan: dict, tries: int = 20) -> list[str]:
    """Once the traffic has stopped, a classify, a generate and a whole stream must succeed (a refusal is retried
    for ``tries`` half-seconds: a stream slot held by a client long gone would refuse streams for good)."""
    import httpx

    problems = []
    with httpx.Client(base_url=url, timeout=TIMEOUT) as client:
        for kind in ("classify", "generate", "stream"):
            for _ in range(tries):
                rec = Recorder()
                traffic = Traffic(client, rec, plan, "settled", 0)
                if kind == "stream":
                    traffic.stream()
                else:
                    getattr(traffic, kind)()
                if rec.failures or any(int(s) < 300 for s in rec.statuses[kind]):
                    break
                time.sleep(0.5)
            if rec.failures or not any(int(s) < 300 for s in rec.statuses[kind]):
                problems.append(f"after the traffic, {kind}: {dict(rec.statuses[kind])} {rec.examples[:1]}")
    return problems


def listing_check(url: str, expected: set[str]) -> dict:
    """The tasks ``GET /v1/tasks`` and ``GET /v1/models`` list against the ones served at the start."""
    import httpx

    with httpx.Client(base_url=url, timeout=TIMEOUT) as client:
        tasks = [t["name"] for t in client.get("/v1/tasks").json()["tasks"]]
        models = [m["id"] for m in client.get("/v1/models").json()["data"]]
    report = {"expected": len(expected), "listed": len(tasks)}
    for where, names in (("tasks", tasks), ("models", models)):
        report[f"{where}_lost"] = sorted(expected - set(names))
        report[f"{where}_unexpected"] = sorted(set(names) - expected)
        report[f"{where}_duplicated"] = sorted(n for n, c in Counter(names).items() if c > 1)
    return report


def latency_table(rec: Recorder) -> dict:
    return {kind: {"n": len(values), "p50_ms": round(1000 * percentile(values, 0.5), 1),
                   "p99_ms": round(1000 * percentile(values, 0.99), 1)}
            for kind, values in sorted(rec.latencies.items())}


def verdict(summary: dict, max_growth_mb: float) -> list[str]:
    """Why the run failed (empty: it passed).

    Args:
        summary (dict): what ``soak`` returns.
        max_growth_mb (float): the most the server's resident memory may grow after the warm-up.

    Returns:
        list[str]: one line per problem.

    Example:
        >>> verdict({"failures": {"classify: status 500": 2}, ...}, 64)  # doctest: +SKIP
        ['failed requests: classify: status 500 (2)']
    """
    problems = []
    if summary["failures"]:
        problems.append("failed requests: " + ", ".join(f"{k} ({n})" for k, n in summary["failures"].items()))
    if summary["server_log_errors"]:
        problems.append(f"the server logged {len(summary['server_log_errors'])} error lines")
    if summary["server_exit"] is not None:
        problems.append(f"the server exited during the run (status {summary['server_exit']})")
    if summary["hung_clients"]:
        problems.append(f"{summary['hung_clients']} clients still waiting at the end")
    for kind in KINDS:
        if not any(int(s) < 300 for s in summary["answers"].get(kind, {})):
            problems.append(f"no {kind} request succeeded")
    tasks = summary["tasks"]
    for key in ("lost", "unexpected", "duplicated"):
        for where in ("tasks", "models"):
            if tasks.get(f"{where}_{key}"):
                problems.append(f"/v1/{where}: {key} {tasks[f'{where}_{key}'][:10]}")
    problems.extend(summary["settled"])
    growth = summary["memory_mb"]["growth_after_warmup"]
    if not growth <= max_growth_mb:  # NaN too: memory not measured
        problems.append(f"resident memory grew {growth} MB after the warm-up (at most {max_growth_mb} allowed)")
    return problems


def resolve_model(name: str) -> str:
    """``embedded``: the embedded SmolLM2-135M; ``tiny``: benchmarks/random_models.py's 2-layer random Llama (built
    once into ptune's cache folder); anything else: a model folder or hub id, as ``model.name_or_path``."""
    if name == "embedded":
        return EMBEDDED
    if name != "tiny":
        return name
    sys.path.insert(0, str(SCRIPTS.parent / "benchmarks"))
    from random_models import ensure_model

    from ptune.modeling.base import cache_dir

    return str(ensure_model("tiny", cache_dir() / "random-models"))


def soak(args, work: Path) -> dict:
    """Write the tasks, start the server, run the traffic and the checks after it; the summary, verdict included."""
    t0 = time.perf_counter()
    model = resolve_model(args.model)
    plan = prepare_tasks(work / "tasks", model, args.tasks, args.generation_tasks, args.spare)
    rec = Recorder()
    server = ServerProcess(plan["checkpoints"], work / "tasks", work / "server.log", args.serve_arg,
                           args.start_timeout)
    prepare_s = time.perf_counter() - t0
    print(f"tasks written in {prepare_s:.1f} s; starting the server", file=sys.stderr)
    with server, MemoryWatch(server.proc.pid) as memory:
        after_start, start_s = memory.now(), time.perf_counter() - t0 - prepare_s
        print(f"serving on {server.url}: {args.seconds:g} s of traffic, {args.clients} clients", file=sys.stderr)
        traffic = run_traffic(server.url, rec, plan, args, memory)
        settled = settled_check(server.url, plan)
        tasks = listing_check(server.url, set(plan["checkpoints"]))
        exit_status = server.proc.poll()
    refused = Counter()
    for statuses in rec.statuses.values():
        refused.update({s: n for s, n in statuses.items() if int(s) in {**REFUSALS, **ADD_REFUSALS}})
    from ptune.modeling.base import cpu_model_name

    summary = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpu": cpu_model_name(),
        "model": model, "clients": args.clients, "seconds": traffic["seconds"], "warmup_seconds": args.warmup,
        "prepare_seconds": round(prepare_s, 1), "server_start_seconds": round(start_s, 1),
        "requests": rec.requests, "answers": {k: dict(v) for k, v in sorted(rec.statuses.items())},
        "refused": dict(refused), "latency_after_warmup": latency_table(rec),
        "memory_mb": {"after_start": after_start, "after_warmup": traffic["rss_after_warmup"],
                      "end": traffic["rss_end"], "peak": memory.peak,
                      "growth_after_warmup": round(traffic["rss_end"] - traffic["rss_after_warmup"], 1)},
        "tasks": tasks, "settled": settled, "failures": dict(rec.failures), "failure_examples": rec.examples,
        "server_log_errors": server.logged_errors()[:10], "server_exit": exit_status,
        "hung_clients": traffic["hung_clients"], "max_growth_mb": args.max_growth_mb}
    summary["problems"] = verdict(summary, args.max_growth_mb)
    summary["ok"] = not summary["problems"]
    if not summary["ok"]:
        print(f"server log (last lines):\n{server.log_tail()}", file=sys.stderr)
    return summary


def print_table(summary: dict, out=sys.stderr) -> None:
    """Answers, refusals, failures and latencies by kind; memory; tasks; the verdict."""
    failed = Counter()
    for key, n in summary["failures"].items():
        failed[key.split(":")[0]] += n
    print(f"{'kind':<10}{'ok':>8}{'refused':>9}{'failed':>8}{'p50 ms':>9}{'p99 ms':>9}", file=out)
    for kind in KINDS:
        answers = summary["answers"].get(kind, {})
        ok = sum(n for s, n in answers.items() if int(s) < 300)
        refused = sum(n for s, n in answers.items() if int(s) in {**REFUSALS, **ADD_REFUSALS})
        lat = summary["latency_after_warmup"].get(kind, {})
        print(f"{kind:<10}{ok:>8}{refused:>9}{failed[kind]:>8}{lat.get('p50_ms', float('nan')):>9}"
              f"{lat.get('p99_ms', float('nan')):>9}", file=out)
    mem, tasks = summary["memory_mb"], summary["tasks"]
    print(f"requests {summary['requests']} in {summary['seconds']} s; refused by status {summary['refused']}; "
          f"server memory: {mem['after_warmup']} MB after warm-up, {mem['end']} MB at the end "
          f"({mem['growth_after_warmup']:+} MB), peak {mem['peak']} MB; tasks listed {tasks['listed']} of "
          f"{tasks['expected']}", file=out)
    print("verdict: " + ("OK" if summary["ok"] else "FAILED: " + "; ".join(summary["problems"])), file=out)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="embedded", help="embedded, tiny, or a model folder / hub id")
    length = ap.add_mutually_exclusive_group()
    length.add_argument("--seconds", type=float, default=None, help="length of the traffic (default 60)")
    length.add_argument("--minutes", type=float, default=None)
    ap.add_argument("--warmup", type=float, default=None,
                    help="seconds of traffic before memory is taken and latencies counted (default: a fifth of "
                         "the run, 3 to 60 s)")
    ap.add_argument("--clients", type=int, default=6)
    ap.add_argument("--tasks", type=int, default=3, help="classification tasks served from the start")
    ap.add_argument("--generation-tasks", type=int, default=2)
    ap.add_argument("--spare", type=int, default=2, help="checkpoints that clients add and delete while serving")
    ap.add_argument("--max-requests", type=int, default=200_000, help="stop after this many requests")
    ap.add_argument("--max-growth-mb", type=float, default=64.0,
                    help="fail if the server's resident memory grows more than this after the warm-up")
    ap.add_argument("--serve-arg", action="append", default=[], metavar="OPTION",
                    help="passed on to ptune serve, e.g. --serve-arg=--max-streams=4 (repeatable)")
    ap.add_argument("--start-timeout", type=float, default=300.0, help="seconds the server may take to start")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=None, help="keep the tasks and the server log here")
    ap.add_argument("--json", dest="json_out", type=Path, default=None, help="also write the summary here")
    args = ap.parse_args(argv)
    args.seconds = 60.0 * args.minutes if args.minutes is not None else (args.seconds or 60.0)
    if not 1 <= args.seconds <= 3600:
        ap.error("the run must last 1 s to 60 minutes")
    if args.warmup is None:
        args.warmup = min(60.0, max(3.0, args.seconds / 5))
    if not 0 <= args.warmup < args.seconds:
        ap.error("--warmup must be at least 0 and shorter than the run")
    if not 1 <= args.clients <= 64 or not 1 <= args.max_requests <= 10_000_000:
        ap.error("--clients must be 1..64 and --max-requests 1..10000000")
    if min(args.tasks, args.generation_tasks, args.spare) < 1 or max(args.tasks, args.generation_tasks,
                                                                     args.spare) > 100:
        ap.error("--tasks, --generation-tasks and --spare must be 1..100")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ptune-soak-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        summary = soak(args, work)
    print_table(summary)
    text = json.dumps(summary, indent=2)
    print(text)
    if args.json_out:
        args.json_out.write_text(text)
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # every model is local: the embedded one, tiny, or a folder
    sys.exit(main())
