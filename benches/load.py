"""HTTP load test of anamnesis beside a bare reference server.

Run through benches/load.sh, which builds both release binaries, installs wrk
and oha when missing and passes their paths. Settings come from the
environment (see load.sh). Steps:

1. Start anamnesis on a data directory (fresh, or DATA_DIR kept from an
   earlier run) and load POPULATION profiles with INTERACTIONS interactions
   each through the batch endpoint; print how long that took, the disk used
   and an estimate of the logical data size.
2. For each scenario, run wrk closed-loop (CONNECTIONS connections) against
   anamnesis and then against the reference server serving the same response
   bytes, and print requests/s, p50, p99, p99.9, the server's CPU time per
   request and the ratio of the two throughputs.
3. Open loop: oha at a fixed rate of half the reference's maximum on the card
   by id, against both, so p99 measures service time and not queueing.
"""

import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

from service import Anamnesis, cpu_seconds, disk_bytes, memory, wait_until_up

BIN, REFERENCE, WRK, OHA = sys.argv[1:5]
DURATION = os.environ.get("DURATION", "10s")
CONNECTIONS = int(os.environ.get("CONNECTIONS", "64"))
POPULATION = int(os.environ.get("POPULATION", "100000"))
INTERACTIONS = int(os.environ.get("INTERACTIONS", "20"))
SCENARIOS = os.environ.get("SCENARIOS", "all")
OPEN_LOOP = os.environ.get("OPEN_LOOP", "1") == "1"
DATA_DIR = os.environ.get("DATA_DIR")
HERE = os.path.dirname(os.path.abspath(__file__))


def cpu_model():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown CPU"


class Reference:
    """The bare server, answering with `body` from memory."""

    def __init__(self, body, scratch):
        path = os.path.join(scratch, "reference-body")
        with open(path, "wb") as f:
            f.write(body)
        self.proc = subprocess.Popen([REFERENCE, "127.0.0.1:0", path],
                                     stdout=subprocess.PIPE, text=True)
        self.base = "http://" + self.proc.stdout.readline().strip()
        wait_until_up(self.base, self.proc, "reference")
        self.pid = self.proc.pid

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


def phone(i):
    return "+3161%07d" % i


