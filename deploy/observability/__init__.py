"""Prometheus metrics of every process, merged into one scrape, and the Grafana dashboard's queries."""
