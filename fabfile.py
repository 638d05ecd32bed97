"""MLflow in production on your own servers: `fab -l` lists the tasks."""

from pathlib import Path

from invoke import Collection

from tasks.cli import monitoring, overview, serving, tracking, training

ns = Collection()
ns.add_task(tracking.setup_tracking)
ns.add_task(tracking.tracking_user)
ns.add_task(overview.status)
ns.add_task(serving.deploy_model)
ns.add_task(serving.rollback_model)
ns.add_task(serving.releases)
ns.add_task(serving.predict)
ns.add_task(serving.setup_lb)
ns.add_task(serving.model_user)
ns.add_task(training.run_project)
ns.add_task(overview.logs)
ns.add_task(tracking.backup_tracking)
ns.add_task(tracking.restore_tracking)
ns.add_task(tracking.upgrade_tracking)
ns.add_task(tracking.migrate_tracking)
ns.add_task(monitoring.setup_monitoring)
ns.add_task(monitoring.monitor)
# Override with FABRIC_INVENTORY=path/to/hosts.toml, or `inventory:` in a Fabric config file.
ns.configure({"inventory": str(Path(__file__).resolve().with_name("hosts.toml")), "target_hosts": []})
