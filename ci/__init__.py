"""The engine-build pipeline users run in their CI (export, build, check in one step). Grows with the exporter."""
