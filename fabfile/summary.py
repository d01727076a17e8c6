"""A run's document (outcome.py) as text: the summary across hosts that ``fab -H a,b deploy``
prints at the end, and the Markdown that ``inv summary`` prints for a CI job summary."""

from __future__ import annotations

from typing import Any

from .verify.render import columns


def _time(seconds: float | None) -> str:
    return "" if seconds is None else f"{seconds:.1f}s"


def _failed_requests(host: dict[str, Any]) -> str:
    if host.get("requests") is None:
        return "-" if host["result"] != "not run" else ""
    return f"{host['failed_requests']:,} of {host['requests']:,}"


def _headline(doc: dict[str, Any]) -> str:
    result = "ok" if doc["result"] == "ok" else doc["result"].upper()
    n = len(doc["hosts"])
    return f"{doc['title']} on {n} host{'' if n == 1 else 's'}: {result} in {_time(doc['duration_s']) or '0.0s'}"


HOSTS_HEADER, HOSTS_ALIGN = ["host", "result", "time", "failed requests", "error"], "llrrl"


def host_rows(doc: dict[str, Any]) -> list[list[str]]:
    """Per host: name, result, duration, failed requests (of all), the one-line error."""
    return [
        [h["host"] or "-", h["result"], _time(h.get("duration_s")), _failed_requests(h), h.get("error") or ""]
        for h in doc["hosts"]
    ]


def text(doc: dict[str, Any]) -> str:
    """The summary across hosts, printed once after the last host (or the first failure)."""
    lines = columns(HOSTS_HEADER, host_rows(doc), HOSTS_ALIGN)
    return "\n".join([f"\n{_headline(doc)}", *(f"  {ln}" for ln in lines)])


def _cell(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;").replace("\n", " ")


def _md_table(header: list[str], rows: list[list[Any]], align: str) -> list[str]:
    """A Markdown table; ``align`` has one letter per column: l or r."""
    rule = ["---:" if a == "r" else "---" for a in align]
    return [
        f"| {' | '.join(header)} |",
        f"| {' | '.join(rule)} |",
        *(f"| {' | '.join(_cell(c) for c in row)} |" for row in rows),
    ]


def markdown(doc: dict[str, Any]) -> str:
    """The run for a CI job summary: one table across hosts, then each host's verify verdict,
    failure, notes and steps (folded)."""
    lines = [f"### {_headline(doc)}", "", *_md_table(HOSTS_HEADER, host_rows(doc), HOSTS_ALIGN)]
    for h in doc["hosts"]:
        if h["result"] == "not run":
            continue
        lines += [
            "",
            f"#### {_cell(h['host'] or h['title'])}: {h['result']}"
            f"{' (dry run)' if h.get('dry_run') else ''} in {_time(h['duration_s'])}",
            "",
        ]
        if h.get("verdict"):
            lines.append(f"**verify: {'PASS' if h['verify_ok'] else 'FAIL'}** {_cell(h['verdict'])}  ")
        if h.get("error"):
            lines.append(f"**error:** {_cell(h['error'])}  ")
        if h.get("switches"):
            lines.append(
                "switched to the new containers (UTC): "
                + ", ".join(f"{_cell(s['service'])} {s['at'][11:19]}" for s in h["switches"])
                + "  "
            )
        lines += [f"{_cell(n)}  " for n in h.get("notes") or []]
        if h.get("cost"):
            lines.append(
                f"cost: {h['cost']['remote_commands']} remote commands, {h['cost']['proxy_loads']} proxy loads  "
            )
        if h.get("steps"):
            rows = [[s["name"], s["status"], _time(s["seconds"]), s["detail"]] for s in h["steps"]]
            lines += [
                "",
                f"<details><summary>{len(rows)} steps</summary>",
                "",
                *_md_table(["step", "result", "time", "detail"], rows, "llrl"),
                "",
                "</details>",
            ]
    return "\n".join(lines) + "\n"
