"""Databases on a host, as shell for root scripts: close their connections, swap two of them by renaming.

A database can't be renamed, copied or dropped while a client is connected to it (a `psql` session,
a backup's `pg_dump`): every function here closes those connections first.
"""

from __future__ import annotations

from tasks.templates import render_script

PSQL = "runuser -u postgres -- psql -qtAX -v ON_ERROR_STOP=1"


def close_connections_sql(*databases: str) -> str:
    """Prints how many connections it closed; waits up to 10 s for each to end."""
    names = ", ".join(f"'{name}'" for name in databases)
    return f"SELECT count(pg_terminate_backend(pid, 10000)) FROM pg_stat_activity WHERE datname IN ({names}) AND pid <> pg_backend_pid();"


def close_connections(*databases: str) -> str:
    """A command that closes every connection to DATABASES and says how many it closed."""
    return (f'closed=$({PSQL} -c "{close_connections_sql(*databases)}")\n'
            f'[ "${{closed:-0}}" = 0 ] || echo "closed $closed open connection(s) to {" and ".join(databases)}"')


def drop_if_exists(name: str) -> str:
    """Drop a database, closing its connections; quiet when it does not exist."""
    return f"runuser -u postgres -- env PGOPTIONS='-c client_min_messages=warning' dropdb --if-exists --force {name}"


def functions() -> str:
    """What a root script needs to define before it calls swap_databases LIVE ASIDE INCOMING and database_exists NAME."""
    return render_script("postgres-functions.sh.j2", psql=PSQL, close_connections_sql=close_connections_sql("$1", "$3"))
