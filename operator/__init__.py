"""The operator (``peerbot.operator``): kopf reconciles each Conversation into worker Jobs.

Importing this package registers the kopf handlers, as ``kopf run -m peerbot.operator`` expects; the
pure parts (Job building, planning) live in modules that import nothing from kopf's handler registry.
"""

from peerbot.operator import handlers as handlers
