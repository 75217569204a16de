"""How long can one profile hold the committer? Fills a profile to its size
cap (profiles.max_profile_bytes), then times single signals and a batch of
BATCH signals to it, while an innocent writer posts single signals about
other customers and records its worst latency.

    python3 benches/heavy.py target/release/anamnesis
    BATCH=1000 SINGLES=200 python3 benches/heavy.py target/release/anamnesis
"""

import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.error

from service import Anamnesis

BATCH = int(os.environ.get("BATCH", "1000"))
SINGLES = int(os.environ.get("SINGLES", "200"))
PHONE = "+31612345678"


def post(svc, path, body):
    started = time.perf_counter()
    try:
        out = json.loads(svc.request("POST", path, body))
    except urllib.error.HTTPError as e:
        out = {"status": e.code, "error": json.loads(e.read() or b"{}")}
    return time.perf_counter() - started, out


def main():
    data = tempfile.mkdtemp(prefix="anamnesis-heavy-")
    svc = Anamnesis(sys.argv[1], data)
    try:
        filler = "x" * 2000
        rounds = 0
        while True:
            traits = {f"t{rounds}_{i}": filler for i in range(25)}
            _, out = post(svc, "/v1/signals", {"channel": "web",
                          "identifiers": [{"type": "phone", "value": PHONE}], "traits": traits})
            rounds += 1
            if out.get("not_stored"):
                break
            if rounds > 500:
                sys.exit("the profile never filled up: is max_profile_bytes set?")
        customer = out["customer_id"]
        size = len(svc.request("GET", f"/v1/profiles/{customer}"))
        print(f"profile {customer} full after {rounds} signals ({size / 1024:.0f} KiB as JSON)")

        single = {"channel": "ivr", "identifiers": [{"type": "phone", "value": PHONE}],
                  "traits": {"last_call": "today"}, "event": {"type": "call_started"}}
        took = sorted(post(svc, "/v1/signals", single)[0] for _ in range(SINGLES))
        print(f"single signal to the full profile: p50 {statistics.median(took) * 1e3:.1f} ms, "
              f"p99 {took[int(len(took) * 0.99) - 1] * 1e3:.1f} ms, max {took[-1] * 1e3:.1f} ms "
              f"({SINGLES} signals, one after another)")

        # The innocent writer: its worst latency while the batch runs.
        worst = []
        stop = threading.Event()

        def innocent():
            n = 0
            while not stop.is_set():
                n += 1
                t, _ = post(svc, "/v1/signals", {"channel": "web", "identifiers": [
                    {"type": "phone", "value": "+3162%07d" % n}]})
                worst.append(t)

        writer = threading.Thread(target=innocent)
        writer.start()
        time.sleep(0.5)
        before = len(worst)
        took, out = post(svc, "/v1/signals/batch", {"signals": [single] * BATCH})
        stop.set()
        writer.join()
        results = out.get("results", [])
        busy = sum(1 for r in results if r.get("status") == 503)
        during = worst[before:] or [0]
        print(f"batch of {BATCH} signals to the full profile: answered in {took:.2f} s, "
              f"{len(results) - busy} applied, {busy} withdrawn (503 store_busy)")
        print(f"innocent writer meanwhile: {len(during)} signals, worst {max(during) * 1e3:.0f} ms, "
              f"median {statistics.median(during) * 1e3:.1f} ms")
    finally:
        svc.stop()
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
