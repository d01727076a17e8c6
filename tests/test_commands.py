"""Unit tests for fabfile.commands: the exact argv of every builder and the shell quoting."""

from __future__ import annotations

import dataclasses
import shlex

import pytest

from fabfile import commands as cmds
from fabfile.commands import Command, Compose, Stdin, quote_path
from fabfile.config import HostConfig, ResolvedService

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


def H(**kw) -> HostConfig:
    base = dict(name="t", dir="~/app", compose_files=("docker-compose.yaml",),
                rollout=(("server",),), engine="native")
    base.update(kw)
    return HostConfig(**base)


def words(c: Command) -> list[str]:
    return shlex.split(c.render())


def svc(name="server", health_timeout=60, pre_stop_hook="", stop_timeout=None, drain=True):
    return ResolvedService(name, health_timeout, pre_stop_hook, stop_timeout, drain)


# --- Command.render / quoting ------------------------------------------------------------------

@pytest.mark.parametrize("value", NASTY)
def test_every_argv_value_is_one_shell_word(value):
    c = Command(("docker", "exec", "cid", "sh", "-c", value))
    assert words(c) == ["docker", "exec", "cid", "sh", "-c", value]


@pytest.mark.parametrize("value", [v for v in NASTY if v])
def test_service_name_and_hook_survive_the_builders(value):
    c = Compose(H()).scale(value, 2)
    w = words(c)
    assert w[-1] == value
    assert f"{value}=2" in w
    hook = cmds.pre_stop_hook("abc123", value)
    assert words(hook) == ["docker", "exec", "abc123", "sh", "-c", value]


def test_render_without_cwd_is_just_the_argv():
    assert Command(("docker", "image", "prune", "--force")).render() == "docker image prune --force"


def test_cd_keeps_tilde_expandable_and_quotes_the_rest():
    c = Command(("ls",), cwd="~/my app/$x")
    text = c.render()
    assert text.startswith("cd ~/")
    assert text == "cd ~/'my app/$x' && ls"
    assert shlex.split(text) == ["cd", "~/my app/$x", "&&", "ls"]


@pytest.mark.parametrize("path, rendered", [
    ("~", "~"),
    ("~/", "~/"),
    ("~/remilia/staging", "~/remilia/staging"),
    ("/srv/a b", "'/srv/a b'"),
    ("~root/x", "'~root/x'"),          # only the caller's own ~/ is expanded
    ("relative dir", "'relative dir'"),
    ("~/it's", "~/'it'\"'\"'s'"),
])
def test_quote_path(path, rendered):
    assert quote_path(path) == rendered


def test_and_then_chains_with_and():
    c = cmds.stop(["a", "b"]).and_then(cmds.remove(["a", "b"]))
    assert c.render() == "docker stop a b && docker rm a b"
    assert cmds.stop_and_remove(["a", "b"], 5).render() == "docker stop --time 5 a b && docker rm a b"


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


# --- docker compose ----------------------------------------------------------------------------

def test_compose_base_with_files_project_and_env_file():
    h = H(compose_files=("docker-compose.yaml", "infra/staging/docker-compose.override.yaml"),
          project_name="remilia", env_file=".env.staging")
    assert Compose(h).base() == (
        "docker", "compose",
        "-f", "docker-compose.yaml", "-f", "infra/staging/docker-compose.override.yaml",
        "-p", "remilia", "--env-file", ".env.staging",
    )


def test_compose_base_omits_empty_project_and_env_file():
    assert Compose(H()).base() == ("docker", "compose", "-f", "docker-compose.yaml")


def test_compose_commands_run_in_the_host_dir():
    h = H(dir="~/remilia/staging", compose_files=("a.yaml", "b c.yaml"))
    c = Compose(h).pull(["server", "redis"])
    assert c.cwd == "~/remilia/staging"
    assert c.render() == "cd ~/remilia/staging && docker compose -f a.yaml -f 'b c.yaml' pull --quiet server redis"


@pytest.mark.parametrize("method, args, tail", [
    ("config_json", (), ("config", "--format", "json")),
    ("pull", (["server", "redis"],), ("pull", "--quiet", "server", "redis")),
    ("up", (["mongodb", "redis"],), ("up", "--detach", "--no-deps", "mongodb", "redis")),
    ("scale", ("server", 4), ("up", "--detach", "--no-deps", "--no-recreate", "--scale", "server=4", "server")),
    ("ids", ("server",), ("ps", "--quiet", "--status", "running", "server")),
    ("recreate", ("caddy",), ("up", "--detach", "--no-deps", "--force-recreate", "caddy")),
])
def test_compose_builder_argv(method, args, tail):
    h = H(compose_files=("a.yaml", "b.yaml"), project_name="p")
    c = getattr(Compose(h), method)(*args)
    assert c.argv == ("docker", "compose", "-f", "a.yaml", "-f", "b.yaml", "-p", "p") + tail
    assert c.cwd == "~/app"
    assert c.stdin is None


def test_ids_all_states():
    assert Compose(H()).ids("server", running_only=False).argv[-3:] == ("ps", "--quiet", "server")


def test_scale_keeps_old_containers_and_dependencies():
    argv = Compose(H()).scale("profile-server", 6).argv
    i = argv.index("up")
    assert argv[i:] == ("up", "--detach", "--no-deps", "--no-recreate", "--scale", "profile-server=6",
                        "profile-server")
    assert "--force-recreate" not in argv


