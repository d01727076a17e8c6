"""Engine swarm's nodes, pure: the swarm's nodes as ``docker node inspect`` describes them
(``remote/survey.sh --stack``), whether a service's placement leaves a start-first update
room on them, and ``fab status``'s tasks node by node. Nothing here talks to a host."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from .. import commands_swarm as swarm_cmds
from ..plan import declared_count, short_image
from ..runner import BadInput


@dataclass(frozen=True)
class SwarmNode:
    """One node of the swarm, as ``docker node inspect`` describes it (what placement reads)."""

    id: str
    hostname: str
    ready: bool  # Status.State ready and Spec.Availability active: Swarm may place tasks there
    fields: dict[str, str] = field(default_factory=dict)  # constraint key (node.role...) -> value
    status: str = ""  # Status.State: ready, down, unknown...

    @classmethod
    def of(cls, raw: dict) -> SwarmNode:
        spec, desc = raw.get("Spec") or {}, raw.get("Description") or {}
        platform = desc.get("Platform") or {}
        fields = {
            "node.id": str(raw.get("ID", "")),
            "node.hostname": str(desc.get("Hostname", "")),
            "node.role": str(spec.get("Role", "")),
            "node.platform.os": str(platform.get("OS", "")),
            "node.platform.arch": str(platform.get("Architecture", "")),
        }
        fields.update({f"node.labels.{k}": str(v) for k, v in (spec.get("Labels") or {}).items()})
        engine = (desc.get("Engine") or {}).get("Labels") or {}
        fields.update({f"engine.labels.{k}": str(v) for k, v in engine.items()})
        status = str((raw.get("Status") or {}).get("State", ""))
        ready = status == "ready" and spec.get("Availability") == "active"
        return cls(fields["node.id"], fields["node.hostname"], ready, fields, status)

    def fits(self, constraints: list[str]) -> bool:
        """Whether Swarm may place a task with these placement constraints here (``KEY == VALUE``
        or ``!=``, compared as Swarm does, case-insensitively; a key not known here is taken as met)."""
        for c in constraints:
            m = _CONSTRAINT.match(str(c))
            if not m:
                continue
            key, op, want = m.group(1).lower(), m.group(2), m.group(3)
            known = key in self.fields or key.startswith(("node.labels.", "engine.labels."))
            if not known:
                continue
            equal = self.fields.get(key, "").casefold() == want.casefold() and key in self.fields
            if equal != (op == "=="):
                return False
        return True


_CONSTRAINT = re.compile(r"^\s*([\w.\-]+)\s*(==|!=)\s*(.*?)\s*$")


def tasks_by_node(text: str) -> list[str]:
    """``fab status``'s tasks: stack_tasks' task lines grouped by node (hostname; a task Swarm
    placed nowhere under "no node"), each with its image as REF@DIGEST-PREFIX and its state;
    the other lines (the health table of this node's containers) after them, as they are."""
    nodes: dict[str, list[tuple[str, str, str]]] = {}
    rest = []
    for line in text.splitlines():
        word, _, fields = line.partition(" ")
        if word != swarm_cmds.TASK_WORD:
            rest.append(line)
            continue
        node, name, image, state, error = (fields.split("|") + [""] * 5)[:5]
        ref, _, digest = image.partition("@")
        version = f"{ref.rsplit('/', 1)[-1]}@{short_image(digest)}" if digest else ref.rsplit("/", 1)[-1]
        nodes.setdefault(node or "(no node)", []).append((name, version, state + (f" ({error})" if error else "")))
    out = []
    for node in sorted(nodes):
        tasks = sorted(nodes[node])
        out.append(f"node {node}: {len(tasks)} task(s)")
        widths = [max(len(t[i]) for t in tasks) for i in range(2)]
        out += [f"  {n.ljust(widths[0])}  {v.ljust(widths[1])}  {s}" for n, v, s in tasks]
    return out + ([""] if out and rest else []) + rest


def find_node(nodes: list[SwarmNode] | None, name: str) -> SwarmNode:
    """The node ``name`` names (its hostname, or its ID or a unique prefix of it, as docker node
    ls shows them); BadInput when none or several do."""
    if nodes is None:
        raise BadInput("cannot read the swarm's nodes (docker node ls)")
    found = [n for n in nodes if name in (n.hostname, n.id)] or [n for n in nodes if name and n.id.startswith(name)]
    if len(found) != 1:
        known = ", ".join(sorted(n.hostname for n in nodes)) or "none"
        what = "several nodes" if found else "no node"
        raise BadInput(f"{what} of this swarm named {name!r} (hostname or ID; nodes: {known})")
    return found[0]


def move_stall(name: str, svc: dict[str, Any], others: list[SwarmNode]) -> str:
    """Why this service's tasks could not move to ``others`` (the nodes but the one drained; ""
    when they can): no ready, active node among them its placement allows, or too few for its
    replicas with ``placement.max_replicas_per_node``."""
    placement = (svc.get("deploy") or {}).get("placement") or {}
    nodes = eligible(svc, others)
    if not nodes:
        constraints = placement.get("constraints") or []
        allows = f" its placement allows ({', '.join(map(str, constraints))})" if constraints else ""
        return f"{name}: no other ready, active node{allows} could take its tasks"
    per_node, replicas = placement.get("max_replicas_per_node"), declared_count(svc) or 1
    if per_node and len(nodes) * int(per_node) < replicas:
        return (
            f"{name}: max_replicas_per_node {per_node} on the {len(nodes)} other ready, active node(s) its "
            f"placement allows leaves no room for its {replicas} replicas"
        )
    return ""


def eligible(svc: dict[str, Any], nodes: list[SwarmNode]) -> list[SwarmNode]:
    """The nodes Swarm may place a task of this compose service on: ready, active, meeting its
    placement constraints."""
    constraints = list((((svc.get("deploy") or {}).get("placement") or {}).get("constraints")) or [])
    return [n for n in nodes if n.ready and n.fits(constraints)]


def placement_stall(name: str, svc: dict[str, Any], nodes: list[SwarmNode] | None) -> str:
    """Why a start-first update of this service would stall ("" when it would not): with
    ``placement.max_replicas_per_node`` M and R replicas on N eligible nodes (ready, active,
    meeting its constraints), no node may take the extra new task when N*M <= R (Swarm keeps it
    pending: "no suitable node (max replicas per node limit exceed)", moby/moby#40797)."""
    deploy = svc.get("deploy") or {}
    placement = deploy.get("placement") or {}
    per_node = placement.get("max_replicas_per_node")
    if nodes is None or not per_node or deploy.get("mode") in ("global", "global-job"):
        return ""
    per_node = int(per_node)
    replicas = declared_count(svc) or 1
    allowed = eligible(svc, nodes)
    if len(allowed) * per_node > replicas:
        return ""
    fixes = ["placement.preferences: [{spread: node.id}] instead of max_replicas_per_node"]
    if len(allowed) * per_node > 1:
        fixes.append(f"replicas {len(allowed) * per_node - 1} or fewer")
    if allowed:
        fixes.append(f"max_replicas_per_node {replicas // len(allowed) + 1} or more")
    return (
        f"{name}: max_replicas_per_node {per_node} on {len(allowed)} ready, active node(s) its placement allows "
        f"leaves no room for the extra task of a start-first update of {replicas} replica(s) (Swarm would stall it: "
        f"no suitable node): set {', or '.join(fixes)}"
    )
