"""Crash safety, proven: kill -9 the service under a mixed write load, many
times, and check that nothing acknowledged was lost.

Run through benches/crash.sh (which builds the release binary). Each round:
start the service on the same data directory (it must reopen), let writers
post for a random while, SIGKILL it mid-load, and after the next start check,
for every writer:

- every acknowledged signal is there, by its signal_id, with its effect (the
  interaction on the timeline and, for the newest one, the trait it set);
- what is there is a prefix of the writer's sequence with no holes (a writer
  sends its next signal only after the previous one was acknowledged, so at
  most the one in flight at the kill may be there unacknowledged).

Writers: single signals (several), batches of 10, and answers written to the
profile directly. Prints one line per round and a summary; exits non-zero on
any loss.
"""

import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

from ports import free_port

BIN = sys.argv[1]
ROUNDS = int(os.environ.get("ROUNDS", "50"))
SINGLE_WRITERS = int(os.environ.get("SINGLE_WRITERS", "4"))
SECRET = "crash-test-secret-crash-test-secret-0123456789"


def token():
    out = subprocess.run(
        [BIN, "token", "--scope", "admin", "--ttl", "2h"],
        env={**os.environ, "ANAMNESIS__AUTH__HS256_SECRET": SECRET},
        capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1]


class Service:
    def __init__(self, data):
        self.data = data
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {**os.environ,
               "ANAMNESIS__AUTH__HS256_SECRET": SECRET,
               "ANAMNESIS__STORAGE__PATH": data,
               "ANAMNESIS__SERVER__LISTEN": f"127.0.0.1:{self.port}",
               "ANAMNESIS__LIMITS__RATE_PER_SECOND": "0",
               "ANAMNESIS__LIMITS__SIGNALS_PER_SECOND": "0",
               "ANAMNESIS__TELEMETRY__LEVEL": "warn"}
        started = time.monotonic()
        self.proc = subprocess.Popen([BIN, "serve"], env=env,
                                     stdout=subprocess.DEVNULL, stderr=open(os.path.join(data, "log"), "a"))
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"the service exited at start (code {self.proc.returncode}): the store did not reopen")
            try:
                urllib.request.urlopen(self.base + "/readyz", timeout=1).read()
                break
            except Exception:
                if time.monotonic() - started > 30:
                    raise SystemExit("the service did not become ready within 30 s")
                time.sleep(0.02)
        self.reopen = time.monotonic() - started

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


