"""Soak: one webhook worker held at a constant 1,000 admissions per second for 10 minutes.

The server is `bench.webhook_bench.Server` (one `comptroller webhook` process over TLS on
127.0.0.1, a static view of `policies/default`); `wrk` drives it open-loop, wrk2-style: a Lua
schedule (monotonic clock through LuaJIT's FFI) gives every request a start slot 1 ms after the
previous one, so a slow server does not slow the load down: it falls behind the schedule, which
is counted (`behind_schedule`: requests sent over 10 ms after their slot; `max_lag_ms`). On a
shared machine lag also comes from wrk or the server waiting for a CPU; `server_cpu_percent`
tells the two apart. Requests cycle through /validate and /mutate of a Pod and a Deployment
review, as the API server sends them. The server's RSS is read from /proc every few seconds:
flat memory means the end of the run is within a few MiB of its start after warm-up.

    COMPTROLLER_SOAK_SECONDS=60 python -m bench.soak_bench   # `make bench` runs the full 600 s
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.webhook_bench import DEFAULT_POLICIES, Server, deployment_review, pod_review, wrk_binary

RPS_TARGET = 1000
DEFAULT_DURATION_S = 600
CONNECTIONS = 16
SAMPLE_EVERY_S = 5.0
# Memory is judged after warm-up (allocator arenas, caches, the first GC generations filling up).
WARMUP_FRACTION = 0.1
FLAT_TOLERANCE_MIB = 8.0
# A request sent this much after its slot counts as behind schedule (wrk's timers tick in whole
# milliseconds, so a slot is routinely up to 1 ms late).
LATE_MS = 10

LUA = r"""
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } soak_timespec;
int clock_gettime(int clk_id, soak_timespec *tp);
]]
local ts = ffi.new("soak_timespec")
local function now_ms()
  ffi.C.clock_gettime(1, ts)  -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end

local threads = {}
function setup(thread) table.insert(threads, thread) end

local period = 1000 / tonumber(os.getenv("SOAK_THREAD_RPS"))
local late_ms = tonumber(os.getenv("SOAK_LATE_MS"))
local cycle, index, next_slot = {}, 0, nil
behind, max_lag_ms, non200 = 0, 0, 0

function init(args)
  for item in string.gmatch(os.getenv("SOAK_REQUESTS"), "[^;]+") do
    local path, file = string.match(item, "([^=]+)=(.+)")
    local f = assert(io.open(file, "rb"))
    table.insert(cycle, wrk.format("POST", path, {["Content-Type"] = "application/json"}, f:read("*a")))
    f:close()
  end
end

function delay()
  local now = now_ms()
  next_slot = (next_slot or now) + period
  local wait = next_slot - now
  if wait < -late_ms then
    behind = behind + 1
    if -wait > max_lag_ms then max_lag_ms = -wait end
  end
  return math.max(0, wait)
end

function request()
  index = index % #cycle + 1
  return cycle[index]
end

function response(status, headers, body)
  if status ~= 200 then non200 = non200 + 1 end
end

function done(summary, latency, requests)
  local late, lag, bad = 0, 0, 0
  for _, thread in ipairs(threads) do
    late = late + thread:get("behind")
    lag = math.max(lag, thread:get("max_lag_ms"))
    bad = bad + thread:get("non200")
  end
  local e = summary.errors
  io.write(string.format(
    'SOAK {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "max_us": %d, '
    .. '"errors": %d, "non200": %d, "behind_schedule": %d, "max_lag_ms": %.1f}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency.max,
    e.connect + e.read + e.write + e.status + e.timeout, bad, late, lag))
