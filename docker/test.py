#!/usr/bin/env python3
"""`make test-docker`: the Compose cluster of docker-compose.yml, end to end.

Starts the three datacenters from the `dotkv:latest` image (`make image`) and
checks every step: every node healthy and connected to its five peers; writes at
every node converge everywhere; a causal token makes a read at dc3 wait for a
write at dc1; datacenter dc2 cut off (its WAN relays stopped) takes writes on
both sides, and after the heal everything converges; a node killed with SIGKILL
keeps its acknowledged write and catches up after a restart. Then `down -v`.

It runs as its own Compose project (default `dotkv-test-docker`, or
$DOTKV_TEST_PROJECT) on ports Docker picks, so a cluster started with
`docker compose up` is never touched, and it always removes what it started,
also on failure or Ctrl-C. Python 3 standard library only.
"""

import json
import os
import shlex
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROJECT = os.environ.get("DOTKV_TEST_PROJECT", "dotkv-test-docker")
IMAGE = "dotkv:latest"
NODES = ["dc1-n1", "dc1-n2", "dc2-n1", "dc2-n2", "dc3-n1", "dc3-n2"]


def dc_of(node):
    return node.split("-")[0]


def compose_command():
    if os.environ.get("COMPOSE"):
        return shlex.split(os.environ["COMPOSE"])
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True)
    return ["docker", "compose"] if probe.returncode == 0 else ["docker-compose"]


COMPOSE = compose_command() + ["-p", PROJECT, "-f", os.path.join(ROOT, "docker-compose.yml")]
# Every node's HTTP port is published on a port Docker picks (empty variable).
ENV = dict(os.environ, COMPOSE_PROJECT_NAME=PROJECT)
for _node in NODES:
    ENV["DOTKV_PORT_" + _node.upper().replace("-", "_")] = ""


class Failed(Exception):
    pass


def run(args, quiet=False):
    """Runs a command; its output goes to ours unless `quiet`. Fails the test
    on a non-zero exit."""
    done = subprocess.run(args, env=ENV, cwd=ROOT, capture_output=quiet, text=True)
    if done.returncode != 0:
        detail = (done.stderr or "").strip() if quiet else ""
        raise Failed(f"`{shlex.join(args)}` exited {done.returncode} {detail}")
    return done


def output(args):
    return run(args, quiet=True).stdout.strip()


def compose(*args, quiet=False):
    return run(COMPOSE + list(args), quiet=quiet)


# ---- talking to the nodes ---------------------------------------------------

_ports = {}  # node -> the host address of its published HTTP port


def url(node):
    if node not in _ports:
        # `127.0.0.1:49153`
        _ports[node] = output(COMPOSE + ["port", node, "7700"])
    return f"http://{_ports[node]}"


