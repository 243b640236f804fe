"""Docker Swarm as a container engine: one manager, many nodes (hosts of the placement)."""