end
"""


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class RssSampler:
    """RSS of `pid` every `every` seconds, in a thread, until stopped."""

    def __init__(self, pid: int, *, every: float = SAMPLE_EVERY_S) -> None:
        self.pid, self.every = pid, every
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._started = time.monotonic()

    def _run(self) -> None:
        while True:
            self.samples.append((time.monotonic() - self._started, rss_mib(self.pid)))
            if self._stop.wait(self.every):
                return

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append((time.monotonic() - self._started, rss_mib(self.pid)))


def soak(url: str, requests: dict[str, Path], *, duration: float, workdir: Path) -> dict:
    script = workdir / "soak.lua"
    script.write_text(LUA)
    threads = 1  # one wrk thread easily paces 1,000 rps; the server is what is measured
    env = {
        **os.environ,
        "SOAK_THREAD_RPS": str(RPS_TARGET / threads),
        "SOAK_LATE_MS": str(LATE_MS),
        "SOAK_REQUESTS": ";".join(f"{path}={file}" for path, file in requests.items()),
    }
    result = subprocess.run(
        [wrk_binary(), "-t", str(threads), "-c", str(CONNECTIONS), "-d", f"{duration:g}s",
         "--timeout", "5s", "-s", str(script), url],
        capture_output=True, text=True, env=env, timeout=duration + 120, check=True,
    )
    line = next((x for x in result.stdout.splitlines() if x.startswith("SOAK ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary:\n{result.stdout}\n{result.stderr}")
    return json.loads(line[len("SOAK "):])


def run(*, duration: float | None = None, policies: Path | None = None) -> dict:
    duration = float(duration or os.environ.get("COMPTROLLER_SOAK_SECONDS") or DEFAULT_DURATION_S)
    policies = policies or DEFAULT_POLICIES
    with tempfile.TemporaryDirectory(prefix="soak-bench-") as tmp:
        workdir = Path(tmp)
        bodies = {}
        for name, review in (("pod", pod_review()), ("deployment", deployment_review())):
            bodies[name] = workdir / f"{name}.json"
            bodies[name].write_text(json.dumps(review))
        # The query string only keeps the four (path, body) pairs apart; the app ignores it.
        requests = {
            f"/{verb}?{name}": body for verb in ("validate", "mutate") for name, body in bodies.items()
        }
        server = Server(workdir, policies)
        try:
            for name, body in bodies.items():  # judged for real, and admitted: the whole rule set runs
                verdict = server.post("/validate", body.read_bytes())["response"]
                if not verdict["allowed"]:
                    raise RuntimeError(f"the {name} review is denied: {verdict['status']['message']}")
            pid = server.process.pid
            rss_idle = rss_mib(pid)
            cpu_before = cpu_seconds(pid)
            with RssSampler(pid) as sampler:
                stats = soak(server.url, requests, duration=duration, workdir=workdir)
            cpu = cpu_seconds(pid) - cpu_before
            alive = server.process.poll() is None
        finally:
            server.stop()
    seconds = stats["duration_us"] / 1e6
    warm = [rss for t, rss in sampler.samples if t >= duration * WARMUP_FRACTION] or [sampler.samples[-1][1]]
    rss_start, rss_end = warm[0], warm[-1]
    errors = stats["errors"] + stats["non200"] + (0 if alive else 1)
    return {
        "soak": {
            "rps_target": RPS_TARGET,
            "duration_s": round(seconds, 1),
            "requests": stats["requests"],
            "achieved_rps": round(stats["requests"] / seconds, 1),
            "errors": errors,
            "behind_schedule": stats["behind_schedule"],
            "max_lag_ms": stats["max_lag_ms"],
            "p50_ms": round(stats["p50_us"] / 1000, 3),
            "p99_ms": round(stats["p99_us"] / 1000, 3),
            "max_ms": round(stats["max_us"] / 1000, 3),
            "server_cpu_percent": round(100 * cpu / seconds, 1),
            "rss_idle_mib": round(rss_idle, 1),
            "rss_start_mib": round(rss_start, 1),
            "rss_end_mib": round(rss_end, 1),
            "rss_max_mib": round(max(rss for _, rss in sampler.samples), 1),
            "memory_flat": rss_end - rss_start <= FLAT_TOLERANCE_MIB,
            "ok": errors == 0 and rss_end - rss_start <= FLAT_TOLERANCE_MIB,
        }
    }


if __name__ == "__main__":
    print(json.dumps(run(duration=float(sys.argv[1]) if len(sys.argv) > 1 else None), indent=2))