def http(node, method, path, body=None, headers=None):
    """One request; returns (status, JSON answer, headers)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url(node) + path, data=data, method=method)
    if data is not None:
        request.add_header("content-type", "application/json")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read() or b"null"), answer.headers
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null"), e.headers


def ok(node, method, path, body=None, headers=None):
    status, answer, headers = http(node, method, path, body, headers)
    if status != 200:
        raise Failed(f"{method} {path} at {node}: {status} {answer}")
    return answer, headers


def add(node, amount, key="visits"):
    """Adds to a counter; returns the causal token of the answer."""
    _, headers = ok(node, "POST", f"/v1/counter/{key}", {"add": amount})
    return headers["X-Dotkv-Token"]


def tag(node, element, key="tags"):
    ok(node, "POST", f"/v1/set/{key}", {"add": [element]})


def counter(node, key="visits"):
    return ok(node, "GET", f"/v1/counter/{key}")[0]["value"]


def tags(node, key="tags"):
    return set(ok(node, "GET", f"/v1/set/{key}")[0]["elements"])


def status(node):
    return ok(node, "GET", "/v1/status")[0]


def connected_peers(node):
    return {p["name"] for p in status(node)["peers"] if p["connected"]}


# ---- waiting and checking ---------------------------------------------------


def wait_until(what, check, timeout):
    """Polls `check` (returning (done, description)) until done or deadline."""
    deadline = time.monotonic() + timeout
    start = time.monotonic()
    while True:
        try:
            done, seen = check()
        except (Failed, OSError, KeyError, ValueError) as e:
            done, seen = False, f"error: {e}"
        if done:
            print(f"    {what}: yes after {time.monotonic() - start:.1f} s")
            return
        if time.monotonic() >= deadline:
            raise Failed(f"{what}: not within {timeout} s; last seen: {seen}")
        time.sleep(0.25)


def expect(what, condition, seen):
    if not condition:
        raise Failed(f"{what}: {seen}")
    print(f"    {what}: yes")


def converged(nodes, total, elements):
    """Every node has the counter total, the set's elements and the same version
    vector as the others."""

    def check():
        seen = {n: (counter(n), tags(n), status(n)["version_vector"]) for n in nodes}
        vvs = [json.dumps(v[2], sort_keys=True) for v in seen.values()]
        done = all(c == total and t == elements for c, t, _ in seen.values())
        done = done and len(set(vvs)) == 1
        return done, {n: (c, sorted(t)) for n, (c, t, _) in seen.items()}

    return check


def container(node):
    return output(COMPOSE + ["ps", "-q", node])


def health(node):
    return output(["docker", "inspect", "-f", "{{.State.Health.Status}}", container(node)])


# ---- the test ---------------------------------------------------------------

_test_start = time.monotonic()


def step(title):
    print(f"\n== [{time.monotonic() - _test_start:3.0f} s] {title}", flush=True)


def test():
    if subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True).returncode:
        raise Failed(f"no image {IMAGE}; run `make image` first")

    step(f"up: project {PROJECT}")
    compose("up", "-d", quiet=True)
    wait_until("every node healthy",
               lambda: (all(health(n) == "healthy" for n in NODES), {n: health(n) for n in NODES}),
               90)
    wait_until("every node connected to its five peers",
               lambda: (all(len(connected_peers(n)) == 5 for n in NODES),
                        {n: sorted(connected_peers(n)) for n in NODES}),
               60)

    step("writes at every node converge everywhere")
    total, elements = 0, set()
    for i, node in enumerate(NODES, start=1):
        add(node, i)
        tag(node, node)
        total += i
        elements.add(node)
    wait_until(f"every node has visits = {total} and 6 tags", converged(NODES, total, elements), 30)

    step("a causal token: a write at dc1-n1, read at dc3-n2 with its token")
    token = add("dc1-n1", 1000)
    total += 1000
    started = time.monotonic()
    _, answer, _ = http("dc3-n2", "GET", "/v1/counter/visits", headers={"X-Dotkv-Token": token})
    expect(f"dc3-n2 answers visits = {total} ({(time.monotonic() - started) * 1000:.0f} ms)",
           answer == {"key": "visits", "value": total}, answer)

    step("partition: dc2 cut off, writes on both sides")
    run([os.path.join(ROOT, "docker", "wan.sh"), "partition", "2"], quiet=True)
    others = [n for n in NODES if dc_of(n) != "dc2"]
    wait_until("dc2 sees no other datacenter, and no one sees dc2",
               lambda: (all(connected_peers(n) == ({"dc2-n1", "dc2-n2"} - {n}) for n in ("dc2-n1", "dc2-n2"))
                        and all(not connected_peers(n) & {"dc2-n1", "dc2-n2"} for n in others),
                        {n: sorted(connected_peers(n)) for n in NODES}),
               30)
    add("dc2-n1", 20000)
    tag("dc2-n2", "cut-dc2")
    add("dc1-n2", 300000)
    tag("dc3-n1", "cut-dc3")
    # w=all cannot be met across the partition: committed locally, 504.
    code, answer, _ = http("dc1-n1", "POST", "/v1/counter/visits?w=all&timeout_ms=1000", {"add": 4000000})
    expect("a w=all write at dc1-n1 times out with 504", code == 504, (code, answer))
    wait_until("dc2 converges on its own side",
               converged(["dc2-n1", "dc2-n2"], total + 20000, elements | {"cut-dc2"}), 30)
    wait_until("dc1 and dc3 converge on theirs",
               converged(others, total + 300000 + 4000000, elements | {"cut-dc3"}), 30)
    total += 20000 + 300000 + 4000000
    elements |= {"cut-dc2", "cut-dc3"}

    step("heal: every datacenter converges")
    run([os.path.join(ROOT, "docker", "wan.sh"), "heal"], quiet=True)
    wait_until(f"every node has visits = {total} and both sides' tags",
               converged(NODES, total, elements), 60)

    step("kill -9: dc3-n1 killed right after an acknowledged write, then started again")
    replica = status("dc3-n1")["node_id"]
    add("dc3-n1", 50000000)
    tag("dc3-n1", "before-kill")
    compose("kill", "-s", "SIGKILL", "dc3-n1", quiet=True)
    state = output(["docker", "inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", container("dc3-n1")])
    expect("dc3-n1 is dead, exit code 137 (SIGKILL)", state == "exited 137", state)
    add("dc1-n1", 600000000)
    tag("dc2-n1", "while-down")
    total += 50000000 + 600000000
    elements |= {"before-kill", "while-down"}
    alive = [n for n in NODES if n != "dc3-n1"]
    wait_until("the five others converge without it", converged(alive, total, elements), 30)
    compose("start", "dc3-n1", quiet=True)
    _ports.pop("dc3-n1")  # a restarted container gets another host port
    wait_until("dc3-n1 healthy again", lambda: (health("dc3-n1") == "healthy", health("dc3-n1")), 60)
    after = status("dc3-n1")["node_id"]
    expect("dc3-n1 is the same replica (its data volume survived)", after == replica, (replica, after))
    wait_until("every node, dc3-n1 included, converges", converged(NODES, total, elements), 60)

    step("down -v")
    down()
    label = f"label=com.docker.compose.project={PROJECT}"
    left = output(["docker", "ps", "-aq", "--filter", label]) + output(["docker", "volume", "ls", "-q", "--filter", label])
    expect("no container or volume of the project is left", left == "", left)


def down(attempts=5):
    """`down -v`, tried again while the only refusal is a network that "has
    active endpoints". Docker's daemon sometimes still counts the endpoint of a
    container it has just removed (moby/moby#42119; seen once here on 20.10,
    after every container was removed), so `down` fails on the network alone.
    Between tries, endpoints the network still lists are disconnected by force.
    A network that stays after every try is reported, not failed on, and
    the next `up` of the project reuses it. Compose stops at the network
    before it removes the volumes (seen here on 20.10.24: every try refused,
    the network listing no container, the six data volumes and the certs
    volume left), so those, and any container, are then removed directly,
    as `down -v` would have; the test checks that they are gone."""
    for attempt in range(1, attempts + 1):
        done = subprocess.run(COMPOSE + ["down", "-v"], env=ENV, cwd=ROOT, capture_output=True, text=True)
        if done.returncode == 0:
            return
        if "has active endpoints" not in done.stderr:
            raise Failed(f"`down -v` exited {done.returncode} {done.stderr.strip()}")
        print(f"    down -v, try {attempt}: a network still has active endpoints", flush=True)
        label = f"label=com.docker.compose.project={PROJECT}"
        for network in output(["docker", "network", "ls", "-q", "--filter", label]).split():
            inspected = output(["docker", "network", "inspect", "-f", "{{range $id, $c := .Containers}}{{$c.Name}} {{end}}", network])
            for endpoint in inspected.split():
                subprocess.run(["docker", "network", "disconnect", "-f", network, endpoint], capture_output=True)
        time.sleep(2)
    label = f"label=com.docker.compose.project={PROJECT}"
    left = output(["docker", "network", "ls", "--format", "{{.Name}}", "--filter", label])
    print(f"    warning: Docker's daemon kept the network(s) {left.split()} after {attempts} tries", flush=True)
    removed = remove_leftovers()
    if removed:
        print(f"    so `down -v` left {removed} container(s) and volume(s); removed them directly", flush=True)


def remove_leftovers():
    """Remove the project's containers and volumes that `down -v` left
    because it stopped at a network (see `down`); returns how many."""
    label = f"label=com.docker.compose.project={PROJECT}"
    containers = output(["docker", "ps", "-aq", "--filter", label]).split()
    if containers:
        subprocess.run(["docker", "rm", "-f", "-v"] + containers, capture_output=True)
    volumes = output(["docker", "volume", "ls", "-q", "--filter", label]).split()
    if volumes:
        subprocess.run(["docker", "volume", "rm", "-f"] + volumes, capture_output=True)
    return len(containers) + len(volumes)


def cleanup(show_logs):
    if show_logs:
        print("\n== logs of the nodes (last 30 lines each)", flush=True)
        subprocess.run(COMPOSE + ["logs", "--no-color", "--tail", "30"] + NODES, env=ENV, cwd=ROOT)
    subprocess.run(COMPOSE + ["down", "-v", "--remove-orphans", "-t", "2"], env=ENV, cwd=ROOT,
                   capture_output=True)
    # A run's data must not reach the next one, even where the daemon
    # refused to remove a network and compose stopped there.
    remove_leftovers()


def main():
    # SIGTERM ends the test like Ctrl-C, so the cleanup runs.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.monotonic()
    # Leftovers of an interrupted run would hold the project's names.
    cleanup(show_logs=False)
    outcome = "failed"
    try:
        test()
        outcome = "passed"
    except Failed as e:
        print(f"\ntest-docker: FAILED: {e}", file=sys.stderr)
    except (KeyboardInterrupt, SystemExit):
        outcome = "interrupted"
    finally:
        cleanup(show_logs=outcome == "failed")
    print(f"\ntest-docker: {outcome} after {time.monotonic() - started:.0f} s",
          file=sys.stdout if outcome == "passed" else sys.stderr)
    return {"passed": 0, "failed": 1}.get(outcome, 130)


if __name__ == "__main__":
    sys.exit(main())