def populate(svc, n, per):
    """n profiles with `per` interactions each, over four channels, sent in
    batches of 1,000 signals over two connections at once."""
    import concurrent.futures

    def batches():
        batch = []
        for i in range(n):
            for j in range(per):
                batch.append({
                    "channel": ("ivr", "chat", "web", "store")[j % 4],
                    "occurred_at": "2026-%02d-%02dT%02d:%02d:00Z" % (1 + j // 28 % 12, 1 + j % 28, j % 24, i % 60),
                    "identifiers": [{"type": "phone", "value": phone(i)},
                                    {"type": "email", "value": "c%d@example.com" % i}],
                    "traits": {"tier": ("gold", "silver")[i % 2], "preferred_language": "nl"},
                    "answers": [{"key": "reason_for_contact", "value": "delivery"}] if j == per - 1 else [],
                    "event": {"type": "touch", "summary": "interaction %d" % j, "properties": {"j": j}},
                })
                if len(batch) == 1000:
                    yield batch
                    batch = []
        if batch:
            yield batch

    def post(batch):
        body = json.loads(svc.request("POST", "/v1/signals/batch", {"signals": batch}))
        rejected = [r for r in body["results"] if r["status"] >= 300]
        if rejected:
            sys.exit(f"population rejected: {rejected[:3]}")

    started = time.monotonic()
    done = 0
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        pending = []
        for batch in batches():
            pending.append(pool.submit(post, batch))
            done += len(batch)
            if len(pending) >= 4:
                pending.pop(0).result()
            if done % 200_000 == 0:
                rate = done / (time.monotonic() - started)
                print(f"  {done:,} signals, {rate:,.0f}/s", file=sys.stderr, flush=True)
        for p in pending:
            p.result()
    return time.monotonic() - started


def logical_bytes(svc, n, per, sample=200):
    """What the data amounts to as the API returns it: each profile's JSON
    and its interactions' JSON, measured on a sample and scaled to n."""
    step = max(1, n // sample)
    total = 0
    count = 0
    for i in range(0, n, step):
        cid = json.loads(svc.request("GET", "/v1/profiles/lookup?type=phone&value=%2B" + phone(i)[1:]))["customer_id"]
        total += len(svc.request("GET", f"/v1/profiles/{cid}"))
        page = json.loads(svc.request("GET", f"/v1/profiles/{cid}/timeline?limit={max(per, 1)}"))
        total += sum(len(json.dumps(item, separators=(",", ":"))) for item in page["interactions"])
        count += 1
    return total * n / count


WRK_REPORT = """
done = function(summary, latency, requests)
  io.write(string.format("RESULT %d %d %d %d %d %d %d %d\\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency:percentile(99.9), summary.errors.status, summary.errors.connect + summary.errors.read
    + summary.errors.write + summary.errors.timeout, latency.max))
end
"""


def lua(scratch, name, body):
    path = os.path.join(scratch, name + ".lua")
    with open(path, "w") as f:
        f.write(body + WRK_REPORT)
    return path


def scripts(scratch, token):
    auth = '["Authorization"] = "Bearer %s"' % token
    get = lua(scratch, "get", """
request = function()
  return wrk.format("GET", nil, {%s})
end
""" % auth)
    signal_ = lua(scratch, "signal", """
-- One new web visitor per request, with a trait and an event.
local counter = 0
request = function()
  counter = counter + 1
  local body = string.format(
    '{"channel":"web","identifiers":[{"type":"web_cookie","value":"load-%%d-%%d"}],"traits":{"n":%%d},"event":{"type":"page_view","properties":{"path":"/p/%%d"}}}',
    os.time(), counter, counter, counter)
  return wrk.format("POST", "/v1/signals", {["Content-Type"] = "application/json", %s}, body)
end
""" % auth)
    batch = lua(scratch, "batch", """
-- Batches of 100 new loyalty cards.
local counter = 0
request = function()
  local items = {}
  for i = 1, 100 do
    counter = counter + 1
    items[i] = string.format(
      '{"channel":"store","identifiers":[{"type":"loyalty_card","value":"b-%%d-%%d"}],"event":{"type":"purchase"}}',
      os.time(), counter)
  end
  return wrk.format("POST", "/v1/signals/batch", {["Content-Type"] = "application/json", %s},
    '{"signals":[' .. table.concat(items, ",") .. ']}')
end
""" % auth)
    return get, signal_, batch


def wrk(url, script, pid, connections=None):
    """One closed-loop run; returns requests/s, latencies in ms, CPU µs/request."""
    cpu = cpu_seconds(pid)
    out = subprocess.run([WRK, "-t1", f"-c{connections or CONNECTIONS}", f"-d{DURATION}",
                          "-s", script, url], capture_output=True, text=True, check=True).stdout
    cpu = cpu_seconds(pid) - cpu
    m = re.search(r"^RESULT (.*)$", out, re.M)
    if not m:
        sys.exit(f"wrk printed no result:\n{out}")
    requests, micros, p50, p99, p999, status_errors, socket_errors, _ = map(int, m.group(1).split())
    return {
        "rps": requests / (micros / 1e6),
        "p50": p50 / 1000, "p99": p99 / 1000, "p999": p999 / 1000,
        "cpu_us": cpu * 1e6 / max(requests, 1),
        "errors": status_errors + socket_errors,
    }


def oha(url, rate, token=None):
    """Open loop at `rate` requests/s; latencies corrected for coordinated omission."""
    # oha asks for compressed responses unless told otherwise; wrk does not,
    # and the reference never compresses: ask for none, as wrk does.
    args = [OHA, "--no-tui", "--output-format", "json", "-z", DURATION, "-q", str(rate),
            "--latency-correction", "-c", str(CONNECTIONS), "-H", "Accept-Encoding: identity"]
    if token:
        args += ["-H", "Authorization: Bearer " + token]
    out = json.loads(subprocess.run(args + [url], capture_output=True, text=True, check=True).stdout)
    pct = out["latencyPercentiles"]
    codes = out.get("statusCodeDistribution", {})
    return {
        "rps": out["summary"]["requestsPerSec"],
        "p50": pct["p50"] * 1000, "p99": pct["p99"] * 1000, "p999": pct["p99.9"] * 1000,
        "errors": sum(v for k, v in codes.items() if not k.startswith("2")),
    }


def row(name, r, ref=None):
    ratio = f"{r['rps'] / ref['rps']:.2f}" if ref else "-"
    cpu = f"{r['cpu_us']:.0f}" if "cpu_us" in r else "-"
    errors = f"  ({r['errors']} errors)" if r["errors"] else ""
    print(f"| {name} | {r['rps']:,.0f} | {r['p50']:.2f} | {r['p99']:.2f} | {r['p999']:.2f} | {cpu} | {ratio} |{errors}",
          flush=True)


TABLE_HEAD = ("| scenario | requests/s | p50 ms | p99 ms | p99.9 ms | server CPU µs/request | x reference |\n"
              "|---|---|---|---|---|---|---|")


def on_reference(body, scratch, measure):
    """`measure(server)` against a reference server answering with `body`."""
    server = Reference(body, scratch)
    try:
        return measure(server)
    finally:
        server.stop()


def compare(name, svc, path, script, body, scratch):
    """wrk against the service, then against the reference answering with
    the service's `body`; prints both rows and returns both results."""
    r = wrk(svc.base + path, script, svc.pid)
    ref = on_reference(body, scratch, lambda s: wrk(s.base + path, script, s.pid))
    row(name, r, ref)
    row(f"reference, {len(body):,} bytes", ref)
    return r, ref


def main():
    scratch = tempfile.mkdtemp(prefix="anamnesis-load-")
    data = DATA_DIR or os.path.join(scratch, "data")
    os.makedirs(data, exist_ok=True)
    populated = os.path.join(data, "population.json")
    svc = Anamnesis(BIN, data)
    try:
        print(f"machine: {os.cpu_count()} cores, {platform.processor() or platform.machine()}, "
              f"{cpu_model()}; {DURATION} per measurement, {CONNECTIONS} connections")
        if os.path.exists(populated):
            with open(populated) as f:
                info = json.load(f)
            print(f"reusing {data}: {info}", file=sys.stderr)
        else:
            print(f"loading {POPULATION:,} profiles x {INTERACTIONS} interactions", file=sys.stderr)
            took = populate(svc, POPULATION, INTERACTIONS)
            info = {"profiles": POPULATION, "interactions": POPULATION * INTERACTIONS,
                    "seconds": round(took, 1)}
            with open(populated, "w") as f:
                json.dump(info, f)
        signals = info["interactions"]
        print(f"\npopulation: {info['profiles']:,} profiles, {signals:,} interactions; "
              f"loaded at {signals / info['seconds']:,.0f} signals/s ({info['seconds']} s)")
        logical = logical_bytes(svc, info["profiles"], INTERACTIONS)
        # The store is opened exclusively: stop, count what it holds, start again.
        svc.stop()
        stats = subprocess.run([BIN, "store-stats"], env=svc.env, capture_output=True,
                               text=True, check=True).stdout
        live = int(re.search(r"live data: (\d+) bytes", stats).group(1))
        disk = disk_bytes(data)
        print(f"disk: {disk / 2**20:,.0f} MiB; live records in the store (keys and values, "
              f"`anamnesis store-stats`): {live / 2**20:,.0f} MiB ({disk / live:.2f}x); "
              f"profiles and timelines as the API returns them (estimated from a sample): "
              f"{logical / 2**20:,.0f} MiB ({disk / logical:.2f}x)")
        print("\n```\n" + stats.rstrip() + "\n```")
        started = time.monotonic()
        svc = Anamnesis(BIN, data)
        print(f"restart on this store: answering after {time.monotonic() - started:.2f} s")

        mid = info["profiles"] // 2
        cid = json.loads(svc.request("GET", "/v1/profiles/lookup?type=phone&value=%2B" + phone(mid)[1:]))["customer_id"]
        local = "0" + phone(mid)[3:]
        get, single, batch = scripts(scratch, svc.token)
        reads = [
            ("context card by id (hot)", f"/v1/profiles/{cid}/context"),
            ("context card by phone number", f"/v1/context?type=phone&value={local}"),
            ("profile read", f"/v1/profiles/{cid}"),
        ]
        print("\n" + TABLE_HEAD)
        results = {}
        for name, path in reads:
            results[name] = compare(name, svc, path, get, svc.request("GET", path), scratch)
        if SCENARIOS == "reads":
            # One connection: the time one request takes, without queueing.
            for name, path in reads[:2]:
                row(name + ", one connection", wrk(svc.base + path, get, svc.pid, connections=1))
            metrics = svc.request("GET", "/metrics").decode()
            print("\n" + "\n".join(l for l in metrics.splitlines()
                                    if l.startswith(("anamnesis_cache_requests_total",
                                                     "anamnesis_cache_fallbacks_total"))))
        else:
            sample = svc.request("POST", "/v1/signals", {
                "channel": "web", "identifiers": [{"type": "web_cookie", "value": "reference-sample"}],
                "traits": {"n": 1}, "event": {"type": "page_view", "properties": {"path": "/p/1"}}})
            batch_sample = svc.request("POST", "/v1/signals/batch", {"signals": [
                {"channel": "store", "identifiers": [{"type": "loyalty_card", "value": f"ref-{i}"}],
                 "event": {"type": "purchase"}} for i in range(100)]})
            for name, script, body, per in [
                ("single signal ingest (" + ("not durable" if os.environ.get(
                    "ANAMNESIS__STORAGE__DURABLE", "true") == "false" else "durable") + ")",
                 single, sample, 1),
                ("batch ingest, 100 signals per request", batch, batch_sample, 100),
            ]:
                r, _ = compare(name, svc, "/", script, body, scratch)
                if per > 1:
                    print(f"|   = {r['rps'] * per:,.0f} signals/s | | | | | {r['cpu_us'] / per:.1f} per signal | |")
        if OPEN_LOOP and OHA != "-":
            # Half the reference's maximum (the target), and lower rates, to
            # show where service time rather than the machine's limit shows.
            name, path = reads[0]
            ref_max = results[name][1]["rps"]
            body = svc.request("GET", path)
            for share in (2, 4, 8):
                rate = int(ref_max / share)
                print(f"\nopen loop at {rate:,} requests/s (1/{share} of the reference's maximum), "
                      f"{CONNECTIONS} connections, oha, {name}:")
                print("\n" + TABLE_HEAD)
                r = oha(svc.base + path, rate, svc.token)
                ref = on_reference(body, scratch, lambda s: oha(s.base + path, rate))
                row("anamnesis", r)
                row("reference", ref)
                print(f"p99 ratio to the reference at this rate: {r['p99'] / ref['p99']:.2f}")
        rss, peak = memory(svc.pid)
        print(f"\nanamnesis resident memory: {rss:,.0f} MiB now, {peak:,.0f} MiB at most "
              f"(storage.cache_bytes {int(svc.env.get('ANAMNESIS__STORAGE__CACHE_BYTES', 536870912)) >> 20} MiB)")
    except BaseException:
        alive = svc.proc.poll() is None
        print(f"\nfailed; the service {'is still running' if alive else f'exited with {svc.proc.returncode}'}; "
              f"the end of its log ({svc.log_path}):", file=sys.stderr)
        with open(svc.log_path) as f:
            print("".join(f.readlines()[-30:]), file=sys.stderr)
        raise
    finally:
        svc.stop()
        if not DATA_DIR:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
