"""The cloud: ingest, storage, API, dashboards."""
