"""The worker (``peerbot.worker``): one Job runs one turn of Claude on the user's repository.

Where things are (``docs/worker.md`` tells the whole story):

- :mod:`.main`: ``peerbot worker``: settings, pointers, run the turn, write the result, exit code.
- :mod:`.turn`: one turn from the first status edit to the result: restore, read, check out, run, deliver,
  pause or fail.
- :mod:`.agent`: the loop of model steps and tool calls, with checkpoints, the deadline and compaction.
- :mod:`.model`: Claude (streaming, prompt caching, retries, circuit breaker); :mod:`.pricing`: cost.
- :mod:`.tools`: the bash and text editor tools; :mod:`.repository`: GitHub and git.
- :mod:`.checkpoint`: saving every step; :mod:`.history`: the session as the API wants it (pure).
- :mod:`.slack_io`, :mod:`.progress`, :mod:`.inbox`: reading the thread, status and reactions, the prompt.
- :mod:`.pointers`, :mod:`.timing`, :mod:`.prompts`, :mod:`.redaction`, :mod:`.errors`: the small pieces.
"""
