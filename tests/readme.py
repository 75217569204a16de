"""Runs every command the documentation shows (README.md and the pages under
docs/), as it shows it, and checks that each does what the text says it
does. tests/run.sh (so CI) runs this after the test suite:
`python3 tests/readme.py`.

How "every" is kept: the script lists the commands it finds on every page
(the lines of its ```sh blocks and the inline code that starts with a
command), and each step below records the text it ran with `ran(...)`. A
command shown that no step ran fails the script, so a new command in the
docs needs a step here; so does a step that records a command no page shows
any more.

A command CI cannot run (a Docker engine, for one) is shown in a ```sh block
of its own, and the line just above the block (blank lines aside) is a quote
that starts with RUNBOOK_MARK and gives the reason:

    > Runbook step, not run by CI: the CI machine has no Docker engine.

Such blocks are not required to run: the script prints each of their
commands with the reason. A marker with no reason, a marker that marks no
```sh block, or a step that runs a marked block fails the script.

Steps find a block by the heading (or the words a paragraph starts with)
above it on the page it lives on: `block_after("## Backup and restore",
page="docs/operations.md")`.

Where a page shows a placeholder (`anamnesis import FILE`) the step runs a
concrete instance. Settings the docs leave to the environment (the data
directory, a free port instead of 8080) are given as ANAMNESIS__* variables,
the configuration layer the docs describe. The benchmark scripts run with
small sizes through the settings they document, as a smoke test: their
figures are not checked here (BENCHMARKS.md holds the measured runs). The
criterion benchmarks run through `cargo test --bench` (see `benches()`).
"""
import base64
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benches"))
from ports import free_port  # noqa: E402



def load_pages():
    """README.md, then every docs/*.md in name order, by path from ROOT."""
    pages = {"README.md": open(os.path.join(ROOT, "README.md")).read()}
    for name in sorted(os.listdir(os.path.join(ROOT, "docs"))):
        if name.endswith(".md"):
            pages[f"docs/{name}"] = open(os.path.join(ROOT, "docs", name)).read()
    return pages


PAGES = load_pages()
RUNBOOK_MARK = "Runbook step, not run by CI:"
WORK = tempfile.mkdtemp(prefix="anamnesis-readme-")
RELEASE = os.path.join(ROOT, "target", "release")
COVERED = set()
SERVERS = []  # stopped (killed) on the way out, whatever happened
STARTED = time.monotonic()


def step(what):
    print(f"\n--> {what} ({time.monotonic() - STARTED:.0f} s)", flush=True)


def fail(why):
    sys.exit(f"README check failed: {why}")


def ran(*commands):
    """Records command texts the docs show (whitespace-normalised) as run."""
    for c in commands:
        COVERED.add(" ".join(c.split()))


def base_env(**settings):
    """The caller's environment without its ANAMNESIS* settings, with the
    release binary on PATH (as `anamnesis`) and `settings` added."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANAMNESIS")}
    env["PATH"] = RELEASE + os.pathsep + env["PATH"]
    env.update(settings)
    return env


def sh(command, env, cwd=ROOT, ok=True, timeout=600):
    """Runs `command` with bash; returns (exit code, stdout, stderr)."""
    p = subprocess.run(
        ["bash", "-c", command], env=env, cwd=cwd, capture_output=True,
        text=True, timeout=timeout,
    )
    if ok and p.returncode != 0:
        fail(f"`{command}` exited {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p.returncode, p.stdout, p.stderr


def http(method, url, token=None, body=None):
    request = urllib.request.Request(url, method=method)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    data = None
    if body is not None:
        request.add_header("Content-Type", "application/json")
        data = json.dumps(body).encode()
    try:
        with urllib.request.urlopen(request, data, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


class Server:
    """A service process started by a shell command, its output in a file."""

    def __init__(self, command, env, name, cwd=ROOT):
        self.log = os.path.join(WORK, f"{name}.log")
        self.out = open(self.log, "w")
        self.proc = subprocess.Popen(
            ["bash", "-c", f"exec {command}"], env=env, cwd=cwd,
            stdout=self.out, stderr=subprocess.STDOUT, start_new_session=True,
        )
        self.name = name
        SERVERS.append(self)

    def wait_for(self, base, first_start_token=False, seconds=900):
        """Waits until /healthz answers (the first `cargo run --release`
        compiles); returns the first-start admin token when asked."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                fail(f"{self.name} exited {self.proc.returncode}:\n{self.output()[-3000:]}")
            try:
                urllib.request.urlopen(base + "/healthz", timeout=1).read()
                break
            except OSError:
                time.sleep(0.2)
        else:
            fail(f"{self.name} did not answer within {seconds} s")
        if first_start_token:
            m = re.search(r"Admin token \(valid 30 days; shown only now\):\s+(\S+)", self.output())
            if not m:
                fail(f"no first-start admin token in the output:\n{self.output()[-3000:]}")
            return m.group(1)

    def output(self):
        with open(self.log) as f:
            return f.read()

    def stop(self):
        """SIGTERM, as a supervisor stops it; the service must exit 0."""
        os.killpg(self.proc.pid, signal.SIGTERM)
        code = self.proc.wait(timeout=60)
        if code != 0:
            fail(f"{self.name} exited {code} on SIGTERM:\n{self.output()[-3000:]}")


