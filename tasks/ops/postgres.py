"""Databases on a host, as shell for root scripts: close their connections, swap two of them by renaming.

A database can't be renamed, copied or dropped while a client is connected to it (a `psql` session,
a backup's `pg_dump`): every function here closes those connections first.
"""

from __future__ import annotations

PSQL = "runuser -u postgres -- psql -qtAX -v ON_ERROR_STOP=1"


def close_connections_sql(*databases: str) -> str:
    """Prints how many connections it closed; waits up to 10 s for each to end."""
    names = ", ".join(f"'{name}'" for name in databases)
    return f"SELECT count(pg_terminate_backend(pid, 10000)) FROM pg_stat_activity WHERE datname IN ({names}) AND pid <> pg_backend_pid();"


def close_connections(*databases: str) -> str:
    """A command that closes every connection to DATABASES and says how many it closed."""
    return (f'closed=$({PSQL} -c "{close_connections_sql(*databases)}")\n'
            f'[ "${{closed:-0}}" = 0 ] || echo "closed $closed open connection(s) to {" and ".join(databases)}"')


# swap_databases LIVE ASIDE INCOMING: LIVE becomes ASIDE and INCOMING becomes LIVE in one transaction.
# A client that reconnects between closing and renaming makes the rename fail: the whole transaction is tried again.
SWAP_DATABASES = f"""swap_databases() {{
  local attempt closed
  for attempt in 1 2 3 4 5; do
    if closed=$({PSQL} -1 2>&1 <<SQL
{close_connections_sql("$1", "$3")}
ALTER DATABASE "$1" RENAME TO "$2";
ALTER DATABASE "$3" RENAME TO "$1";
SQL
); then
      [ "${{closed:-0}}" = 0 ] || echo "closed $closed open connection(s) to $1 and $3"
      return 0
    fi
    sleep 1
  done
  echo "could not rename database $1 to $2 and $3 to $1: $closed"
  return 1
}}"""


def drop_if_exists(name: str) -> str:
    """Drop a database, closing its connections; quiet when it does not exist."""
    return f"runuser -u postgres -- env PGOPTIONS='-c client_min_messages=warning' dropdb --if-exists --force {name}"


DATABASE_EXISTS = f"""database_exists() {{ [ "$({PSQL} -c "select 1 from pg_database where datname = '$1'")" = 1 ]; }}"""

# What a root script needs to define before it calls swap_databases and database_exists.
FUNCTIONS = f"{SWAP_DATABASES}\n{DATABASE_EXISTS}"
