"""The sandbox itself: apps behind Caddy, real SSH, and each SIGTERM behaviour."""

import subprocess
import threading
import time

import httpx

from fabfile import config as cfg
from fabfile.session import connection_for
from tests import sandbox as sb


def test_each_app_answers_through_caddy_with_its_version(sandbox):
    for svc in sb.APPS:
        r = sb.get(f"/{svc}/fast")
        assert r.status_code == 200
        running = sb.containers(svc)
        assert running, f"no {svc} container"
        assert r.text.startswith(f"{svc} v"), r.text
        assert r.headers["x-app-version"] in {c.version for c in running}
        assert r.text.split()[1] == r.headers["x-app-version"]


def test_slow_endpoint_takes_at_least_a_second(sandbox):
    t0 = time.monotonic()
    r = sb.get("/property/slow")
    elapsed = time.monotonic() - t0
    assert r.status_code == 200 and r.text.startswith("property v") and "slow" in r.text
    assert elapsed >= 1.0


def test_fab_opens_a_real_ssh_connection(sandbox):
    host = cfg.load(sb.ROOT / "hosts.toml").host("sandbox")
    from fabric import Config, Connection

    cxn = connection_for(Connection("sandbox", config=Config()), host)
    try:
        res = cxn.run("id -un && docker compose version --short", hide=True, in_stream=False)
    finally:
        cxn.close()
    user, version = res.stdout.split()
    assert user == "zddsbx"
    assert version.startswith("2.")


def test_fab_cli_reaches_the_host(sandbox):
    res = sb.fab("pull", "--dry-run")
    assert res.returncode == 0, res.stdout + res.stderr
    # the host explains what it would run (the token neither sent nor printed)
    assert "would run: docker login --username zdd --password-stdin 127.0.0.1:15000" in res.stdout
    assert "would run: timeout -k 10 900 docker compose -f docker-compose.yaml pull --quiet server" in res.stdout
    assert "services in the compose project" not in res.stdout  # pull alone does not validate
    assert "[sandbox] ok   pull" in res.stdout


def test_unknown_host_key_is_refused(sandbox, tmp_path):
    hosts = (
        (sb.ROOT / "hosts.toml")
        .read_text()
        .replace('known_hosts = "/var/lib/zdd-sandbox/client/known_hosts"', f'known_hosts = "{tmp_path}/empty"')
    )
    (tmp_path / "empty").write_text("")
    (tmp_path / "hosts.toml").write_text(hosts)
    res = sb.fab("pull", "--dry-run", env={"FABRIC_HOSTS_FILE": str(tmp_path / "hosts.toml")})
    assert res.returncode == 2  # bad input: nothing was touched
    assert "host key not known" in res.stderr
    assert "Traceback" not in res.stderr


def _slow_request_during_stop(service: str, stop_timeout: int):
    """Start a slow request to ``service`` through Caddy, then docker stop its container."""
    [c] = sb.containers(service)
    result = {}

    def request():
        try:
            r = httpx.get(f"{sb.HTTP}/{service}/slow", timeout=20)
            result["status"], result["body"] = r.status_code, r.text
        except httpx.HTTPError as e:
            result["error"] = repr(e)

    t = threading.Thread(target=request)
    t.start()
    time.sleep(0.4)  # the request is in flight (the endpoint takes 1.2 s)
    t0 = time.monotonic()
    subprocess.run(["docker", "stop", "-t", str(stop_timeout), c.id], check=True, capture_output=True)
    stop_seconds = time.monotonic() - t0
    t.join(30)
    return result, stop_seconds


def test_graceful_app_finishes_in_flight_request_then_exits(settled):
    result, stop_seconds = _slow_request_during_stop("property", stop_timeout=8)
    assert result.get("status") == 200, result
    assert "property v" in result["body"]
    assert stop_seconds < 5  # it exited on its own after the request, not at the timeout


def test_abrupt_app_cuts_in_flight_request(settled):
    result, stop_seconds = _slow_request_during_stop("server", stop_timeout=8)
    assert result.get("status") != 200, result  # Caddy answers 502 for the cut request
    assert stop_seconds < 2


def test_ignoring_app_keeps_serving_until_killed(settled):
    result, stop_seconds = _slow_request_during_stop("identity", stop_timeout=3)
    assert result.get("status") == 200, result  # finished while SIGTERM was ignored
    assert stop_seconds >= 2.8  # killed only when the stop timeout ran out