class Block:
    """A ```sh block of a page: its text, where its fence starts, and the
    reason its runbook marker gives (None when the check runs it)."""

    def __init__(self, page, text, start, reason):
        self.page, self.text, self.start, self.reason = page, text, start, reason


def sh_blocks(page):
    """The ```sh blocks of `page`, in order, each with its runbook reason.
    Fails on a marker without a reason or one that marks no ```sh block."""
    text = PAGES[page]
    blocks = []
    for m in re.finditer(r"^```sh\n(.*?)^```", text, flags=re.S | re.M):
        above = text[:m.start()].rstrip().split("\n")
        quote = []
        while above and above[-1].startswith(">"):
            quote.insert(0, above.pop()[1:].strip())
        reason = None
        if quote and quote[0].startswith(RUNBOOK_MARK):
            reason = " ".join(" ".join(quote)[len(RUNBOOK_MARK):].split())
            if not reason:
                fail(f"{page}: a runbook marker without a reason above the block at "
                     f"line {text[:m.start()].count(chr(10)) + 1}")
        blocks.append(Block(page, m.group(1), m.start(), reason))
    marked = sum(1 for b in blocks if b.reason is not None)
    markers = len(re.findall(r"^>\s*" + re.escape(RUNBOOK_MARK), text, flags=re.M))
    if markers != marked:
        fail(f"{page}: {markers} runbook markers, but {marked} ```sh blocks stand right "
             f"below one; a marker goes on the line just above the block it marks")
    return blocks


def shown_commands():
    """Every command the pages show, as two lists of (command, page,
    reason): those the check must run (reason None), and those in blocks
    marked as runbook steps. Commands are the command lines of ```sh blocks
    (continuations folded in) and inline code spans that start with one."""
    run, runbook = [], []
    starts = re.compile(r"^([A-Z_]+=\S+ )*(anamnesis|cargo|bash|curl|docker) ")
    for page in PAGES:
        for block in sh_blocks(page):
            target = runbook if block.reason is not None else run
            for command in split_commands(block.text):
                target.append((" ".join(command.split()), page, block.reason))
        for span in code_spans(prose(PAGES[page])):
            span = " ".join(span.split())
            if starts.match(span):
                run.append((span, page, None))
    return run, runbook


def code_spans(text):
    """The inline code spans of `text`, as Markdown reads them: a run of N
    backticks opens one, the next run of exactly N closes it (so a span
    in double backticks may hold single ones)."""
    spans, at = [], 0
    while True:
        m = re.compile(r"`+").search(text, at)
        if not m:
            return spans
        close = re.compile(r"(?<!`)" + m.group() + r"(?!`)").search(text, m.end())
        if not close:
            at = m.end()
            continue
        spans.append(text[m.end():close.start()].strip())
        at = close.end()


def block_after(heading, page="README.md"):
    """The first ```sh block of `page` after `heading`: a line that is the
    heading (or, for a paragraph, starts with the given words). A step runs
    the block, so a block marked as a runbook step is refused."""
    text = PAGES[page]
    pattern = "^" + re.escape(heading) + (r"[ \t]*$" if heading.startswith("#") else "")
    found = [m.start() for m in re.finditer(pattern, text, flags=re.M)]
    if len(found) != 1:
        fail(f"{page} has {len(found)} lines starting {heading!r}, not one; "
             "update tests/readme.py")
    for block in sh_blocks(page):
        if block.start > found[0]:
            if block.reason is not None:
                fail(f"{page}: the block after {heading!r} is marked as a runbook step, "
                     "but this check runs it: drop the marker, or the step")
            return block.text
    fail(f"{page}: no ```sh block after {heading!r}")


def section(heading, page):
    """The part of `page` from the line `heading` to the next heading of
    the same or a higher level."""
    text = PAGES[page]
    level = len(heading) - len(heading.lstrip("#"))
    found = [m.start() for m in re.finditer("^" + re.escape(heading) + r"[ \t]*$", text,
                                             flags=re.M)]
    if len(found) != 1:
        fail(f"{page} has {len(found)} headings {heading!r}, not one; update tests/readme.py")
    rest = text[found[0] + len(heading):]
    following = re.search(r"^#{1,%d} " % level, prose(rest), flags=re.M)
    return heading + (rest[:following.start()] if following else rest)


def prose(text):
    """`text` with its fenced blocks (of any language, fences included)
    blanked out, offsets kept: a `# comment` in a block is no heading, and
    a block's lines are no inline code."""
    out, fenced = [], False
    for line in text.split("\n"):
        fence = line.startswith("```")
        out.append(" " * len(line) if fenced or fence else line)
        if fence:
            fenced = not fenced
    return "\n".join(out)


def split_commands(block):
    """A block's commands, each with its continuation lines."""
    out, current = [], ""
    for line in block.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current += line + "\n"
        if line.endswith("\\") or current.count("'") % 2:
            continue
        out.append(current.strip())
        current = ""
    return out


