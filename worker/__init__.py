"""The worker (``peerbot.worker``): one Job runs one turn of Claude on the user's repository."""
