"""A backup of the embedded store while the service writes: how long it
takes, how big it is, how long the writes pause, and what a restore and a
verify of it cost.

Loads PROFILES profiles (100,000 by default; each from one signal with an
account id, a phone, an e-mail, three traits and an interaction), then
takes `anamnesis backup` from the running service while one client keeps
sending single signals, and reports:

- the backup's time and size (records, bytes of records.bin);
- the committer's pause (`anamnesis_backup_pause_seconds` on /metrics: the
  one job that flushes and installs the backup's recorder);
- the writes during the backup against the writes before it (count, p50,
  p99 and max latency), which is what a client sees of the pause;
- `anamnesis restore` of the backup into a new data directory, and
  `anamnesis verify` of the result.

    bash benches/backup.sh
    PROFILES=20000 bash benches/backup.sh
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

from service import Anamnesis

BIN = sys.argv[1]
PROFILES = int(os.environ.get("PROFILES", "100000"))


def load(svc, n):
    started = time.monotonic()
    for first in range(0, n, 1000):
        batch = [{
            "signal_id": f"bk-{i}",
            "channel": ("ivr", "chat", "web", "store")[i % 4],
            "identifiers": [
                {"type": "account_id", "value": f"BK-{i}"},
                {"type": "phone", "value": "+3161%07d" % i},
                {"type": "email", "value": f"customer.{i}@example.com"},
            ],
            "traits": {"first_name": f"Name{i}", "city": ("Utrecht", "Lyon", "Porto")[i % 3],
                       "tier": i % 5},
            "event": {"type": "page_view", "summary": f"visit {i}"},
        } for i in range(first, min(n, first + 1000))]
        body = json.loads(svc.request("POST", "/v1/signals/batch", {"signals": batch}))
        bad = [r for r in body["results"] if r["status"] >= 300]
        if bad:
            sys.exit(f"load rejected: {bad[:3]}")
    return time.monotonic() - started


class Writer(threading.Thread):
    """Single signals, one after the other, each timed."""

    def __init__(self, svc):
        super().__init__(daemon=True)
        self.svc = svc
        self.stop = threading.Event()
        self.samples = []  # (sent at, latency)

    def run(self):
        i = 0
        while not self.stop.is_set():
            body = {"channel": "web", "identifiers": [{"type": "web_cookie", "value": f"w-{i}"}]}
            at = time.monotonic()
            self.svc.request("POST", "/v1/signals", body)
            self.samples.append((at, time.monotonic() - at))
            i += 1


def summary(latencies):
    if not latencies:
        return "no writes"
    ms = sorted(x * 1000 for x in latencies)
    pick = lambda q: ms[min(len(ms) - 1, int(q * len(ms)))]
    return (f"{len(ms)} writes, p50 {pick(0.5):.1f} ms, p99 {pick(0.99):.1f} ms, "
            f"max {ms[-1]:.1f} ms")


def metric(svc, name):
    text = svc.request("GET", "/metrics").decode()
    m = re.search(rf"^{name} (\S+)$", text, flags=re.M)
    return float(m.group(1)) if m else None


def run(cmd, env):
    started = time.monotonic()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{p.stdout}\n{p.stderr}")
    return time.monotonic() - started, p.stdout


def main():
    work = tempfile.mkdtemp(prefix="anamnesis-backup-bench-")
    try:
        data = os.path.join(work, "data")
        os.makedirs(data)
        svc = Anamnesis(BIN, data)
        took = load(svc, PROFILES)
        print(f"loaded {PROFILES} profiles in {took:.1f} s")
        writer = Writer(svc)
        writer.start()
        time.sleep(2)
        backup = os.path.join(work, "backup")
        began = time.monotonic()
        took, out = run([BIN, "backup", "--to", backup, "--url", svc.base, "--token", svc.token],
                        svc.env)
        ended = time.monotonic()
        time.sleep(1)
        writer.stop.set()
        writer.join()
        manifest = json.load(open(os.path.join(backup, "manifest.json")))
        pause_sum = metric(svc, "anamnesis_backup_pause_seconds_sum")
        pause_count = metric(svc, "anamnesis_backup_pause_seconds_count")
        svc.stop()
        print(f"backup of {PROFILES} profiles: {manifest['records']} records, "
              f"{manifest['bytes'] / 2**20:.1f} MiB, in {took:.2f} s (the command, from start to "
              f"its manifest synced)")
        if pause_count:
            print(f"committer pause: {pause_sum / pause_count * 1000:.2f} ms "
                  f"(anamnesis_backup_pause_seconds)")
        before = [l for at, l in writer.samples if at < began]
        during = [l for at, l in writer.samples if began <= at <= ended]
        print(f"writes before the backup: {summary(before)}")
        print(f"writes during the backup: {summary(during)}")

        restored = os.path.join(work, "restored")
        os.makedirs(restored)
        open(os.path.join(restored, "erasures.log"), "w").close()
        env = {**svc.env, "ANAMNESIS__STORAGE__PATH": restored}
        took, out = run([BIN, "restore", "--from", backup], env)
        print(f"restore into a new data directory (load, erasures, verify): {took:.2f} s")
        took, out = run([BIN, "verify"], env)
        print(f"verify of the restored store: {took:.2f} s ({out.strip()})")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
