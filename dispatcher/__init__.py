"""The dispatcher (``peerbot.dispatcher``): Slack events in, Conversations out. It never runs Claude."""
