"""The tracking service: its server, front door, users, backups and upgrades."""
