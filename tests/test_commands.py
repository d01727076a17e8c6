"""Unit tests for fabfile.commands: the exact argv of every builder and the shell quoting."""

from __future__ import annotations

import dataclasses
import shlex

import pytest

from fabfile import command as command_mod
from fabfile import commands as cmds
from fabfile.commands import Command, Compose, Stdin, TierService, quote_path
from fabfile.config import HostConfig, ProxyConfig, RegistryConfig

NASTY = [
    "with space",
    "it's",
    'say "hi"',
    "$HOME",
    "$(reboot)",
    "`id`",
    "a; rm -rf /",
    "x && y || z",
    "tab\tand\nnewline",
    "*",
    "~root",
    "",
]

TOKEN = "s3cr3t-token; $(curl evil)"
LISTING = ("docker", "image", "ls", "--no-trunc", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}")


def H(**kw) -> HostConfig:
    base = dict(name="t", dir="~/app", compose_files=("docker-compose.yaml",), rollout=(("server",),), engine="native")
    base.update(kw)
    return HostConfig(**base)


def words(c: Command) -> list[str]:
    return shlex.split(c.render())


def program_args(c: Command, name: str) -> tuple[str, ...]:
    """The arguments of a ``sh -c SCRIPT NAME ARGS...`` command, after checking its head."""
    assert c.argv[:2] == ("sh", "-c") and c.argv[2] == command_mod.program(name) and c.argv[3] == name
    return c.argv[4:]


def server(**kw) -> TierService:
    base = dict(
        name="server",
        target=2,
        health_timeout=60,
        stop_timeout=None,
        old=("aaa", "bbb"),
        held=("server:8080", "172.18.0.5:8080", "172.18.0.6:8080"),
        hook="",
    )
    base.update(kw)
    return TierService(**base)


# --- Command.render / quoting ------------------------------------------------------------------


@pytest.mark.parametrize("value", NASTY)
def test_every_argv_value_is_one_shell_word(value):
    c = Command(("docker", "exec", "cid", "sh", "-c", value))
    assert words(c) == ["docker", "exec", "cid", "sh", "-c", value]


@pytest.mark.parametrize("value", [v for v in NASTY if v])
def test_service_name_and_hook_survive_the_builders(value):
    assert words(Compose(H()).up([value]))[-1] == value
    assert words(cmds.exec_("abc123", "sh", "-c", value)) == ["docker", "exec", "abc123", "sh", "-c", value]
    c = cmds.tier(H(), False, "cad", [server(name=value, hook=value)])
    w = words(c)
    assert w[w.index(value) : w.index(value) + 7] == [
        value,
        "2",
        "60",
        "",
        "aaa,bbb",
        "server:8080,172.18.0.5:8080,172.18.0.6:8080",
        value,
    ]


def test_render_without_cwd_is_just_the_argv():
    assert Command(("docker", "image", "prune", "--force")).render() == "docker image prune --force"


def test_cd_keeps_tilde_expandable_and_quotes_the_rest():
    c = Command(("ls",), cwd="~/my app/$x")
    text = c.render()
    assert text.startswith("cd ~/")
    assert text == "cd ~/'my app/$x' && ls"
    assert shlex.split(text) == ["cd", "~/my app/$x", "&&", "ls"]


@pytest.mark.parametrize(
    "path, rendered",
    [
        ("~", "~"),
        ("~/", "~/"),
        ("~/remilia/staging", "~/remilia/staging"),
        ("/srv/a b", "'/srv/a b'"),
        ("~root/x", "'~root/x'"),  # only the caller's own ~/ is expanded
        ("relative dir", "'relative dir'"),
        ("~/it's", "~/'it'\"'\"'s'"),
    ],
)
def test_quote_path(path, rendered):
    assert quote_path(path) == rendered


def test_and_then_keeps_the_original_and_chains_several():
    first = Command(("true",), cwd="~/x")
    chained = first.and_then(Command(("a",)), Command(("b", "c d")))
    assert first.then == ()  # immutable
    assert chained.render() == "cd ~/x && true && a && b 'c d'"
    again = chained.and_then(Command(("z",)))
    assert again.render().endswith("&& b 'c d' && z")


def test_describe_is_render_plus_stdin_label():
    c = Command(("sh", "-s"), stdin=Stdin("echo hi", "script.sh"))
    assert c.describe() == "sh -s  < script.sh"
    assert Command(("ls",)).describe() == "ls"


