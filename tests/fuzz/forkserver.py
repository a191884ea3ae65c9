"""Fork server for the CLI fuzz suite: import the CLI and torch once, fork a child per case.

Run as a script (``python tests/fuzz/forkserver.py``); the client is :class:`fuzzlib.ForkServer`.
Protocol: one JSON object per line. The server answers ``{"ready": ...}`` once its imports are done,
then reads requests ``{"args": [...], "cwd": DIR, "env": {...}, "unset": [...], "timeout": S}`` and
answers each with ``{"status": "exit"|"signal"|"hang"|"refused", "rc": ..., "stdout": ..., "stderr": ...,
"seconds": ...}``.

Fork safety: this process never runs a torch op, so torch's intra-op (OpenMP) and inter-op pools are
never started here; every child calls ``torch.set_num_threads(1)`` before the command runs. Before
each fork the server checks that it has no thread beyond those its imports started (torch's import
leaves one idle native thread; pyarrow's jemalloc background thread is turned off through
``JE_ARROW_MALLOC_CONF`` by the client); a request arriving after that set changed is refused.

Each child runs in its own process group, with stdin on /dev/null and fd 1/2 on files in the case
folder, and runs ``embadvisor.advisor.cli.main()`` exactly as ``python -m embadvisor`` does
(``SystemExit`` gives the exit code, anything else is printed as a traceback with exit code 1, and
non-daemon threads and atexit handlers run as at interpreter exit). The server waits at most
``timeout`` seconds, then SIGKILLs the child's process group ("hang"); it also kills what is left
of the group after a normal exit (stray worker processes).
"""

from __future__ import annotations

import importlib
import io
import json
import os
import signal
import sys
import time

# imported once here so each child starts with them loaded (the point of the fork server)
PRELOAD = (
    "torch", "numpy", "pyarrow", "pyarrow.parquet", "pyarrow.csv", "optuna", "sqlalchemy", "sklearn.metrics",
    "embadvisor.advisor.cli", "embadvisor.advisor.report", "embadvisor.advisor.recommend",
    "embadvisor.advisor.search", "embadvisor.advisor.workloads", "embadvisor.advisor.pareto",
    "embadvisor.advisor.export", "embadvisor.advisor.distributed", "embadvisor.advisor.storage",
    "embadvisor.advisor.vector_search", "embadvisor.advisor.plot", "embadvisor.api", "embadvisor.build",
    "embadvisor.kernels", "embadvisor.defaults",
    "embadvisor.tasks.api", "embadvisor.tasks.datasets", "embadvisor.tasks.trainer", "embadvisor.profiles.build",
    "embadvisor.profiles.synth", "embadvisor.methods", "embadvisor.units", "embadvisor.vectors",
)
MAX_OUTPUT = 32 << 20  # characters of stdout/stderr sent back per case (the files keep everything)


def _threads() -> list[str] | None:
    try:
        return sorted(os.listdir("/proc/self/task"))
    except OSError:  # not Linux: no check
        return None


def _read(path: str) -> str:
    try:
        with open(path, "rb") as fh:
            data = fh.read(4 * MAX_OUTPUT)
    except OSError:
        return ""
    return data.decode("utf-8", errors="backslashreplace")[:MAX_OUTPUT]


def _child(req: dict, out_path: str, err_path: str, proto: tuple[int, int]) -> None:
    """Run one CLI invocation in this (forked) process and ``os._exit`` with its code. Never returns."""
    code = 1
    try:
        os.setpgid(0, 0)
        for fd in proto:
            os.close(fd)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        for fd, path in ((1, out_path), (2, err_path)):
            f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.dup2(f, fd)
            os.close(f)
        sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False), encoding="utf-8")
        sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8")
        sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding="utf-8",
                                      errors="backslashreplace", line_buffering=True)
        os.chdir(req["cwd"])
        for k in req.get("unset", ()):
            os.environ.pop(k, None)
        os.environ.update(req.get("env", {}))
        import torch

        torch.set_num_threads(1)
        from embadvisor.advisor import cli

        sys.argv = ["embadvisor", *req["args"]]
        try:
            cli.main()
            code = 0
        except SystemExit as e:
            if e.code is None:
                code = 0
            elif isinstance(e.code, int):
                code = e.code
            else:  # what the interpreter does with sys.exit("text")
                print(e.code, file=sys.stderr)
                code = 1
        except BaseException:  # noqa: BLE001 - what the interpreter would print
            import traceback

            traceback.print_exc()
            code = 1
        try:  # interpreter exit: wait for non-daemon threads, run atexit handlers
            import atexit
            import threading

            threading._shutdown()  # type: ignore[attr-defined]
            atexit._run_exitfuncs()
        except BaseException:  # noqa: BLE001
            import traceback

            traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
            try:
                stream.flush()
            except BaseException:  # noqa: BLE001, S110
                pass
        os._exit(code & 0xFF if code >= 0 else 1)


def _run(req: dict, proto: tuple[int, int], baseline: list[str] | None) -> dict:
    now = _threads()
    if baseline is not None and now != baseline:
        return {"status": "refused", "error": f"fork server has threads {now}, expected {baseline}"}
    out_path = os.path.join(req.get("logdir", req["cwd"]), "stdout.txt")
    err_path = os.path.join(req.get("logdir", req["cwd"]), "stderr.txt")
    sys.stdout.flush()
    sys.stderr.flush()
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        _child(req, out_path, err_path, proto)
    deadline = start + float(req.get("timeout", 20))
    status, rc, sig = "exit", None, None
    delay = 0.002
    while True:
        wpid, wstatus = os.waitpid(pid, os.WNOHANG)
        if wpid:
            break
        if time.monotonic() > deadline:
            status = "hang"
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            _, wstatus = os.waitpid(pid, 0)
            break
        time.sleep(delay)
        delay = min(0.05, delay * 1.5)
    seconds = time.monotonic() - start
    try:  # whatever the child left running in its group (e.g. spawned workers)
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if status != "hang":
        if os.WIFEXITED(wstatus):
            rc = os.WEXITSTATUS(wstatus)
        else:
            status, sig = "signal", os.WTERMSIG(wstatus)
    return {"status": status, "rc": rc, "signal": sig, "seconds": seconds,
            "stdout": _read(out_path), "stderr": _read(err_path)}


def serve() -> None:
    proto_in, proto_out = os.dup(0), os.dup(1)
    # stray prints of this process must not reach the protocol pipe
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)
    failed = []
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception as e:  # noqa: BLE001 - optional extras (plotting) may be missing
            failed.append(f"{name}: {type(e).__name__}: {e}")
    baseline = _threads()
    reader = os.fdopen(proto_in, "r", encoding="utf-8")
    writer = os.fdopen(proto_out, "w", encoding="utf-8")

    def send(obj: dict) -> None:
        writer.write(json.dumps(obj) + "\n")
        writer.flush()

    send({"ready": True, "pid": os.getpid(), "threads": None if baseline is None else len(baseline),
          "import_failures": failed})
    for line in reader:
        if not line.strip():
            continue
        req = json.loads(line)
        if req.get("quit"):
            break
        send(_run(req, (proto_in, proto_out), baseline))


if __name__ == "__main__":
    serve()
