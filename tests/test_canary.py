"""The canary's pure parts: the weighted configs zdd loads, the access log it adds, the
counts tier.sh reports, and the judgement of them."""

from __future__ import annotations

import pytest

from fabfile.canary import BUCKETS_MS, Counts, Steps, judge, parse_stats, total
from fabfile.config import CanaryConfig, ConfigError, parse
from fabfile.proxy import UPSTREAM_FIELD, Routing, mixed, rewrite_weighted, walk_proxies, weights, with_access_log


def caddy_config() -> dict:
    """What `caddy adapt` makes of the sandbox's Caddyfile (abridged): a handle_path per app."""

    def route(svc: str) -> dict:
        return {
            "match": [{"path": [f"/{svc}/*"]}],
            "handle": [
                {
                    "handler": "subroute",
                    "routes": [
                        {
                            "handle": [
                                {"handler": "rewrite", "strip_path_prefix": f"/{svc}"},
                                {
                                    "handler": "reverse_proxy",
                                    "upstreams": [{"dial": f"{svc}:8080"}],
                                    "stream_close_delay": 300000000000,
                                },
                            ]
                        }
                    ],
                }
            ],
        }

    return {
        "admin": {"listen": "localhost:2019"},
        "apps": {"http": {"servers": {"srv0": {"listen": [":80"], "routes": [route("server"), route("identity")]}}}},
    }


def proxies(config: dict, service: str) -> list[dict]:
    return [h for h in walk_proxies(config) if any(u["dial"].startswith(("10.", service)) for u in h["upstreams"])]


@pytest.mark.parametrize(
    "n_old, n_new, percent, expected",
    [(1, 1, 10, (9, 1)), (1, 1, 50, (1, 1)), (2, 2, 10, (9, 1)), (1, 2, 10, (18, 1)), (2, 1, 50, (1, 2))],
)
def test_weights_give_the_new_containers_their_share(n_old, n_new, percent, expected):
    w_old, w_new = weights(n_old, n_new, percent)
    assert (w_old, w_new) == expected
    assert n_new * w_new / (n_new * w_new + n_old * w_old) == pytest.approx(percent / 100)


def test_a_weighted_config_routes_the_service_to_old_and_new_with_weights_and_leaves_the_rest():
    base = caddy_config()
    cfg = rewrite_weighted(base, "server", ["10.0.0.2"], ["10.0.0.7", "10.0.0.8"], 10)
    [h] = [h for h in walk_proxies(cfg) if h["upstreams"][0]["dial"].startswith("10.")]
    dials = [u["dial"] for u in h["upstreams"]]
    assert dials == ["10.0.0.2:8080"] * 18 + ["10.0.0.7:8080", "10.0.0.8:8080"]  # each by its weight
    assert h["load_balancing"]["selection_policy"] == {"policy": "random"}  # not round robin: no aliasing
    assert h["stream_close_delay"] == 300000000000  # the handler's own settings stay
    others = [h for h in walk_proxies(cfg) if h["upstreams"][0]["dial"] == "identity:8080"]
    assert len(others) == 1 and "load_balancing" not in others[0]
    assert base == caddy_config()  # a copy


def test_a_weighted_config_keeps_the_handlers_retry_settings():
    base = caddy_config()
    h = proxies(base, "server")[0]
    h["load_balancing"] = {"retries": 2, "selection_policy": {"policy": "first"}}
    cfg = rewrite_weighted(base, "server", ["10.0.0.2"], ["10.0.0.7"], 50)
    lb = proxies(cfg, "server")[0]["load_balancing"]
    assert lb == {"retries": 2, "selection_policy": {"policy": "random"}}


def test_a_handler_that_dials_another_service_too_is_mixed():
    base = caddy_config()
    assert not mixed(base, "server")
    proxies(base, "server")[0]["upstreams"].append({"dial": "backup:8080"})
    assert mixed(base, "server") and not mixed(base, "identity")


def test_the_access_log_names_the_upstream_of_each_request_of_the_canaried_services_only():
    cfg = with_access_log(caddy_config(), ["server"], "/tmp/zdd-canary/r1.log")
    assert cfg["apps"]["http"]["servers"]["srv0"]["logs"] == {}
    log = cfg["logging"]["logs"]["zdd_canary"]
    assert log["writer"] == {"output": "file", "filename": "/tmp/zdd-canary/r1.log", "roll": False}
    assert log["include"] == ["http.log.access"]
    appended = []

    def walk(node):
        if isinstance(node, list):
            for i, item in enumerate(node):
                if isinstance(item, dict) and item.get("handler") == "log_append":
                    appended.append((item, node[i + 1]))
                walk(item)
        elif isinstance(node, dict):
            for v in node.values():
                walk(v)

    walk(cfg)
    assert len(appended) == 1
    la, rp = appended[0]
    assert la == {"handler": "log_append", "key": UPSTREAM_FIELD, "value": "{http.reverse_proxy.upstream.hostport}"}
    assert rp["handler"] == "reverse_proxy" and rp["upstreams"] == [{"dial": "server:8080"}]