# --- login: the secret never shows ------------------------------------------------------------

def test_login_puts_the_password_only_on_stdin():
    pw = "s3cr3t-token; $(curl evil)"
    c = cmds.login("ghcr.io", "bot", pw, "GH_PACKAGES_TOKEN")
    assert c.argv == ("docker", "login", "--username", "bot", "--password-stdin", "ghcr.io")
    assert c.stdin is not None and c.stdin.text == pw and c.stdin.secret
    assert pw not in c.render()
    assert "s3cr3t" not in c.describe()
    assert "s3cr3t" not in repr(c.argv)
    assert c.describe().endswith("< $GH_PACKAGES_TOKEN (secret, on stdin)")


# --- plain docker and helpers ---------------------------------------------------------------------

def test_stop_remove_inspect_logs_prune():
    assert cmds.stop(["a"]).argv == ("docker", "stop", "a")
    assert cmds.stop(["a", "b"], 0).argv == ("docker", "stop", "--time", "0", "a", "b")
    assert cmds.remove(["a"]).argv == ("docker", "rm", "a")
    assert cmds.inspect(["a", "b"]).argv == ("docker", "inspect", "a", "b")
    assert words(cmds.inspect(["a"], "{{json .State.Health}}")) == \
        ["docker", "inspect", "--format", "{{json .State.Health}}", "a"]
    assert cmds.logs("a", 5).argv == ("docker", "logs", "--tail", "5", "a")
    assert cmds.image_prune().argv == ("docker", "image", "prune", "--force")
    assert words(cmds.image_ids()) == ["docker", "image", "ls", "--no-trunc", "--format",
                                       "{{.Repository}}:{{.Tag}} {{.ID}}"]


def test_exec_is_interactive_only_with_stdin():
    assert cmds.exec_("c", "ls").argv == ("docker", "exec", "c", "ls")
    c = cmds.exec_("c", "cat", stdin=Stdin("x", "label"))
    assert c.argv == ("docker", "exec", "--interactive", "c", "cat")


@pytest.mark.parametrize("builder, args, script, argv_tail", [
    (cmds.install_plugin, ("https://x/y", "ab" * 32, "v0.13"), "install_plugin.sh",
     ("https://x/y", "ab" * 32, "v0.13")),
    (cmds.install_plugin, ("https://x/y", "ab" * 32, "v0.13", "/tmp/up"), "install_plugin.sh",
     ("https://x/y", "ab" * 32, "v0.13", "/tmp/up")),
    (cmds.plugin_version_ok, ("v0.13", "ab" * 32), "plugin_version.sh", ("v0.13", "ab" * 32)),
    (lambda: cmds.lock(H(), "acquire", "me@laptop pid 7 deploy", 120), (), "lock.sh",
     ("acquire", "__app", "me@laptop pid 7 deploy", "120")),
    (lambda: cmds.lock(H(), "release"), (), "lock.sh", ("release", "__app")),
    (lambda: cmds.lock(H(), "show"), (), "lock.sh", ("show", "__app")),
])
def test_host_scripts_are_fed_on_stdin(builder, args, script, argv_tail):
    c = builder(*args)
    assert c.argv == ("sh", "-s", "--") + argv_tail
    assert c.stdin is not None and not c.stdin.secret
    assert c.stdin.label == f"fabfile/remote/{script}"
    assert c.stdin.text.startswith(f"# {script}")
    assert c.stdin.text not in c.render()
    assert c.describe().endswith(f"< fabfile/remote/{script}")
@pytest.mark.parametrize("config, adapt, validate, reload", [
    ("/etc/caddy/Caddyfile",
     ("caddy", "adapt", "--config", "/etc/caddy/Caddyfile", "--adapter", "caddyfile"),
     ("caddy", "validate", "--config", "/etc/caddy/Caddyfile", "--adapter", "caddyfile"),
     ("caddy", "reload", "--config", "/etc/caddy/Caddyfile", "--adapter", "caddyfile", "--force")),
    ("/etc/caddy/caddy.json",
     ("cat", "/etc/caddy/caddy.json"),
     ("caddy", "validate", "--config", "/etc/caddy/caddy.json"),
     ("caddy", "reload", "--config", "/etc/caddy/caddy.json", "--force")),
])
def test_caddy_commands(config, adapt, validate, reload):
    assert cmds.caddy_adapt("cad", config).argv == ("docker", "exec", "cad") + adapt
    assert cmds.caddy_validate("cad", config).argv == ("docker", "exec", "cad") + validate
    assert cmds.caddy_reload("cad", config).argv == ("docker", "exec", "cad") + reload
    assert "--force" not in cmds.caddy_reload("cad", config, force=False).argv


def test_caddy_load_json_reads_stdin():
    c = cmds.caddy_load_json("cad", '{"apps": {}}', "pinned config")
    assert c.argv == ("docker", "exec", "--interactive", "cad", "caddy", "reload", "--config", "/dev/stdin",
                      "--force")
    assert c.stdin.text == '{"apps": {}}'
    assert '{"apps"' not in c.describe() and c.describe().endswith("< pinned config")


def test_builders_are_pure_values():
    h = H()
    assert Compose(h).scale("server", 2) == Compose(dataclasses.replace(h)).scale("server", 2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        Compose(h).scale("server", 2).argv = ()  # type: ignore[misc]
