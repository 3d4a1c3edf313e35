"""Peerbot: a coding agent in Slack, run on Kubernetes.

The shared core lives here; the three deployable parts are the sub-packages
``peerbot.dispatcher`` (Slack events to Conversations), ``peerbot.operator`` (Conversations to Jobs) and
``peerbot.worker`` (one Job runs one turn of Claude on the user's repository).
"""

__version__ = "0.1.0"
