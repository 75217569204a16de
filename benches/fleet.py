"""One, two and three instances over one PostgreSQL database, against one
instance on the embedded store: context-card reads and durable single-signal
ingest, with wrk spread evenly over the instances (one wrk per instance, run
together; requests/s summed, the worst p99 reported). See benches/fleet.sh.

Everything shares this machine: the instances, the database, Redis when
asked for, and the load generators. On 2 cores more instances cannot add
CPU; the figures show what the fleet's coordination costs, not what a fleet
of machines would do.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from ports import free_port
from service import Anamnesis

BIN = sys.argv[1]
# load.py reads the binaries it drives from its arguments.
sys.argv = [sys.argv[0], BIN, "-", shutil.which("wrk") or "wrk", "-"]
import load  # noqa: E402

DURATION = os.environ.get("DURATION", "10s")
CONNECTIONS = int(os.environ.get("CONNECTIONS", "64"))
POPULATION = int(os.environ.get("POPULATION", "20000"))
INSTANCES = [int(n) for n in os.environ.get("INSTANCES", "1 2 3").split()]
REDIS = os.environ.get("REDIS", "0") == "1"
HERE = os.path.dirname(os.path.abspath(__file__))


def populate(svc):
    """POPULATION profiles (a phone and a web cookie each), in batches; the
    id of the first, the hot customer every read asks for."""
    first = None
    for start in range(0, POPULATION, 500):
        signals = [{"channel": "web",
                    "identifiers": [{"type": "phone", "value": f"+3161{n:07d}"},
                                    {"type": "web_cookie", "value": f"fleet-{n}"}],
                    "traits": {"n": n}, "event": {"type": "page_view"}}
                   for n in range(start, min(start + 500, POPULATION))]
        result = json.loads(svc.request("POST", "/v1/signals/batch", {"signals": signals}))
        first = first or result["results"][0]["customer_id"]
    return first


def together(instances, path, script):
    """wrk on every instance at once, CONNECTIONS split between them."""
    per = max(1, CONNECTIONS // len(instances))
    results = []
    procs = []
    import threading
    for svc in instances:
        t = threading.Thread(target=lambda s=svc: results.append(
            load.wrk(s.base + path, script, s.pid, connections=per)))
        t.start()
        procs.append(t)
    for t in procs:
        t.join()
    return {
        "rps": sum(r["rps"] for r in results),
        "p50": max(r["p50"] for r in results),
        "p99": max(r["p99"] for r in results),
        "p999": max(r["p999"] for r in results),
        "cpu_us": sum(r["cpu_us"] * r["rps"] for r in results) / max(1, sum(r["rps"] for r in results)),
        "errors": sum(r["errors"] for r in results),
    }


def measure(label, instances, scratch):
    hot = populate(instances[0])
    get, signal_, _ = load.scripts(scratch, instances[0].token)
    for name, path, script in (
        ("context card by id", f"/v1/profiles/{hot}/context", get),
        ("context card by phone", "/v1/context?type=phone&value=%2B31610000000", get),
        ("durable single signal", "/v1/signals", signal_),
    ):
        load.row(f"{label}: {name}", together(instances, path, script))


def main():
    bin_ = BIN
    scratch = tempfile.mkdtemp(prefix="anamnesis-fleet-")
    pg_dir = os.path.join(scratch, "pg")
    os.makedirs(pg_dir)
    os.chmod(scratch, 0o755)
    url = subprocess.run(
        ["bash", os.path.join(HERE, "..", "tests", "tools", "postgres.sh"), "start",
         os.path.join(pg_dir, "data")],
        env={**os.environ, "PG_DURABLE": "1"}, capture_output=True, text=True, check=True,
    ).stdout.strip().splitlines()[-1]
    redis = None
    extra = {"ANAMNESIS__CACHE__LOCAL_BYTES": os.environ.get("ANAMNESIS__CACHE__LOCAL_BYTES",
                                                             str(64 << 20))}
    if REDIS:
        port = free_port()
        redis = subprocess.Popen(["redis-server", "--port", str(port), "--save", "",
                                  "--appendonly", "no"], stdout=subprocess.DEVNULL)
        extra["ANAMNESIS__REDIS__URL"] = f"redis://127.0.0.1:{port}/0"
        time.sleep(0.3)
    print(f"PostgreSQL (fsync on) at {url}; {POPULATION:,} profiles; wrk {DURATION}, "
          f"{CONNECTIONS} connections in all; Redis: {'yes' if REDIS else 'no'}\n")
    print(load.TABLE_HEAD)
    try:
        os.environ.update(extra)
        data = os.path.join(scratch, "sled")
        os.makedirs(data)
        svc = Anamnesis(bin_, data)
        try:
            measure("sled, 1 instance", [svc], scratch)
        finally:
            svc.stop()
        for n in INSTANCES:
            schema = f"fleet_{n}_{os.getpid()}"
            os.environ.update({
                "ANAMNESIS__STORAGE__BACKEND": "postgres",
                "ANAMNESIS__STORAGE__POSTGRES__URL": url,
                "ANAMNESIS__STORAGE__POSTGRES__SCHEMA": schema,
            })
            subprocess.run([bin_, "migrate"], check=True, capture_output=True)
            instances = []
            try:
                for i in range(n):
                    data = os.path.join(scratch, f"pg-{n}-{i}")
                    os.makedirs(data)
                    instances.append(Anamnesis(bin_, data))
                measure(f"postgres, {n} instance{'s' if n > 1 else ''}", instances, scratch)
            finally:
                for svc in instances:
                    svc.stop()
            for key in ("ANAMNESIS__STORAGE__BACKEND", "ANAMNESIS__STORAGE__POSTGRES__URL",
                        "ANAMNESIS__STORAGE__POSTGRES__SCHEMA"):
                os.environ.pop(key)
    finally:
        if redis:
            redis.kill()
        subprocess.run(["bash", os.path.join(HERE, "..", "tests", "tools", "postgres.sh"),
                        "stop", os.path.join(pg_dir, "data")])
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