def test_limit_runs_the_argv_under_timeout():
    c = Command(("docker", "compose", "pull"), cwd="~/app", limit=300)
    assert c.render() == "cd ~/app && timeout --kill-after=10 300 docker compose pull"
    assert c.describe() == c.render()
    assert c.argv == ("docker", "compose", "pull")  # the argv itself is unchanged
    assert Command(("ls",), limit=None).render() == "ls"


# --- host programs: `sh -c SCRIPT NAME ARGS` ------------------------------------------------------


def test_host_program_sends_the_script_text_but_describes_it_by_name():
    c = cmds.host_program("survey.sh", "caddy", "a b", cwd="~/app")
    text = command_mod.program("survey.sh")
    assert text.startswith(command_mod.script("lib.sh")) and text.endswith(command_mod.script("survey.sh"))
    assert c.argv == ("sh", "-c", text, "survey.sh", "caddy", "a b")
    assert words(c) == ["cd", "~/app", "&&", "sh", "-c", text, "survey.sh", "caddy", "a b"]
    assert c.describe() == "cd ~/app && sh -c '<fabfile/remote/survey.sh>' survey.sh caddy 'a b'"
    assert text.splitlines()[0] not in c.describe()
    assert c.stdin is None  # stdin stays free


def test_survey_args():
    h = H(
        compose_files=("a.yaml", "b c.yaml"),
        project_name="remi",
        proxy=ProxyConfig(service="edge", config="/etc/caddy/caddy.json", admin="127.0.0.1:2999"),
    )
    c = cmds.survey(h)
    assert program_args(c, "survey.sh") == (
        "edge",
        "/etc/caddy/caddy.json",
        "127.0.0.1:2999",
        "remi",
        "5000",
        "-f",
        "a.yaml",
        "-f",
        "b c.yaml",
        "-p",
        "remi",
    )
    assert c.cwd == "~/app"
    assert program_args(cmds.survey(H(proxy=ProxyConfig(service=""))), "survey.sh")[:4] == (
        "",
        "/etc/caddy/Caddyfile",
        "localhost:2019",
        "",
    )  # no project name: the key is the directory alone


# --- docker compose ----------------------------------------------------------------------------


def test_compose_base_with_files_project_and_env_file():
    h = H(
        compose_files=("docker-compose.yaml", "infra/staging/docker-compose.override.yaml"),
        project_name="remilia",
        env_file=".env.staging",
    )
    assert Compose(h).base() == (
        "docker",
        "compose",
        "-f",
        "docker-compose.yaml",
        "-f",
        "infra/staging/docker-compose.override.yaml",
        "-p",
        "remilia",
        "--env-file",
        ".env.staging",
    )


def test_compose_base_omits_empty_project_and_env_file():
    assert Compose(H()).base() == ("docker", "compose", "-f", "docker-compose.yaml")


def test_compose_commands_run_in_the_host_dir():
    h = H(dir="~/remilia/staging", compose_files=("a.yaml", "b c.yaml"))
    c = Compose(h).up(["server", "redis"])
    assert c.cwd == "~/remilia/staging"
    assert (
        c.render()
        == "cd ~/remilia/staging && docker compose -f a.yaml -f 'b c.yaml' up --detach --no-deps server redis"
    )


@pytest.mark.parametrize(
    "method, args, tail",
    [
        ("up", (["mongodb", "redis"],), ("up", "--detach", "--no-deps", "mongodb", "redis")),
        ("ids", ("server",), ("ps", "--quiet", "--status", "running", "server")),
        ("recreate", ("caddy",), ("up", "--detach", "--no-deps", "--force-recreate", "caddy")),
    ],
)
def test_compose_builder_argv(method, args, tail):
    h = H(compose_files=("a.yaml", "b.yaml"), project_name="p")
    c = getattr(Compose(h), method)(*args)
    assert c.argv == ("docker", "compose", "-f", "a.yaml", "-f", "b.yaml", "-p", "p") + tail
    assert c.cwd == "~/app"
    assert c.stdin is None


def test_ids_all_states():
    assert Compose(H()).ids("server", running_only=False).argv[-3:] == ("ps", "--quiet", "server")


