"""Metrics (vLLM's names), their Prometheus exposition, the gauges read at scrape time, the engines' own
metrics scraped, and the timers behind the stats line. Called by the layers above; reads the scheduler."""