def test_the_access_log_keeps_a_servers_own_log_settings():
    base = caddy_config()
    base["apps"]["http"]["servers"]["srv0"]["logs"] = {"default_logger_name": "log0"}
    cfg = with_access_log(base, ["server"], "/tmp/x.log")
    assert cfg["apps"]["http"]["servers"]["srv0"]["logs"] == {"default_logger_name": "log0"}


def test_stats_lines_are_counted_per_address():
    stats = parse_stats(
        [
            "stats 10.0.0.7:8080 12 3 10 2",
            "stats 10.0.0.2:8080 100 0 90 10",
            "stats-end",
            "stats garbage",
        ]
    )
    assert stats["10.0.0.7:8080"] == Counts(12, 3, (10, 2))
    assert total(stats, ["10.0.0.7:8080", "10.0.0.9:8080"]) == Counts(12, 3, (10, 2))
    assert total(stats, []) == Counts()


def hist(ms: int, n: int) -> tuple[int, ...]:
    """n answers, all in the bucket whose upper edge is ``ms``."""
    return tuple(n if edge == ms else 0 for edge in (*BUCKETS_MS, 10**9))


C = CanaryConfig(steps=(10, 50), step_seconds=30, min_requests=20, max_error_rate=0.01, max_latency_ratio=0)


def test_too_few_answers_are_not_judged():
    assert judge("server", Counts(19, 19, hist(5, 19)), Counts(), C) is None


def test_an_error_rate_over_the_threshold_is_a_breach_with_its_figures():
    breach = judge("server", Counts(20, 1, hist(5, 20)), Counts(200, 0, hist(5, 200)), C)
    assert breach == ("server: 1 of 20 answers from the new containers failed (5.0%, more than max_error_rate 1.0%)")


def test_an_error_rate_at_the_threshold_is_not():
    assert judge("server", Counts(100, 1, hist(5, 100)), Counts(), C) is None


def test_the_latency_ratio_compares_p95s_when_on():
    slow, fast = Counts(40, 0, hist(500, 40)), Counts(400, 0, hist(50, 400))
    assert judge("server", slow, fast, C) is None  # off by default
    on = CanaryConfig(min_requests=20, max_latency_ratio=3)
    assert judge("server", slow, fast, on) == (
        "server: the new containers' p95 latency is 500 ms against 50 ms for the old (× 10.0, more than "
        "max_latency_ratio 3)"
    )
    assert judge("server", Counts(40, 0, hist(100, 40)), fast, on) is None  # × 2
    assert judge("server", slow, Counts(10, 0, hist(50, 10)), on) is None  # too few old answers to compare


def test_p95_is_the_upper_edge_of_its_bucket():
    assert Counts(95, 0, hist(50, 95)).p95_ms() == 50
    mixed_latency = Counts(100, 0, tuple(94 if e == 5 else 6 if e == 1000 else 0 for e in (*BUCKETS_MS, 0)))
    assert mixed_latency.p95_ms() == 1000
    assert Counts().p95_ms() is None
    beyond = Counts(10, 0, (0,) * len(BUCKETS_MS) + (10,))
    assert beyond.p95_ms() == BUCKETS_MS[-1] * 2


def test_a_step_ends_after_its_time_once_the_new_containers_answered_enough():
    s = Steps(C)
    s.begin(100.0, {"server": 5, "identity": 0})
    assert s.over(120.0, {"server": 50, "identity": 50}) == (False, [])  # too early
    assert s.over(131.0, {"server": 24, "identity": 50}) == (False, [])  # server: 19 in the step
    assert s.over(131.0, {"server": 25, "identity": 20}) == (True, [])


def test_a_quiet_step_passes_after_three_step_times_naming_the_quiet_service():
    s = Steps(C)
    s.begin(0.0, {"server": 0, "identity": 0})
    assert s.over(89.0, {"server": 3, "identity": 40}) == (False, [])
    assert s.over(90.0, {"server": 3, "identity": 40}) == (True, ["server"])


