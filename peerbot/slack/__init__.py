"""Slack message building, split by concern; import the public API from :mod:`peerbot.slack_messages`.

- :mod:`peerbot.slack.limits`: Slack's limits measured the way Slack measures them, ``check_message`` and
  ``plain_text_fallback``.
- :mod:`peerbot.slack.mrkdwn`: Markdown (as Claude writes it) to mrkdwn section, header and divider blocks,
  split at paragraph, line, word and finally character boundaries.
- :mod:`peerbot.slack.builders`: whole messages: the answer (split over several messages, with a cap and
  the overflow handed back), the status message, the footer, paused, error and help messages.
"""
