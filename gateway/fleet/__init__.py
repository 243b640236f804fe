"""Cluster mode: several gateways over one fleet, through etcd. Membership and the leader's lease, the shared
routing table and device ledger, follower load requests, fleet-wide pins, reloads and last uses, and the
adoption of a dead leader's containers (``node``); the store (``store``); the table's data and its pure
decisions (``table``); mirrored and adopted replicas (``mirror``). Without ``GATEWAY_CLUSTER_ETCD`` nothing
here runs."""
