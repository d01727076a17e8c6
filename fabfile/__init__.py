"""zdd: zero-downtime deploys of Docker Compose stacks, as Fabric tasks.

``fab -H HOST --list`` shows the tasks; hosts and their settings are in hosts.toml
(``hosts_file`` config key, e.g. ``FABRIC_HOSTS_FILE=other.toml``).
"""

from invoke import Collection

from . import tasks

ns = Collection(
    tasks.deploy,
    tasks.install_plugin,
    tasks.pull,
    tasks.infra_up,
    tasks.rollout_service,
    tasks.reload_caddy,
    tasks.prune,
    tasks.verify_zero_downtime,
    tasks.unlock,
    tasks.recover,
    tasks.rollback,
    tasks.status,
    tasks.drain_node,
)
ns.add_task(tasks.history_, name="history")
ns.configure({"hosts_file": "hosts.toml"})