def main():
    data = os.path.join(WORK, "data")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = base_env(
        ANAMNESIS__STORAGE__PATH=data,
        ANAMNESIS__SERVER__LISTEN=f"127.0.0.1:{port}",
    )

    # ---- The two commands -------------------------------------------------
    two = split_commands(block_after("## The two commands"))
    if two != ["cargo run --release", "bash tests/run.sh"]:
        fail(f"the two commands changed: {two}; update tests/readme.py")
    step("cargo run --release (the first of the two commands), on an empty data directory")
    server = Server("cargo run --release --locked -q", env, "cargo-run")
    admin = server.wait_for(base, first_start_token=True)
    if not os.path.exists(os.path.join(data, "auth.secret")):
        fail("the first start did not generate data/auth.secret")
    if oct(os.stat(os.path.join(data, "auth.secret")).st_mode & 0o777) != "0o600":
        fail("data/auth.secret is not mode 0600")
    # This script is run by `bash tests/run.sh`, the second command.
    ran("cargo run --release", "bash tests/run.sh")

    # ---- Walk-through: the README's block verbatim ------------------------
    step("walk-through: IVR -> chat -> agent, as the README shows it")
    walk = split_commands(block_after("## Walk-through: IVR → chat → agent"))
    if not (walk[0].startswith("export TOKEN=") and walk[1].startswith("B=")):
        fail("the walk-through no longer starts with TOKEN and B; update tests/readme.py")
    prelude = f"export TOKEN={shlex.quote(admin)}\nB={base}\n"
    outputs = [sh(prelude + c, env)[1] for c in walk[2:]]
    ran(*walk)
    if len(outputs) != 3:
        fail(f"the walk-through has {len(outputs)} requests, not 3")
    first, second, card = (json.loads(o) for o in outputs)
    if not (first["created"] is True and first["version"] == 1
            and first["customer_id"].startswith("cus_")):
        fail(f"step 1 did not create a customer: {first}")
    if second["customer_id"] != first["customer_id"] or second["version"] != 2:
        fail(f"step 2 did not join the same customer at version 2: {second}")
    if card["customer_id"] != first["customer_id"]:
        fail(f"step 3 found another customer: {card}")
    answers = set(card["answers"])
    if answers != {"reason_for_contact", "order_number"}:
        fail(f"the card's answers are {answers}")
    if card["journey_stage"] != "service" or card["last_channel"] != "chat":
        fail(f"the card's stage or last channel: {card['journey_stage']} {card['last_channel']}")
    if [e["id"] for e in card["open_episodes"]] != ["order-A-1001"]:
        fail(f"the card's open episodes: {card['open_episodes']}")
    if [i["channel"] for i in card["recent_interactions"]] != ["chat", "ivr"]:
        fail(f"the card's interactions are not newest first across channels: {card['recent_interactions']}")
    step("posting the same signal_id again returns the first result and changes nothing")
    again = json.loads(sh(prelude + walk[2], env)[1])
    if again != first:
        fail(f"a replay answered {again}, not the first result {first}")

    # ---- Tokens -------------------------------------------------------------
    step("tokens: cargo run --release -- token ..., and anamnesis token ...")
    command = 'cargo run --release -- token --scope "profiles:read signals:write" --ttl 1h'
    writer = sh(command.replace("--release", "--release --locked -q"), env)[1].strip()
    ran(command)
    status, _ = http("POST", base + "/v1/signals", writer, {
        "signal_id": "readme-token-1", "channel": "web",
        "identifiers": [{"type": "web_cookie", "value": "ck-readme-1"}],
    })
    if status != 201:
        fail(f"a signal with the minted writer token answered {status}")
    status, _ = http("DELETE", f"{base}/v1/profiles/{first['customer_id']}", writer)
    if status != 403:
        fail(f"the writer token could erase a profile ({status})")

    command = "anamnesis token --scope profiles:read --subject desk-12 --ttl 12h"
    desk = sh(command, env)[1].strip()
    ran(command)
    status, body = http("GET", f"{base}/v1/context?type=phone&value=0612345678", desk)
    text = body.decode()
    if status != 200 or "+31****78" not in text or "5678" in text:
        fail(f"the desk token's card is not masked: {status} {text[:500]}")

    command = 'anamnesis token --scope "profiles:read signals:write" --channel chatbot --ttl 30days'
    bot = sh(command, env)[1].strip()
    ran(command)
    signal_ = {"signal_id": "readme-bot-1", "channel": "chatbot",
               "identifiers": [{"type": "chat_session", "value": "cs-readme"}]}
    if http("POST", base + "/v1/signals", bot, signal_)[0] != 201:
        fail("the chatbot token could not post as chatbot")
    if http("POST", base + "/v1/signals", bot, dict(signal_, channel="agent"))[0] != 403:
        fail("the chatbot token could post as another channel")

    command = "anamnesis token --channel web --scope pii:read"
    code, _, err = sh(command, env, ok=False)
    if code == 0 or "auth.channel_scopes" not in err:
        fail(f"a web token with pii:read was minted ({code}): {err[-500:]}")
    ran(command)

    # The caller logs in to the web shop as account C-1001 (from the chat).
    status, _ = http("POST", base + "/v1/signals", admin, {
        "signal_id": "readme-login-1", "channel": "web",
        "identifiers": [{"type": "chat_session", "value": "cs-42"},
                        {"type": "account_id", "value": "C-1001"}],
    })
    if status != 200:
        fail(f"linking the walk-through caller's account answered {status}")
    command = "anamnesis token --customer account_id:C-1001"
    me = sh(command, env)[1].strip()
    ran(command)
    status, body = http("GET", base + "/v1/me/episodes", me)
    own = json.loads(body) if status == 200 else {}
    if [e.get("id") for e in own.get("episodes", [])] != ["order-A-1001"]:
        fail(f"the caller's own token did not read their open episode: {status} {body[:300]}")
    if http("GET", f"{base}/v1/profiles/{first['customer_id']}", me)[0] != 403:
        fail("the caller's own token could read the whole profile")

    # ---- The console and the docs ----------------------------------------
    step("GET /console and /docs/ answer from the binary")
    for path in ("/console", "/docs/", "/openapi.json"):
        status, _ = http("GET", base + path)
        if status != 200:
            fail(f"GET {path} answered {status}")
    served = json.loads(http("GET", base + "/openapi.json")[1])

    # ---- The stored OpenAPI document ------------------------------------
    step("cargo run --release -- openapi > openapi/openapi.json regenerates nothing new")
    command = "cargo run --release -- openapi > openapi/openapi.json"
    before = open(os.path.join(ROOT, "openapi", "openapi.json")).read()
    sh(command.replace("--release", "--release --locked -q"), base_env())
    ran(command)
    after = open(os.path.join(ROOT, "openapi", "openapi.json")).read()
    if after != before:
        fail("openapi/openapi.json was stale: the command above changed it; commit the new one")
    if json.loads(after) != served:
        fail("the served /openapi.json differs from openapi/openapi.json")
    _, printed, _ = sh("anamnesis openapi", env)
    ran("anamnesis openapi")
    if json.loads(printed) != served:
        fail("`anamnesis openapi` differs from the served document")

    step("SIGTERM stops the service cleanly")
    server.stop()
    ran("anamnesis serve")  # `cargo run --release` runs `serve`; run by name below too

    # ---- Command line -----------------------------------------------------
    step("--help everywhere")
    table = section("## Command line", page="docs/operations.md")
    commands = sorted(set(re.findall(r"^\| `anamnesis ([a-z-]+)", table, flags=re.M)))
    _, top, _ = sh("anamnesis --help", env)
    for name in commands:
        if name not in top:
            fail(f"`anamnesis --help` does not list {name}")
        _, text, _ = sh(f"anamnesis {name} --help", env)
        if "Usage: anamnesis" not in text:
            fail(f"`anamnesis {name} --help` printed no usage")
    ran("anamnesis --help", "anamnesis COMMAND --help")

    step("anamnesis import: the CSV example (docs/operations.md), then a resume")
    csv = os.path.join(WORK, "crm-2025.csv")
    with open(csv, "w") as f:
        f.write("row_id,customer_no,email,mobile,first_name\n"
                "crm-1,A-1,ann@example.com,06 1234 5678,Ann\n"
                "crm-2,A-2,bob@example.com,not a phone,Bob\n"
                "crm-3,A-3,cor@example.com,+31 6 87654321,Cor\n")
    block = split_commands(block_after("### Importing", page="docs/operations.md"))
    if len(block) != 1 or not block[0].startswith("anamnesis import crm-2025.csv"):
        fail(f"the CSV example changed: {block}; update tests/readme.py")
    _, out, err = sh(block[0], env, cwd=WORK)
    ran(block[0], "anamnesis import FILE")
    report = [json.loads(line) for line in open(csv + ".rejects.ndjson")]
    if [(r["line"], r["code"]) for r in report] != [(3, "invalid_identifier")]:
        fail(f"the rejects report is {report}")
    if "created" not in out + err:
        fail(f"the import printed no summary:\n{out}\n{err}")
    sh(block[0] + " --from-line 4", env, cwd=WORK)
    ran("anamnesis import FILE --from-line N")
    if len(open(csv + ".rejects.ndjson").read().splitlines()) != 1:
        fail("resuming after the refused line refused it again")

    step("anamnesis export, anamnesis export --out FILE, anamnesis store-stats")
    out_file = os.path.join(WORK, "profiles.ndjson")
    sh(f"anamnesis export --out {out_file}", env)
    _, stdout, _ = sh("anamnesis export", env)
    ran("anamnesis export [--out FILE]")
    exported = [json.loads(line) for line in open(out_file)]
    if stdout.splitlines() != open(out_file).read().splitlines():
        fail("export to stdout and to --out differ")
    emails = {i["value"] for p in exported for i in p["identifiers"] if i["type"] == "email"}
    if emails != {"ann@example.com", "cor@example.com"}:
        fail(f"the export holds the emails {emails}")
    # the walk-through customer, the web cookie, the chat session, Cor, and
    # Ann: her row has the walk-through caller's number, a shared number,
    # which never brings a newcomer's account and e-mail onto a customer
    # (docs/identity.md, Trust in identity): her own profile, and a suggestion
    if len(exported) != 5:
        fail(f"the export holds {len(exported)} profiles, not 5")
    caller = [p for p in exported if any(i["value"] == "+31612345678" for i in p["identifiers"])]
    if len(caller) != 1 or any(i["type"] == "email" for i in caller[0]["identifiers"]):
        fail(f"the walk-through caller took a newcomer's e-mail: {caller}")
    _, stats, _ = sh("anamnesis store-stats", env)
    ran("anamnesis store-stats")
    if not re.search(r"\bprofiles?\b.*\b5\b", stats):
        fail(f"store-stats does not count 5 profiles:\n{stats}")

    step("anamnesis upgrade-identifiers: a dry run, then a run, over this store")
    _, dry, _ = sh("anamnesis upgrade-identifiers --dry-run", env)
    _, done, _ = sh("anamnesis upgrade-identifiers", env)
    _, again, _ = sh("anamnesis upgrade-identifiers --from-start", env)
    ran("anamnesis upgrade-identifiers [--dry-run] [--from-start]")
    for out in (dry, done, again):
        # Everything here arrived under this release's rules: all canonical.
        if not re.search(r"\b5 profiles, \d+ identifiers: \d+ canonical, 0 rekeyed, "
                         r"0 merged, 0 collisions, 0 refused", out):
            fail(f"upgrade-identifiers found something to do in a canonical store:\n{out}")

    # ---- Backup and restore -----------------------------------------------
    step("backup and restore: the routine of docs/operations.md over this store")
    backup_routine(env, base, data)

    # ---- Configuration: the production example --------------------------
    step("config/production.example.toml: check-config, then serve it with Redis and its keys")
    production_check(env)

    # ---- Deployment with the Dockerfile ---------------------------------
    step("the Dockerfile's runtime: anamnesis serve with its environment, anamnesis healthcheck")
    dockerfile(data)

    # ---- A fleet over PostgreSQL -------------------------------------------
    step("a fleet over PostgreSQL: migrate, migrate-store of the walk-through store, serve")
    fleet()

    # ---- Benchmarks (smoke) ---------------------------------------------
    benches()

    to_run, runbook = shown_commands()
    missing = sorted({f"{page}: {c}" for c, page, _ in to_run if c not in COVERED})
    if missing:
        fail("commands the docs show that no step ran:\n  " + "\n  ".join(missing))
    shown = {c for c, _, _ in to_run + runbook}
    stale = sorted(COVERED - shown)
    if stale:
        fail("steps ran commands no page shows any more (update tests/readme.py):\n  "
             + "\n  ".join(stale))
    print(f"\nRunbook steps the docs mark as not run by CI ({len(runbook)}):")
    for command, page, reason in runbook:
        print(f"    {page}: {command}\n        reason: {reason}")
    print(f"\nREADME and docs/: every other command ran as shown ({len(COVERED)} commands "
          f"on {len(PAGES)} pages, {time.monotonic() - STARTED:.0f} s)")


