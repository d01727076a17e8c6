"""Limits and defaults zdd sets itself, each declared once, by name (hosts.toml's own defaults
are in :mod:`fabfile.config_model`'s dataclasses). Re-exported by :mod:`fabfile.config`."""

LOCK_WAIT = 120  # a deploy waits this long for the previous deploy's restore job to free the lock
JOURNAL_TAIL = 5000  # lines of the host's journal read (survey, history, rollback, recovery)
STOP_GRACE = 10  # Docker's own stop timeout, for a service with no stop_timeout
PIN_WAIT = 30  # tier.sh has loaded the pin config (a proxy load)
HEALTH_MARGIN = 120  # beyond the tier's longest health_timeout before zdd stops waiting for the host
SWITCH_WAIT = 60  # tier.sh has loaded the switch config
UNDO_WAIT = 20  # tier.sh has removed the new containers after an abort
DRAIN_MARGIN = 30  # beyond proxy.drain_timeout before zdd stops reading a tier's drain report
RESTORE_MARGIN = 30  # beyond the longest stop grace before restore.sh gives up on the old containers
SWARM_TASK_MARGIN = 60  # per task of a Swarm update, beyond health_timeout (boot, monitor)
SWARM_ANSWER_MARGIN = 60  # beyond a Swarm change's ceiling before zdd stops waiting for swarm_tier.sh
DEFAULT_VERSION_REGEX = r"\bv\d+[\w.-]*"  # finds an app's version in a response (verify.version_regex)
COMMAND_DEADLINE = 300  # a remote command (not a tier's conversation) that has not ended by then is given up
OUTPUT_GRACE = 5  # sshd sends a command's exit status before the rest of its output: wait this long for EOF
SSH_KEEPALIVE = 15  # seconds between SSH keepalives (a dead connection is noticed; idle NATs keep it)
