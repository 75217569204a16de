"""The service under measurement, for the bench scripts: start the release
binary on a data directory and a free port, mint a token, read its CPU time
and memory from /proc."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

from ports import free_port

SECRET = "load-test-secret-load-test-secret-0123456789"
TICKS = os.sysconf("SC_CLK_TCK")


def wait_until_up(base, proc, what):
    for _ in range(600):
        if proc.poll() is not None:
            sys.exit(f"{what} exited with {proc.returncode} before answering")
        try:
            urllib.request.urlopen(base + "/healthz", timeout=1).read()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"{what} did not answer within 30 s")


def cpu_seconds(pid):
    """User plus system CPU time the process has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def memory(pid):
    """Resident and peak resident memory in MiB."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) / 1024
    return out["VmRSS"], out["VmHWM"]


def disk_bytes(path):
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            total += os.stat(os.path.join(root, name)).st_blocks * 512
    return total


class Anamnesis:
    """The release binary `bin` serving the store in `data`."""

    def __init__(self, bin, data):
        self.data = data
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "ANAMNESIS__AUTH__HS256_SECRET": SECRET,
            "ANAMNESIS__STORAGE__PATH": data,
            "ANAMNESIS__SERVER__LISTEN": f"127.0.0.1:{self.port}",
            "ANAMNESIS__TELEMETRY__LEVEL": os.environ.get("ANAMNESIS__TELEMETRY__LEVEL", "warn"),
            # One token drives all load: measure the service, not the per-subject limit.
            "ANAMNESIS__LIMITS__RATE_PER_SECOND": "0",
            "ANAMNESIS__LIMITS__SIGNALS_PER_SECOND": "0",
        }
        self.log_path = os.path.join(data, f"server-{self.port}.log")
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen([bin, "serve"], env=self.env, stdout=self.log, stderr=self.log)
        wait_until_up(self.base, self.proc, "anamnesis")
        self.pid = self.proc.pid
        self.token = subprocess.run(
            [bin, "token", "--scope", "admin", "--ttl", "4h"],
            env=self.env, capture_output=True, text=True, check=True,
        ).stdout.strip().splitlines()[-1]

    def open(self, method, path, body=None):
        req = urllib.request.Request(
            self.base + path, method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Content-Type": "application/json", "Authorization": "Bearer " + self.token})
        return urllib.request.urlopen(req, timeout=120)

    def request(self, method, path, body=None):
        with self.open(method, path, body) as r:
            return r.read()

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
