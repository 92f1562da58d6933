"""The official SDK's own cost per training step: its step against a server that answers instantly.

A second process serves the real tinker-std server (torch backend) behind ``Canned``, an ASGI
wrapper that lets the first ``forward_backward`` + ``optim_step`` and their ``retrieve_future``
polls through, records the answers, and from then on answers every ``forward_backward`` and
``optim_step`` submit and every poll of them at once with those recorded bytes (same sizes, same
protobuf result; the engine never runs). This process runs the in-process step and the SDK step
against that "null" server, interleaved, and prints each one's wall time and this process's CPU
time per step. The null server's work is in the other process, so the SDK step's CPU here is the
SDK's own (request building, protobuf, httpx, its event-loop thread) plus the kernel's loopback.

When the server runs in the caller's process (bench/server_overhead.py, the tests, conformance
over HTTP), that CPU shares the GIL with the engine's Python, so a lower bound on the SDK-over-HTTP
step is about ``in-process step + SDK CPU per step``; the printed "floor" is that over the
in-process step (issue 23 asks for <= 1.3 on tiny-llama). Measurement only.

    python bench/sdk_floor.py --model tiny --threads 1 [--warmup 2 --steps 30]
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import common as c

BATCH, SEQ, RANK = 4, 128, 16
KEY = "tml-bench"
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class Canned:
    """ASGI wrapper: records the first answers of a training step, then replays them (above)."""

    def __init__(self, app: Any, config: dict[str, Any]) -> None:
        self.app, self.config = app, config
        self.submit: dict[str, bytes] = {}  # path -> submit answer
        self.result: dict[str, tuple[bytes, bytes]] = {}  # path -> (content type, result bytes)
        self.ids: dict[str, str] = {}  # real request id -> path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "").removeprefix("/api/v1/")
        ready = len(self.result) == 2
        if path == "client/config" and self.config:
            answer = json.loads(await _answer_of(self.app, scope, receive))
            await _answer(send, "application/json", json.dumps({**answer, **self.config}).encode())
            return
        if scope["type"] != "http" or path not in ("forward_backward", "optim_step", "retrieve_future"):
            await self.app(scope, receive, send)
            return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        if ready and path != "retrieve_future":
            await _answer(send, "application/json", self.submit[path])
            return
        if ready:
            canned = json.loads(body)["request_id"].removeprefix("canned-")
            await _answer(send, *self.result[canned])
            return
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        sent: dict[str, Any] = {"body": b"", "type": b"application/json"}

        async def record(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                sent["type"] = dict(message.get("headers", [])).get(b"content-type", b"application/json")
            else:
                sent["body"] += message.get("body", b"")
            await send(message)

        await self.app(scope, replay, record)
        if path != "retrieve_future":
            answer = json.loads(sent["body"])
            self.ids[answer["request_id"]] = path
            self.submit[path] = json.dumps({**answer, "request_id": f"canned-{path}"}).encode()
        else:
            of = self.ids.get(json.loads(body)["request_id"])
            if of is not None and b"try_again" not in sent["body"]:
                self.result[of] = (sent["type"], sent["body"])


async def _answer_of(app: Any, scope: Scope, receive: Receive) -> bytes:
    body = b""

    async def keep(message: dict[str, Any]) -> None:
        nonlocal body
        body += message.get("body", b"")

    await app(scope, receive, keep)
    return body


async def _answer(send: Send, content_type: str | bytes, body: bytes) -> None:
    kind = content_type.encode() if isinstance(content_type, str) else content_type
    headers = [(b"content-type", kind), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def serve(port_file: str, threads: int, config: dict[str, Any], canned: bool) -> None:
    """A server process: the real server (torch backend), behind ``Canned`` if ``canned``."""
    import torch

    from tinker_std.server import TinkerServer

    torch.set_num_threads(threads)
    service = c.open_service("torch")
    assert service is not None
    server = TinkerServer(service, api_key=KEY)
    if canned:
        server._server.config.app = Canned(server.app, config)
    server.start()
    with open(port_file, "w") as f:
        f.write(server.url)
    while True:
        time.sleep(3600)


#: url -> process id of each running ``server_process`` (bench/server_overhead.py reads its CPU)
CHILDREN: dict[str, int] = {}


def process_cpu(pid: int) -> float:
    """CPU seconds so far of every thread of process ``pid`` (Linux ``schedstat``, nanoseconds;
    0.0 elsewhere)."""
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return total / 1e9


@contextlib.contextmanager
def server_process(threads: int, config: dict[str, Any] | None = None, canned: bool = False) -> Iterator[str]:
    """The URL of a server (``serve``) in a child process, killed on exit."""
    port_file = f"/tmp/sdk_floor.{os.getpid()}.{time.monotonic_ns()}.url"
    args = [sys.executable, __file__, "--serve", port_file, str(threads), json.dumps(config or {}), str(int(canned))]
    child = subprocess.Popen(args, env=os.environ.copy())
    try:
        deadline = time.monotonic() + 300
        while not os.path.exists(port_file) or not open(port_file).read():
            if child.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the server process did not start")
            time.sleep(0.1)
        url = open(port_file).read()
        CHILDREN[url] = child.pid
        yield url
    finally:
        child.kill()
        child.wait()
        if os.path.exists(port_file):
            os.remove(port_file)


def step_pair(local: Any, remote: Any, tokens: Any) -> tuple[Callable[[], None], Callable[[], None]]:
    """One training step (``forward_backward`` on ``tokens`` + ``optim_step``) on the in-process
    client ``local`` and on the SDK client ``remote``, the same data and AdamW parameters on both."""
    import tinker

    data = c.datums(tokens)
    sdk_data = [  # the SDK converts plain lists at runtime but types loss_fn_inputs dict[str, TensorData]
        tinker.Datum(
            model_input=tinker.ModelInput.from_ints(r[:-1]),
            loss_fn_inputs={"target_tokens": r[1:], "weights": [1.0] * (len(r) - 1)},  # type: ignore[dict-item]
        )
        for r in tokens.tolist()
    ]

    def local_step() -> None:
        fb, op = local.forward_backward(data, "cross_entropy"), local.optim_step(c.ADAM)
        fb.result()
        op.result()

    def sdk_step() -> None:
        fb = remote.forward_backward(sdk_data, "cross_entropy")
        op = remote.optim_step(tinker.AdamParams(learning_rate=c.ADAM.learning_rate))
        fb.result()
        op.result()

    return local_step, sdk_step


def main() -> None:
    os.environ.setdefault("TINKER_TELEMETRY", "0")
    import tinker

    config = {}
    if "--client-config" in sys.argv:  # e.g. '{"use_pyqwest_transport": true}': what the null server advertises
        at = sys.argv.index("--client-config")
        config = json.loads(sys.argv[at + 1])
        del sys.argv[at : at + 2]
    args = c.parse_args(__doc__ or "", warmup=2, steps=30)
    with server_process(args.threads, config, canned=True) as url:
        local_svc = c.open_service(args.backend)
        assert local_svc is not None
        local = c.training_client(local_svc, args.base_model, RANK)
        tokens = c.random_tokens(BATCH, SEQ + 1, local.spec.vocab_size)
        sdk = tinker.ServiceClient(base_url=url, api_key=KEY)
        remote = sdk.create_lora_training_client(
            base_model=args.base_model, rank=RANK, seed=0, train_unembed=False
        ).result()
        local_step, sdk_step = step_pair(local, remote, tokens)
        sdk_step()  # the real step the null server records
        print(f"# load average {' / '.join(f'{x:.1f}' for x in os.getloadavg())} at {time.strftime('%H:%M:%S')}")
        steps: dict[str, Callable[[], object]] = {"in-process": local_step, "sdk-null-server": sdk_step}
        walls, cpus = _interleaved(steps, args.warmup, args.steps)
        for name in steps:
            print(
                f"step {name:>16}: wall {c.summary(walls[name])}; CPU of this process "
                f"median {statistics.median(cpus[name]) * 1e3:.1f} ms"
            )
        engine, engine_cpu = statistics.median(walls["in-process"]), statistics.median(cpus["in-process"])
        sdk_cpu = statistics.median(cpus["sdk-null-server"])
        print(
            f"SDK CPU per step {sdk_cpu * 1e3:.1f} ms; floor of an SDK-over-HTTP step with the server in this "
            f"process ~ (in-process + SDK CPU) / in-process = {(engine + sdk_cpu) / engine:.3f} by wall, "
            f"{(engine_cpu + sdk_cpu) / engine_cpu:.3f} by CPU"
        )
        print(f"# load average {' / '.join(f'{x:.1f}' for x in os.getloadavg())} at {time.strftime('%H:%M:%S')}")
        local_svc.close()


def _interleaved(
    fns: dict[str, Callable[[], object]], warmup: int, steps: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    walls: dict[str, list[float]] = {name: [] for name in fns}
    cpus: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(steps):
        for name, fn in fns.items():
            wall, cpu = time.perf_counter(), time.process_time()
            fn()
            cpus[name].append(time.process_time() - cpu)
            walls[name].append(time.perf_counter() - wall)
    return walls, cpus


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--serve":
        serve(sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4]), sys.argv[5] == "1")
    else:
        main()
