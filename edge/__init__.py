"""The edge in front of the orchestrator API: firewall, load balancer, gateway, API keys.

Every decision is made by the pure policies in `sagalab.edge.policies` (firewall and flood
guard, balancer choice and health tracking, failover, token buckets), the same code the
simulator runs. Errors: `sagalab.edge.errors`.
"""
