"""MLflow in production on your own servers: `fab -l` lists the tasks."""

from pathlib import Path

from invoke import Collection

from tasks import backups, logs, model_tasks, model_users, project_tasks, status, tracking, tracking_users, upgrade

ns = Collection()
ns.add_task(tracking.setup_tracking)
ns.add_task(tracking_users.tracking_user)
ns.add_task(status.status)
ns.add_task(model_tasks.deploy_model)
ns.add_task(model_tasks.rollback_model)
ns.add_task(model_tasks.releases)
ns.add_task(model_tasks.predict)
ns.add_task(model_tasks.setup_lb)
ns.add_task(model_users.model_user)
ns.add_task(project_tasks.run_project)
ns.add_task(logs.logs)
ns.add_task(backups.backup_tracking)
ns.add_task(backups.restore_tracking)
ns.add_task(upgrade.upgrade_tracking)
# Override with FABRIC_INVENTORY=path/to/hosts.toml, or `inventory:` in a Fabric config file.
ns.configure({"inventory": str(Path(__file__).resolve().with_name("hosts.toml")), "target_hosts": []})
