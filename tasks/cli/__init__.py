"""Every `@task` of `fab`, one module per capability; only fabfile.py imports these."""