# --- login and pull: the secret never shows ---------------------------------------------------


@pytest.mark.parametrize("keep_login, keep", [(False, "0"), (True, "1")])
def test_pull_with_credentials_logs_in_pulls_and_lists_in_one_command(keep_login, keep):
    h = H(
        compose_files=("a.yaml",),
        project_name="remi",
        registry=RegistryConfig(server="ghcr.io", password_env="GH_PACKAGES_TOKEN", keep_login=keep_login),
    )
    c = cmds.pull(h, ["server", "redis"], ("ghcr.io", "bot", TOKEN, "GH_PACKAGES_TOKEN"), limit=300)
    assert program_args(c, "pull.sh") == (
        keep,
        "ghcr.io",
        "bot",
        "300",
        "server",
        "redis",
        "--",
        "-f",
        "a.yaml",
        "-p",
        "remi",
    )
    assert c.cwd == "~/app"
    assert c.stdin is not None and c.stdin.text == TOKEN and c.stdin.secret
    assert c.describe() == (
        f"cd ~/app && sh -c '<fabfile/remote/pull.sh>' pull.sh {keep} ghcr.io bot 300 server "
        "redis -- -f a.yaml -p remi  < $GH_PACKAGES_TOKEN (secret, on stdin)"
    )
    assert "s3cr3t" not in c.render() + c.describe() + repr(c)


def test_pull_without_credentials():
    c = cmds.pull(H(), ["server"], None, 900)
    assert program_args(c, "pull.sh") == ("0", "", "", "900", "server", "--", "-f", "docker-compose.yaml")
    assert c.stdin is None
    assert (
        c.describe() == "cd ~/app && sh -c '<fabfile/remote/pull.sh>' pull.sh 0 '' '' 900 server -- "
        "-f docker-compose.yaml"
    )


# --- plain docker and helpers ---------------------------------------------------------------------


def test_image_listing_prune_remove_and_signal():
    assert cmds.image_ids().argv == LISTING
    assert words(cmds.image_ids()) == list(LISTING)
    assert cmds.image_prune().argv == ("docker", "image", "prune", "--force")
    assert cmds.remove_file("/tmp/x y").argv == ("rm", "-f", "/tmp/x y")
    assert cmds.signal_process("4242").argv == ("kill", "-TERM", "4242")
    assert cmds.signal_process("4242", "KILL").render() == "kill -KILL 4242"


def test_exec_is_interactive_only_with_stdin():
    assert cmds.exec_("c", "ls").argv == ("docker", "exec", "c", "ls")
    c = cmds.exec_("c", "cat", stdin=Stdin("x", "label"))
    assert c.argv == ("docker", "exec", "--interactive", "c", "cat")


@pytest.mark.parametrize(
    "args, argv_tail",
    [
        (
            ("__app_remi", "acquire", "me@laptop pid 7 deploy", "120", (), 1800),
            ("acquire", "__app_remi", "me@laptop pid 7 deploy", "120", "1800"),
        ),
        (("__app_remi", "takeover", "me pid 8", "me pid 7"), ("takeover", "__app_remi", "me pid 8", "me pid 7")),
        (("__app_remi", "unlock"), ("unlock", "__app_remi")),
    ],
)
def test_lock_is_a_host_program_keyed_by_the_survey(args, argv_tail):
    c = cmds.lock(*args)
    assert program_args(c, "lock.sh") == argv_tail
    assert c.cwd is None and c.stdin is None  # nothing for the journal: stdin stays empty
    assert c.describe() == shlex.join(("sh", "-c", "<fabfile/remote/lock.sh>", "lock.sh", *argv_tail))


def test_lock_acquire_needs_stale_and_knows_only_its_actions():
    with pytest.raises(ValueError, match="stale"):
        cmds.lock("k", "acquire", "me", "120")
    with pytest.raises(ValueError, match="release"):
        cmds.lock("k", "release", "me")


def test_lock_journal_lines_go_on_stdin():
    c = cmds.lock("k", "acquire", "me", "120", ('{"event": "start"}', '{"x": 1}'), 1800)
    assert c.stdin is not None and not c.stdin.secret
    assert c.stdin.text == '{"event": "start"}\n{"x": 1}\n'
    assert c.describe().endswith("  < journal lines")
    assert '"start"' not in c.render()  # the lines are not in the command line