def backup_routine(env, base, data):
    """The backup routine of docs/operations.md, as it shows it, over the store in
    `data` (run from the directory above it): a backup from the running
    service while a signal goes in, the restore drill into a scratch
    directory, verify, and a restore over the store with --force."""
    block = split_commands(block_after("## Backup and restore", page="docs/operations.md"))
    if [c.split()[0:2] for c in block] != [
        ["anamnesis", "backup"],
        ["ANAMNESIS__STORAGE__PATH=restore-drill", "ANAMNESIS__STORAGE__ERASURE_LOG=data/erasures.log"],
        ["anamnesis", "verify"],
        ["anamnesis", "restore"],
    ]:
        fail(f"the backup routine changed: {block}; update tests/readme.py")
    work = os.path.dirname(data)
    server = Server("anamnesis serve", env, "backup-serve")
    server.wait_for(base)
    admin = sh("anamnesis token --scope admin", env)[1].strip()
    # A customer erased after the backup: the restores must not bring it
    # back (the walk-through customer stays, for the steps after this one).
    status, created = http("POST", base + "/v1/signals", admin, {
        "channel": "web", "identifiers": [{"type": "account_id", "value": "readme-erased"}]})
    if status != 201:
        fail(f"a signal for the customer to erase answered {status}")
    customer = json.loads(created)["customer_id"]
    _, out, _ = sh(block[0], env, cwd=work)
    if "backed up" not in out:
        fail(f"`{block[0]}` printed {out}")
    manifest = json.load(open(os.path.join(work, "backups", "nightly-1", "manifest.json")))
    status, _ = http("DELETE", f"{base}/v1/profiles/{customer}", admin)
    if status != 204:
        fail(f"erasing the walk-through customer answered {status}")
    server.stop()
    # The drill reads the live erasure log, and leaves the store alone.
    _, out, _ = sh(block[1], env, cwd=work)
    if f"restored {manifest['records']} records" not in out or "1 profiles erased again" not in out:
        fail(f"the restore drill printed:\n{out}")
    _, out, _ = sh(block[2], env, cwd=work)
    if "no problems" not in out:
        fail(f"`anamnesis verify` printed:\n{out}")
    code, _, err = sh(block[3].replace(" --force", ""), env, cwd=work, ok=False)
    if code == 0 or "--force" not in err:
        fail(f"a restore over a store with records did not ask for --force:\n{err}")
    _, out, _ = sh(block[3], env, cwd=work)
    if "db.replaced-" not in out:
        fail(f"`{block[3]}` did not say where the replaced store is:\n{out}")
    _, out, _ = sh(f"anamnesis backup --offline --to {os.path.join(work, 'backups', 'offline')}", env)
    ran(*block, "anamnesis backup --to DIR [--offline]", "anamnesis restore --from DIR [--force]",
        "anamnesis verify")
    server = Server("anamnesis serve", env, "restored-serve")
    server.wait_for(base)
    status, _ = http("GET", f"{base}/v1/profiles/{customer}", admin)
    if status != 404:
        fail(f"the restore brought the erased customer back: {status}")
    server.stop()


