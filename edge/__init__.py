"""The edge in front of the orchestrator API: firewall, load balancer, gateway, API keys.

Every decision is made by the shared pure policies in `orchestrator.policies` (firewall and
flood guard, balancer and health tracker, token bucket), the same code the simulator runs.
"""

from edge.errors import EdgeError, KeyStoreError, StackError

__all__ = ["EdgeError", "KeyStoreError", "StackError"]
