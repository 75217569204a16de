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
# "1": one redis-server; "cluster": a Redis Cluster of three primaries.
REDIS = os.environ.get("REDIS", "0")
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


def counters(instances):
    """Responses by status, and store write re-runs, summed over the instances."""
    by_status, retries = {}, 0.0
    for svc in instances:
        for line in svc.request("GET", "/metrics").decode().splitlines():
            if line.startswith("anamnesis_http_requests_total{"):
                status = line.split('status="')[1].split('"')[0]
                by_status[status] = by_status.get(status, 0) + float(line.rsplit(" ", 1)[1])
            elif line.startswith("anamnesis_store_retries_total"):
                retries += float(line.rsplit(" ", 1)[1])
    return by_status, retries


def measure(label, instances, scratch):
    hot = populate(instances[0])
    get, signal_, _ = load.scripts(scratch, instances[0].token)
    for name, path, script in (
        ("context card by id", f"/v1/profiles/{hot}/context", get),
        ("context card by phone", "/v1/context?type=phone&value=%2B31610000000", get),
        ("durable single signal", "/v1/signals", signal_),
    ):
        before, retried = counters(instances)
        load.row(f"{label}: {name}", together(instances, path, script))
        after, retried_after = counters(instances)
        failed = {s: after[s] - before.get(s, 0) for s in after
                  if not s.startswith("2") and after[s] > before.get(s, 0)}
        if failed or retried_after > retried:
            # What the errors were, as the instances counted them.
            print(f"|   answers other than 2xx: {failed or 'none'}; "
                  f"store re-runs (serialization conflicts): {retried_after - retried:,.0f} |")


def start_redis(scratch):
    """REDIS=1: one server; REDIS=cluster: three primaries. The processes,
    and the settings that point the service at them."""
    def node(port, *more):
        data = tempfile.mkdtemp(dir=scratch)
        return subprocess.Popen(["redis-server", "--port", str(port), "--save", "",
                                 "--appendonly", "no", "--dir", data, *more],
                                stdout=subprocess.DEVNULL)
    if REDIS == "1":
        port = free_port()
        procs = [node(port)]
        time.sleep(0.3)
        return procs, {"ANAMNESIS__REDIS__URL": f"redis://127.0.0.1:{port}/0"}
    ports = [free_port() for _ in range(3)]
    procs = [node(p, "--cluster-enabled", "yes", "--cluster-port", str(free_port()))
             for p in ports]
    time.sleep(0.5)
    subprocess.run(["redis-cli", "--cluster", "create", *[f"127.0.0.1:{p}" for p in ports],
                    "--cluster-replicas", "0", "--cluster-yes"],
                   check=True, capture_output=True)
    while not all(b"cluster_state:ok" in subprocess.run(
            ["redis-cli", "-p", str(p), "CLUSTER", "INFO"], capture_output=True).stdout
            for p in ports):
        time.sleep(0.1)
    seeds = ",".join(f"redis://127.0.0.1:{p}" for p in ports)
    return procs, {"ANAMNESIS__REDIS__CLUSTER_NODES": seeds}


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
    redis = []
    extra = {"ANAMNESIS__CACHE__LOCAL_BYTES": os.environ.get("ANAMNESIS__CACHE__LOCAL_BYTES",
                                                             str(64 << 20))}
    if REDIS != "0":
        redis, settings = start_redis(scratch)
        extra.update(settings)
    which = {"0": "no", "1": "one server", "cluster": "a cluster of three primaries"}[REDIS]
    print(f"PostgreSQL (fsync on) at {url}; {POPULATION:,} profiles; wrk {DURATION}, "
          f"{CONNECTIONS} connections in all; Redis: {which}\n")
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
        for proc in redis:
            proc.kill()
        subprocess.run(["bash", os.path.join(HERE, "..", "tests", "tools", "postgres.sh"),
                        "stop", os.path.join(pg_dir, "data")])
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