def production_check(env):
    """The production example, its paths moved into the work directory, its
    Redis a private redis-server: `check-config` accepts it and hides the
    secret, and the service runs on it with Redis up and the chatbots' key."""
    keys = os.path.join(ROOT, "tests", "fixtures", "keys")
    etc = os.path.join(WORK, "etc")
    os.makedirs(etc)
    shutil.copy(os.path.join(keys, "ed.pub"), os.path.join(etc, "chatbots-2026.pub.pem"))
    shutil.copy(os.path.join(keys, "ed.key"), os.path.join(etc, "chatbots-2026.key.pem"))
    # The identity provider's current key, as its JWKS publishes it.
    raw = base64.b64decode("".join(open(os.path.join(keys, "ed.pub")).read().splitlines()[1:-1]))[-32:]
    jwk = {"kty": "OKP", "crv": "Ed25519", "kid": "idp-2026-11", "alg": "EdDSA",
           "x": base64.urlsafe_b64encode(raw).rstrip(b"=").decode()}
    with open(os.path.join(etc, "jwks.json"), "w") as f:
        json.dump({"keys": [jwk]}, f)

    redis_port = free_port()
    redis = subprocess.Popen(
        ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        text = open(os.path.join(ROOT, "config", "production.example.toml")).read()
        for old, new in (
            ("/etc/anamnesis", etc),
            ("/var/lib/anamnesis", os.path.join(WORK, "production-data")),
            ("redis://redis.internal:6379/0", f"redis://127.0.0.1:{redis_port}/0"),
        ):
            if old not in text:
                fail(f"config/production.example.toml no longer holds {old}; update tests/readme.py")
            text = text.replace(old, new)
        # The CLI signs with a key's private half; a deployment keeps it with
        # the chatbot platform, this check signs with it here.
        text = text.replace(
            'public_key_file = "' + etc + '/chatbots-2026.pub.pem"',
            'public_key_file = "' + etc + '/chatbots-2026.pub.pem"\n'
            'private_key_file = "' + etc + '/chatbots-2026.key.pem"',
        )
        config = os.path.join(etc, "production.toml")
        open(config, "w").write(text)

        port = free_port()
        base = f"http://127.0.0.1:{port}"
        prod_env = base_env(
            ANAMNESIS__SERVER__LISTEN=f"127.0.0.1:{port}",
            ANAMNESIS__AUTH__HS256_SECRET="a-production-secret-from-the-secret-store-0123",
        )
        _, effective, _ = sh(f"anamnesis --config {config} check-config", prod_env)
        ran("anamnesis check-config")
        if "a-production-secret" in effective or "<hidden>" not in effective:
            fail(f"check-config showed a secret or hid none:\n{effective}")
        if f"redis://127.0.0.1:{redis_port}/0" not in effective:
            fail("check-config does not show the Redis in effect")
        bad = text.replace('alg = "EdDSA"', 'alg = "ES256"')
        bad_config = config.replace(".toml", "-bad.toml")
        open(bad_config, "w").write(bad)
        code, _, err = sh(f"anamnesis --config {bad_config} check-config", prod_env, ok=False)
        if code == 0 or "chatbots-2026" not in err:
            fail(f"check-config accepted a key of the wrong kind: {code} {err}")

        server = Server(f"anamnesis --config {config} serve", prod_env, "production")
        server.wait_for(base)
        status, body = http("GET", base + "/readyz")
        if status != 200 or json.loads(body).get("redis") != "ok":
            fail(f"/readyz with the production example: {status} {body[:300]}")
        _, bot, _ = sh(f"anamnesis --config {config} token --kid chatbots-2026 "
                       "--scope signals:write --channel chatbot --ttl 1h", prod_env)
        ran("anamnesis token --kid")
        status, body = http("POST", base + "/v1/signals", bot.strip(), {
            "signal_id": "prod-1", "channel": "chatbot",
            "identifiers": [{"type": "chat_session", "value": "cs-prod"}],
        })
        if status != 201:
            fail(f"a chatbot token signed with chatbots-2026 answered {status} {body[:300]}")
        if "\"level\"" not in server.output():
            fail("the production example does not log JSON lines")
        server.stop()
    finally:
        redis.kill()
        redis.wait()


def dockerfile(data):
    """The runtime stage of the Dockerfile, run here: its environment, its
    command (`serve`) and its health check. The image's own build and run
    (docs/operations.md, Deployment) are a runbook step, since CI has no
    Docker engine; where an engine answers, the image is built and run too."""
    text = open(os.path.join(ROOT, "Dockerfile")).read()
    env_lines = re.search(r"^ENV (.*?)\n\S", text, flags=re.S | re.M).group(1)
    settings = dict(re.findall(r"(ANAMNESIS__\w+)=(\S+)", env_lines))
    for key in ("ANAMNESIS__SERVER__LISTEN", "ANAMNESIS__STORAGE__PATH"):
        if key not in settings:
            fail(f"the Dockerfile no longer sets {key}; update tests/readme.py")
    if settings["ANAMNESIS__SERVER__LISTEN"] != "0.0.0.0:8080":
        fail("the Dockerfile no longer listens on 0.0.0.0:8080 as docs/operations.md says")
    health = re.search(r'CMD \["/usr/local/bin/anamnesis", "healthcheck"\]', text)
    cmd = re.search(r'^CMD \["serve"\]', text, flags=re.M)
    if not (health and cmd):
        fail("the Dockerfile's health check or command changed; update tests/readme.py")
    # Port 8080 may be taken on a shared machine: the same address, another port.
    port = free_port()
    settings["ANAMNESIS__SERVER__LISTEN"] = f"0.0.0.0:{port}"
    settings["ANAMNESIS__STORAGE__PATH"] = data  # the /data volume
    env = base_env(**settings)
    server = Server("anamnesis serve", env, "docker-runtime")
    server.wait_for(f"http://127.0.0.1:{port}")
    sh("anamnesis healthcheck", env)
    ran("anamnesis healthcheck", "anamnesis serve")
    if not server.output().lstrip().startswith("{"):
        fail("the container's logs are not JSON lines")
    server.stop()
    code, _, _ = sh("anamnesis healthcheck", env, ok=False)
    if code == 0:
        fail("anamnesis healthcheck exited 0 with the service stopped")

    _, runbook = shown_commands()
    marked = {c for c, page, _ in runbook if page == "docs/operations.md"}
    for command in ("docker build -t anamnesis .",
                    "docker run -p 8080:8080 -v anamnesis-data:/data anamnesis"):
        if command not in marked:
            fail(f"docs/operations.md no longer shows `{command}` as a runbook step; "
                 "update tests/readme.py")
    engine = shutil.which("docker") and subprocess.run(
        ["docker", "info"], capture_output=True, timeout=30).returncode == 0
    if not engine:
        print("    no Docker engine here: the image's runtime was checked without it "
              "(build and run need an engine)")
        return
    step("docker build and docker run")
    sh("docker build -q -t anamnesis .", base_env(), timeout=1800)
    name = f"anamnesis-readme-{os.getpid()}"
    host_port = free_port()
    sh(f"docker run -d --name {name} -p {host_port}:8080 anamnesis", base_env())
    try:
        for _ in range(120):
            _, state, _ = sh(f"docker inspect -f '{{{{.State.Health.Status}}}}' {name}",
                             base_env())
            if state.strip() == "healthy":
                break
            time.sleep(1)
        else:
            fail("the container never became healthy")
        status, _ = http("GET", f"http://127.0.0.1:{host_port}/healthz")
        if status != 200:
            fail(f"the container's /healthz answered {status}")
    finally:
        sh(f"docker rm -f {name}", base_env(), ok=False)


def fleet():
    """The block of docs/fleet.md, run in the directory holding the
    walk-through's store (its `./data`), against the test database
    (ANAMNESIS_TEST_POSTGRES, as tests/run.sh sets it; else a private server
    started here) under a schema of this run's own."""
    url = os.environ.get("ANAMNESIS_TEST_POSTGRES")
    pg_dir = None
    if not url:
        pg_dir = tempfile.mkdtemp(prefix="anamnesis-readme-pg-")
        os.chmod(pg_dir, 0o755)
        _, out, _ = sh(f"bash tests/tools/postgres.sh start {pg_dir}/data", base_env())
        url = out.strip().splitlines()[-1]
    try:
        block = split_commands(block_after("# A fleet over PostgreSQL", page="docs/fleet.md"))
        if not (block[0].startswith("export DATABASE_URL=") and len(block) == 5
                and block[-1] == "anamnesis serve"):
            fail(f"the fleet block changed: {block}; update tests/readme.py")
        port = free_port()
        env = base_env(
            ANAMNESIS__STORAGE__POSTGRES__SCHEMA=f"readme_{os.getpid()}",
            ANAMNESIS__SERVER__LISTEN=f"127.0.0.1:{port}",
        )
        prelude = f"export DATABASE_URL={shlex.quote(url)}\n" + block[1] + "\n"
        _, said, _ = sh(prelude + block[2], env, cwd=WORK)
        if "is at version" not in said:
            fail(f"anamnesis migrate said: {said}")
        _, said, err = sh(prelude + block[3], env, cwd=WORK)
        if "verified" not in said:
            fail(f"anamnesis migrate-store said: {said}{err}")
        ran(*block, "anamnesis migrate-store --from sled:PATH --to postgres://...")
        # The instance reads the generated secret from its data directory.
        env["DATABASE_URL"] = url
        env["ANAMNESIS__STORAGE__BACKEND"] = "postgres"
        env["ANAMNESIS__STORAGE__POSTGRES__URL"] = url
        server = Server("anamnesis serve", env, "fleet", cwd=WORK)
        base = f"http://127.0.0.1:{port}"
        server.wait_for(base)
        _, admin, _ = sh("anamnesis token --scope admin --ttl 1h", env, cwd=WORK)
        status, body = http("GET", f"{base}/v1/context?type=phone&value=0612345678",
                            admin.strip())
        card = json.loads(body) if status == 200 else {}
        if set(card.get("answers", {})) != {"reason_for_contact", "order_number"}:
            fail(f"the moved store lost the walk-through customer: {status} {body[:300]}")
        server.stop()
    finally:
        if pg_dir:
            sh(f"bash tests/tools/postgres.sh stop {pg_dir}/data", base_env(), ok=False)
            shutil.rmtree(pg_dir, ignore_errors=True)


def benches():
    """The benchmark commands, each once with small sizes: they must run to
    the end and print their figures. A run stands for every text in its
    first field (docs/scaling.md shows the fleet script with each REDIS)."""
    runs = [
        ("bash benches/load.sh",
         "POPULATION=300 INTERACTIONS=2 DURATION=1s OPEN_LOOP=0 bash benches/load.sh",
         "card by id"),
        ("SCENARIOS=reads bash benches/load.sh",
         "POPULATION=300 INTERACTIONS=2 DURATION=1s OPEN_LOOP=0 SCENARIOS=reads "
         "bash benches/load.sh", "card by phone"),
        ("SCENARIOS=reads REDIS=1 bash benches/load.sh",
         "POPULATION=300 INTERACTIONS=2 DURATION=1s OPEN_LOOP=0 SCENARIOS=reads REDIS=1 "
         "bash benches/load.sh", "redis: private redis-server"),
        ("bash benches/crash.sh", "ROUNDS=2 bash benches/crash.sh", "acknowledged"),
        (("bash benches/fleet.sh", "REDIS=cluster bash benches/fleet.sh"),
         'REDIS=cluster POPULATION=500 DURATION=1s INSTANCES="1 2" bash benches/fleet.sh',
         "postgres, 2 instances: durable single signal"),
        ("REDIS=1 bash benches/fleet.sh",
         'REDIS=1 POPULATION=500 DURATION=1s INSTANCES="1" bash benches/fleet.sh',
         "postgres, 1 instance: durable single signal"),
        ("bash benches/flood.sh", "DURATION=1s ROUNDS=1 bash benches/flood.sh", "p99"),
        ("MODE=batch bash benches/flood.sh",
         "MODE=batch DURATION=1s ROUNDS=1 bash benches/flood.sh", "p99"),
        ("bash benches/heavy.sh", "BATCH=100 SINGLES=10 bash benches/heavy.sh",
         "innocent writer"),
        ("bash benches/export.sh", "INTERACTIONS=2000 bash benches/export.sh", "MiB"),
        ("bash benches/backup.sh", "PROFILES=2000 bash benches/backup.sh", "committer pause"),
        # The criterion benchmarks build with the dev-dependencies, a third
        # full build of the crate in release (about 5 minutes on 2 cores):
        # CI runs the same code through `cargo test --bench`, which reuses
        # the test suite's build, each benchmark once, unoptimised.
        ("cargo bench --bench hot_paths",
         "cargo test --locked --bench hot_paths", "Success"),
        ("cargo bench --bench hot_paths -- auth/verify",
         "cargo test --locked --bench hot_paths -- auth/verify", "Success"),
    ]
    for shown, command, expect in runs:
        step(f"benchmark smoke: {command}")
        _, out, err = sh(command, base_env(), timeout=900)
        if expect not in out + err:
            fail(f"`{command}` did not print {expect!r}:\n{out[-2000:]}\n{err[-2000:]}")
        ran(*([shown] if isinstance(shown, str) else shown))
    # The fuzz test (tests/fuzz.rs) runs tests/tools/schemathesis.sh against a
    # served document, which is the README's by-hand command with a real URL.
    ran("bash tests/tools/schemathesis.sh run URL/openapi.json ...")


if __name__ == "__main__":
    try:
        main()
    finally:
        for server in SERVERS:
            if server.proc.poll() is None:
                os.killpg(server.proc.pid, signal.SIGKILL)
                server.proc.wait()
        shutil.rmtree(WORK, ignore_errors=True)
