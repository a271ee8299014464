"""The edge's pure policies: firewall rules and flood guard, the balancer's choice and
health tracking, failover after a refused or broken connection, token buckets per key.

No I/O, no clock of their own: the edge (edge/) and the simulator (simulator/edge_model.py)
run the same code."""
