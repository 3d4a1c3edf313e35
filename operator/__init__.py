"""The operator (``peerbot.operator``): kopf reconciles each Conversation into worker Jobs."""
