"""Adapters that let users of other stream-learning tools adopt streamkd without leaving them:
``streamkd.integrations.avalanche`` (Avalanche strategies and plugins) and
``streamkd.integrations.river`` (a river mini-batch classifier)."""