def test_finish_args_and_journal_stdin():
    c = cmds.finish(
        "k", "me pid 7", True, 3, "20250101-000000-7", {"server": "sha256:aa", "redis": ""}, ('{"event": "end"}',)
    )
    assert program_args(c, "finish.sh") == ("k", "me pid 7", "1", "3", "20250101-000000-7", "server=sha256:aa")
    assert c.stdin is not None and c.stdin.text == '{"event": "end"}\n'
    c = cmds.finish("k", "", False, 5, "", {}, ())
    assert program_args(c, "finish.sh") == ("k", "", "0", "5", "") and c.stdin is None


def test_recover_args_per_tier_then_compose_flags():
    h = H(compose_files=("a.yaml",), project_name="remi")
    c = cmds.recover(
        h,
        "k",
        "run-1",
        [
            ("4242", False, ["server", "property"], ["aaa", "bbb"], ["ccc"], 1700),
            ("4343", True, ["identity"], [], [], 1701),
        ],
    )
    assert program_args(c, "recover.sh") == (
        "k",
        "run-1",
        "2",
        "4242",
        "",
        "server,property",
        "aaa,bbb",
        "ccc",
        "1700",
        "4343",
        "1",
        "identity",
        "",
        "",
        "1701",
        "-f",
        "a.yaml",
        "-p",
        "remi",
    )
    assert c.cwd == "~/app"


def test_journal_read_and_tag():
    c = cmds.journal_read("__app_remi", last=50)
    assert c.render() == "cd ~ && tail -n 50 .zdd/journal/__app_remi.jsonl"
    assert cmds.tag("sha256:aa", "x/server:latest").argv == ("docker", "tag", "sha256:aa", "x/server:latest")


@pytest.mark.parametrize(
    "builder, args, script, argv_tail",
    [
        (
            cmds.install_plugin,
            ("https://x/y", "ab" * 32, "v0.13"),
            "install_plugin.sh",
            ("https://x/y", "ab" * 32, "v0.13"),
        ),
        (
            cmds.install_plugin,
            ("https://x/y", "ab" * 32, "v0.13", "/tmp/up"),
            "install_plugin.sh",
            ("https://x/y", "ab" * 32, "v0.13", "/tmp/up"),
        ),
        (cmds.plugin_version_ok, ("v0.13", "ab" * 32), "plugin_version.sh", ("v0.13", "ab" * 32)),
    ],
)
def test_host_scripts_are_fed_on_stdin(builder, args, script, argv_tail):
    c = builder(*args)
    assert c.argv == ("sh", "-s", "--") + argv_tail
    assert c.stdin is not None and not c.stdin.secret
    assert c.stdin.label == f"fabfile/remote/{script}"
    assert c.stdin.text.startswith(f"# {script}")
    assert c.stdin.text not in c.render()
    assert c.describe().endswith(f"< fabfile/remote/{script}")


@pytest.mark.parametrize(
    "config, validate, reload",
    [
        (
            "/etc/caddy/Caddyfile",
            ("caddy", "validate", "--config", "/etc/caddy/Caddyfile", "--adapter", "caddyfile"),
            ("caddy", "reload", "--config", "/etc/caddy/Caddyfile", "--adapter", "caddyfile", "--force"),
        ),
        (
            "/etc/caddy/caddy.json",
            ("caddy", "validate", "--config", "/etc/caddy/caddy.json"),
            ("caddy", "reload", "--config", "/etc/caddy/caddy.json", "--force"),
        ),
    ],
)
def test_caddy_commands(config, validate, reload):
    assert cmds.caddy_validate("cad", config).argv == ("docker", "exec", "cad") + validate
    assert cmds.caddy_reload("cad", config).argv == ("docker", "exec", "cad") + reload
    assert "--force" not in cmds.caddy_reload("cad", config, force=False).argv


# --- tier.sh and restore.sh --------------------------------------------------------------------


def test_tier_service_args_in_tier_sh_order():
    assert server().args() == ("server", "2", "60", "", "aaa,bbb", "server:8080,172.18.0.5:8080,172.18.0.6:8080", "")
    assert server(stop_timeout=15, old=(), held=(), hook="sleep 5").args() == (
        "server",
        "2",
        "60",
        "15",
        "",
        "",
        "sleep 5",
    )


