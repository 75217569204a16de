"""An export of one customer with a very long timeline: is it streamed?

Loads INTERACTIONS interactions (200,000 by default) onto one profile,
then reads GET /v1/profiles/{id}/export in 64 KiB pieces while sampling the
service's resident memory every 20 ms. Prints the export's size and time,
and the service's resident memory before and at its highest during the
export. A streamed export grows the process by a few pages of 200 entries,
not by the size of the document.

    bash benches/export.sh
    INTERACTIONS=1000000 bash benches/export.sh
"""

import json
import os
import shutil
import sys
import tempfile
import threading
import time

from service import Anamnesis, memory

BIN = sys.argv[1]
INTERACTIONS = int(os.environ.get("INTERACTIONS", "200000"))


def load(svc, n):
    """n interactions for one customer, in batches of 1,000."""
    started = time.monotonic()
    sent = 0
    while sent < n:
        batch = [{
            "channel": ("ivr", "chat", "web", "store")[i % 4],
            "occurred_at": "2026-%02d-%02dT%02d:%02d:%02dZ" % (
                1 + i // 100000 % 10, 1 + i // 3600 % 28, i // 60 % 24, i % 60, i // 1000 % 60),
            "identifiers": [{"type": "email", "value": "long.timeline@example.com"}],
            "event": {"type": "page_view", "summary": "page %d" % i,
                      "properties": {"path": "/cars/%d" % (i % 500), "category": "sports_car"}},
        } for i in range(sent, min(n, sent + 1000))]
        body = json.loads(svc.request("POST", "/v1/signals/batch", {"signals": batch}))
        bad = [r for r in body["results"] if r["status"] >= 300]
        if bad:
            sys.exit(f"load rejected: {bad[:3]}")
        customer = body["results"][0]["customer_id"]
        sent += len(batch)
    return customer, time.monotonic() - started


def export(svc, customer, run):
    """Reads the export, sampling the service's resident memory meanwhile."""
    before, _ = memory(svc.pid)
    highest = [before]
    done = threading.Event()

    def sample():
        while not done.is_set():
            highest[0] = max(highest[0], memory(svc.pid)[0])
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    started = time.monotonic()
    size = 0
    first = None
    with svc.open("GET", f"/v1/profiles/{customer}/export") as r:
        while True:
            piece = r.read(65536)
            if not piece:
                break
            if first is None:
                first = time.monotonic() - started
            size += len(piece)
    took = time.monotonic() - started
    done.set()
    sampler.join()
    print(f"{run} export: {size / 2**20:.1f} MiB in {took:.2f} s "
          f"({size / 2**20 / took:.1f} MiB/s), first bytes after {first * 1000:.0f} ms; "
          f"service resident memory {before:.0f} MiB before, {highest[0]:.0f} MiB at most "
          f"(+{highest[0] - before:.0f} MiB)")


def main():
    scratch = tempfile.mkdtemp(prefix="anamnesis-export-")
    try:
        svc = Anamnesis(BIN, scratch)
        try:
            customer, took = load(svc, INTERACTIONS)
            print(f"loaded {INTERACTIONS:,} interactions onto one profile in {took:.1f} s")
            time.sleep(2)
            # Twice: the first run also fills the store's page cache with
            # the timeline's pages (bounded by storage.cache_bytes), the
            # second shows what the export itself holds.
            for run in ("first", "second"):
                export(svc, customer, run)
        finally:
            svc.stop()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