@pytest.mark.parametrize(
    "table, message",
    [
        ("steps = [0, 50]", "steps must be percentages between 1 and 99"),
        ("steps = [50, 10]", "steps must rise"),
        ("steps = [10, 10]", "steps must rise"),
        ("steps = [100]", "steps must be percentages between 1 and 99"),
        ('steps = ["10"]', "steps must be a list of integers"),
        ("step_seconds = 0", "step_seconds must be at least 1"),
        ("max_error_rate = 2", "max_error_rate is a share"),
        ("max_latency_ratio = 0.5", "max_latency_ratio must be more than 1"),
        ("window = 3", "unknown key"),
    ],
)
def test_canary_settings_are_checked(table, message):
    with pytest.raises(ConfigError) as e:
        parse(f'[hosts.h]\ndir = "~/x"\nrollout = [["server"]]\n[hosts.h.canary]\n{table}\n')
    assert "hosts.h.canary." in str(e.value) and message in str(e.value)


def test_canary_settings_load():
    inv = parse(
        '[hosts.h]\ndir = "~/x"\nrollout = [["server"]]\n[hosts.h.canary]\nsteps = [10, 50]\nmin_requests = 5\n'
    )
    assert inv.host("h").canary == CanaryConfig(steps=(10, 50), min_requests=5)


def test_routing_builds_a_steps_config_and_a_way_back_holding_the_new_addresses():
    r = Routing(caddy_config(), ("net",), log="/tmp/c.log")
    r.route("server", ["10.0.0.2"], ["server:8080", "10.0.0.2:8080"])
    step = r.config({"server": (["10.0.0.7"], 10)})
    [h] = proxies(step, "server")[:1]
    assert [u["dial"] for u in h["upstreams"]] == ["10.0.0.2:8080"] * 9 + ["10.0.0.7:8080"]
    assert step["logging"]["logs"]["zdd_canary"]["writer"]["filename"] == "/tmp/c.log"
    assert step["apps"]["http"]["servers"]["srv0"]["logs"] == {}
    (handlers,) = [
        rt["handle"]
        for route in step["apps"]["http"]["servers"]["srv0"]["routes"]
        if "match" in route
        for sub in route["handle"]
        for rt in sub.get("routes", [])
        if any(h.get("handler") == "log_append" for h in rt["handle"])
    ]
    assert [h["handler"] for h in handlers] == ["rewrite", "log_append", "reverse_proxy"]  # before the weighted one
    assert [u["dial"] for u in handlers[2]["upstreams"]] == ["10.0.0.2:8080"] * 9 + ["10.0.0.7:8080"]
    back = r.config(hold=["10.0.0.7:8080"])
    assert "logging" not in back
    assert [u["dial"] for u in proxies(back, "server")[0]["upstreams"]] == ["10.0.0.2:8080"]
    holds = [rt for rt in back["apps"]["http"]["servers"]["srv0"]["routes"] if rt.get("@id") == "zdd-drain-hold"]
    assert len(holds) == 1  # one hold route (Caddy refuses a duplicate @id)
    assert [u["dial"] for u in holds[0]["handle"][0]["upstreams"]] == ["server:8080", "10.0.0.2:8080", "10.0.0.7:8080"]
    assert r.held == ["server:8080", "10.0.0.2:8080"]  # the way back is not kept
    assert "logging" not in r.config()  # nothing weighted, nothing watched: no log
    r.logged.append("server")  # the watch: every request to a switched service is logged
    assert r.config()["logging"]["logs"]["zdd_canary"]["writer"]["filename"] == "/tmp/c.log"


def test_the_command_line_overrides_the_hosts_canary_and_watch():
    from fabfile.config import WatchConfig
    from fabfile.runner import BadInput
    from fabfile.tasks import canary_of, watch_of

    host = CanaryConfig(steps=(10, 50), step_seconds=30)
    assert canary_of(host, None, False) == host
    assert canary_of(host, "5,20,60", False) == CanaryConfig(steps=(5, 20, 60), step_seconds=30)
    assert canary_of(host, None, True).steps == ()
    for bad, message in [("50,10", "must rise"), ("ten", "rising percentages"), ("100", "between 1 and 99")]:
        with pytest.raises(BadInput, match=message):
            canary_of(host, bad, False)
    with pytest.raises(BadInput, match="choose one"):
        canary_of(host, "10", True)
    watch = WatchConfig(seconds=300, min_requests=5)
    assert watch_of(watch, None) == watch and watch_of(watch, "0").seconds == 0
    assert watch_of(watch, "60") == WatchConfig(seconds=60, min_requests=5)
    with pytest.raises(BadInput, match="number of seconds"):
        watch_of(watch, "-5")