def call(base, tok, method, path, body=None, timeout=10):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method, headers={
        "Authorization": "Bearer " + tok, "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, json.loads(r.read() or b"null")


class Writer:
    """One sequence of writes about one person; `acked` survives restarts."""

    def __init__(self, name, kind):
        self.name = name
        self.kind = kind  # "single", "batch" or "answer"
        self.acked = -1  # highest acknowledged step
        self.customer = None

    def cookie(self):
        return f"crash-{self.name}"

    def signal(self, n):
        return {"signal_id": f"{self.name}-{n}", "channel": "web",
                "identifiers": [{"type": "web_cookie", "value": self.cookie()}],
                "traits": {"step": n},
                "event": {"type": "page_view", "properties": {"writer": self.name, "n": n}}}

    def step(self, base, tok):
        n = self.acked + 1
        if self.kind == "single":
            status, body = call(base, tok, "POST", "/v1/signals", self.signal(n))
            self.customer = body["customer_id"]
            self.acked = n
        elif self.kind == "batch":
            items = [self.signal(n + i) for i in range(10)]
            status, body = call(base, tok, "POST", "/v1/signals/batch", {"signals": items})
            for r in body["results"]:
                assert "error" not in r, r
            self.customer = body["results"][0]["customer_id"]
            self.acked = n + 9
        else:
            if self.customer is None:
                status, body = call(base, tok, "POST", "/v1/signals", self.signal(0))
                self.customer = body["customer_id"]
                self.acked = 0
                return
            call(base, tok, "POST", f"/v1/profiles/{self.customer}/answers",
                 {"channel": "chat", "answers": [{"key": "step", "value": n}]})
            self.acked = n

    def run(self, base, tok, stop):
        while not stop.is_set():
            try:
                self.step(base, tok)
            except (urllib.error.URLError, ConnectionError, OSError, TimeoutError):
                return  # the service died: the write in flight is unknown


def check(base, tok, w):
    """What the store holds for `w`, checked against what was acknowledged."""
    if w.acked < 0:
        return 0
    status, card = call(base, tok, "GET", f"/v1/context?type=web_cookie&value={w.cookie()}&limit=0")
    cid = card["customer_id"]
    profile = call(base, tok, "GET", f"/v1/profiles/{cid}")[1]
    if w.kind == "answer":
        got = profile["answers"]["step"]["value"] if w.acked > 0 else 0
        if got < w.acked or got > w.acked + 1:
            raise SystemExit(f"{w.name}: answer step {got}, acknowledged {w.acked}")
        return w.acked + 1
    seen = set()
    cursor = None
    while True:
        path = f"/v1/profiles/{cid}/timeline?limit=200" + (f"&cursor={cursor}" if cursor else "")
        page = call(base, tok, "GET", path)[1]
        for i in page["interactions"]:
            if i["signal_id"] and i["signal_id"].startswith(w.name + "-"):
                seen.add(int(i["signal_id"].rsplit("-", 1)[1]))
        cursor = page["next_cursor"]
        if not cursor:
            break
    top = max(seen) if seen else -1
    missing = [n for n in range(w.acked + 1) if n not in seen]
    if missing:
        raise SystemExit(f"{w.name}: acknowledged signals lost: {missing[:10]}")
    holes = [n for n in range(top + 1) if n not in seen]
    if holes:
        raise SystemExit(f"{w.name}: holes in the sequence: {holes[:10]}")
    in_flight = 10 if w.kind == "batch" else 1
    if top > w.acked + in_flight:
        raise SystemExit(f"{w.name}: {top} stored but only {w.acked} acknowledged")
    step = profile["traits"]["step"]["value"]
    if step != top:
        raise SystemExit(f"{w.name}: trait step {step}, newest stored signal {top}")
    # What was stored beyond the acknowledgement was written: it counts now.
    w.acked = top
    return len(seen)


def main():
    tok = token()
    data = tempfile.mkdtemp(prefix="anamnesis-crash-")
    writers = [Writer(f"s{i}", "single") for i in range(SINGLE_WRITERS)]
    writers += [Writer("b0", "batch"), Writer("a0", "answer")]
    rng = random.Random(int(os.environ.get("SEED", "20261123")))
    total_acked = 0
    reopen = []
    for round_ in range(1, ROUNDS + 1):
        svc = Service(data)
        reopen.append(svc.reopen)
        checked = sum(check(svc.base, tok, w) for w in writers)
        stop = threading.Event()
        threads = [threading.Thread(target=w.run, args=(svc.base, tok, stop)) for w in writers]
        before = sum(w.acked + 1 for w in writers)
        for t in threads:
            t.start()
        time.sleep(rng.uniform(0.2, 1.5))
        svc.kill()
        stop.set()
        for t in threads:
            t.join()
        acked = sum(w.acked + 1 for w in writers) - before
        total_acked += acked
        print(f"round {round_:3}: reopened in {svc.reopen*1000:5.0f} ms, verified {checked} stored writes, "
              f"{acked} more acknowledged before SIGKILL", flush=True)
    svc = Service(data)
    checked = sum(check(svc.base, tok, w) for w in writers)
    svc.kill()
    reopen.sort()
    print(f"\n{ROUNDS} SIGKILLs under load, {total_acked} writes acknowledged, {checked} verified at the end: "
          f"0 lost, 0 holes; store reopened every time "
          f"(median {reopen[len(reopen)//2]*1000:.0f} ms, max {reopen[-1]*1000:.0f} ms)")


if __name__ == "__main__":
    main()