def test_tier_args_count_services_then_compose_flags():
    h = H(
        compose_files=("a.yaml", "b.yaml"),
        project_name="remi",
        env_file=".env",
        no_healthcheck_wait=7,
        proxy=ProxyConfig(admin="localhost:2019", drain_timeout=45),
    )
    identity = TierService("identity", 1, 30, 20, (), (), "")
    c = cmds.tier(h, True, "cad", [server(), identity], ("remilia_default",), "__app_remi", "run-1")
    assert program_args(c, "tier.sh") == (
        "plugin",
        "cad",
        "localhost:2019",
        "45",
        "7",
        "5",
        "__app_remi",
        "run-1",
        "2",
        *server().args(),
        *identity.args(),
        "-f",
        "a.yaml",
        "-f",
        "b.yaml",
        "-p",
        "remi",
        "--env-file",
        ".env",
    )
    assert c.cwd == "~/app"
    assert c.stdin is not None and c.stdin.text == "" and not c.stdin.secret
    assert c.describe().startswith("cd ~/app && sh -c '<fabfile/remote/tier.sh>' tier.sh plugin cad ")


def test_tier_matches_the_documented_command_line():
    h = H(compose_files=("x.yaml",), no_healthcheck_wait=0, proxy=ProxyConfig(drain_timeout=5))
    c = cmds.tier(
        h, False, "PROXY", [TierService("server", 1, 5, None, ("abc",), ("server:8080",))], key="KEY", run="RUN"
    )
    assert program_args(c, "tier.sh") == tuple(
        shlex.split("compose PROXY localhost:2019 5 0 5 KEY RUN 1 server 1 5 '' abc server:8080 '' -f x.yaml")
    )


def test_tier_dry_run_output_has_placeholders_on_the_proxy_network():
    c = cmds.tier(
        H(), False, "cad", [server(target=3), TierService("identity", 1, 30, None, (), ())], ("remilia_default", "edge")
    )
    assert c.dry_run_output == (
        "pid 0",
        "pinned",
        "new server <new-server-1> remilia_default=<ip-of-new-server-1>",
        "new server <new-server-2> remilia_default=<ip-of-new-server-2>",
        "new server <new-server-3> remilia_default=<ip-of-new-server-3>",
        "new identity <new-identity-1> remilia_default=<ip-of-new-identity-1>",
        "healthy after 0s",
        "switched",
        "drained after 0s, 0 in flight at most",
        "retired",
    )


def test_tier_dry_run_output_docker_rollout_replaces_each_old_container():
    c = cmds.tier(H(), True, "cad", [server(target=5), TierService("identity", 2, 30, None, (), ())])
    new = [line for line in c.dry_run_output if line.startswith("new ")]
    assert new == [
        "new server <new-server-1> net=<ip-of-new-server-1>",  # as many as old, not target
        "new server <new-server-2> net=<ip-of-new-server-2>",
        "new identity <new-identity-1> net=<ip-of-new-identity-1>",  # not running: target
        "new identity <new-identity-2> net=<ip-of-new-identity-2>",
    ]


@pytest.mark.parametrize(
    "detach, mode, output",
    [
        (True, "detach", ("restore queued",)),
        (False, "wait", ("restored /etc/caddy/Caddyfile",)),
    ],
)
def test_restore_detach_or_wait(detach, mode, output):
    h = H(project_name="remi")
    c = cmds.restore(h, "__app_remi", "cad", ["aaa", "bbb"], detach, 40)
    assert program_args(c, "restore.sh") == (mode, "__app_remi", "cad", "/etc/caddy/Caddyfile", "40", "-", "aaa", "bbb")
    logged = cmds.restore(h, "__app_remi", "cad", [], detach, 40, "/tmp/zdd-r.log")
    assert program_args(logged, "restore.sh")[5:] == ("/tmp/zdd-r.log",)  # removed once the reload closed it
    assert c.cwd == "~/app" and c.stdin is None
    assert c.dry_run_output == output


def test_builders_are_pure_values():
    h = H()
    assert cmds.tier(h, False, "cad", [server()]) == cmds.tier(dataclasses.replace(h), False, "cad", [server()])
    assert Compose(h).up(["server"]) == Compose(dataclasses.replace(h)).up(["server"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        Compose(h).up(["server"]).argv = ()  # type: ignore[misc]
