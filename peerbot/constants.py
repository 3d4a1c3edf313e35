"""Every constant Peerbot relies on, each with the reason it has its value.

Limits that belong to someone else (Slack, Kubernetes) are quoted from their documentation; our own
defaults say why they were chosen.
"""

from typing import Final

# --- Kubernetes -----------------------------------------------------------------------------------------

API_GROUP: Final = "peerbot.ai"
API_VERSION: Final = "v1"
CONVERSATION_KIND: Final = "Conversation"
CONVERSATION_PLURAL: Final = "conversations"

#: A label value and a DNS-1123 label are both at most 63 characters.
KUBERNETES_NAME_LIMIT: Final = 63
#: Conversation names leave room for a per-turn suffix ("-t" and up to nine digits) so that the Job name,
#: which the Job controller also copies into the ``job-name`` label of its pods, stays a valid label value.
CONVERSATION_NAME_LIMIT: Final = 52

LABEL_PREFIX: Final = "peerbot.ai"
LABEL_TEAM: Final = f"{LABEL_PREFIX}/team"
LABEL_CHANNEL: Final = f"{LABEL_PREFIX}/channel"
LABEL_USER: Final = f"{LABEL_PREFIX}/user"
LABEL_CONVERSATION: Final = f"{LABEL_PREFIX}/conversation"
LABEL_TURN: Final = f"{LABEL_PREFIX}/turn"

# --- Slack ----------------------------------------------------------------------------------------------

#: Slack retries an event that is not acknowledged within 3 seconds; we aim for well under one second.
SLACK_ACK_DEADLINE_SECONDS: Final = 3.0
#: https://api.slack.com/reference/block-kit/blocks: a message holds at most 50 blocks.
SLACK_MAX_BLOCKS: Final = 50
#: The text of a section block (and of each of its fields) is at most 3,000 characters.
SLACK_MAX_SECTION_TEXT: Final = 3000
#: A header block's text is at most 150 characters.
SLACK_MAX_HEADER_TEXT: Final = 150
#: A context block holds at most 10 elements.
SLACK_MAX_CONTEXT_ELEMENTS: Final = 10
#: chat.postMessage truncates ``text`` after 40,000 characters and rejects longer ones with msg_too_long.
SLACK_MAX_MESSAGE_TEXT: Final = 40000
#: A button's ``value`` is at most 2,000 characters; its ``action_id`` and its label text at most 255/75.
SLACK_MAX_BUTTON_VALUE: Final = 2000
SLACK_MAX_ACTION_ID: Final = 255
SLACK_MAX_BUTTON_TEXT: Final = 75
#: An actions block holds at most 25 elements.
SLACK_MAX_ACTION_ELEMENTS: Final = 25
#: chat.update is a Tier 3 method (about 50 a minute); one edit a second per thread stays well inside it.
SLACK_STATUS_EDIT_INTERVAL_SECONDS: Final = 1.0
#: Signed requests older than this are refused (Slack's own guidance: five minutes).
SLACK_SIGNATURE_MAX_AGE_SECONDS: Final = 300

# --- Sessions -------------------------------------------------------------------------------------------

#: Bumped when the stored session format changes incompatibly; every stored object carries it.
SESSION_SCHEMA_VERSION: Final = 1

# --- Defaults from the deployment guide -----------------------------------------------------------------

DEFAULT_TRIGGER_PHRASE: Final = "@peerbotai"
DEFAULT_GITHUB_ORGANIZATION: Final = "peerbot-community"
DEFAULT_GCS_BUCKET_NAME: Final = "peerbot-conversations-prod"
DEFAULT_SESSION_TIMEOUT_MINUTES: Final = 5
DEFAULT_WORKER_CPU: Final = "2000m"
DEFAULT_WORKER_MEMORY: Final = "4Gi"
DEFAULT_RESULT_FILE: Final = "/dev/termination-log"
DEFAULT_MODEL: Final = "claude-sonnet-4-6"
#: A cheaper model writes compaction summaries: matching the model to the task, as the playbooks advise.
DEFAULT_SUMMARY_MODEL: Final = "claude-haiku-4-5"
DEFAULT_PORT: Final = 3000
DEFAULT_OPERATOR_PORT: Final = 8080
#: Requests per user per minute before the friendly "slow down" reply (the source documents' figure).
DEFAULT_RATE_LIMIT_PER_MINUTE: Final = 10
#: Token budget per session before older turns are compacted (the source documents' figure).
DEFAULT_SESSION_TOKEN_BUDGET: Final = 100_000

# --- Operator -------------------------------------------------------------------------------------------

#: Active Conversations are re-planned this often even without events: a safety net for a missed watch
#: event, and what moves the capacity queue along. Events do the real work; this is only the floor.
RECONCILE_INTERVAL_SECONDS: Final = 15.0
#: Idle Conversations are re-planned this often, so the retention applies without any event.
IDLE_SWEEP_INTERVAL_SECONDS: Final = 3600.0
#: kopf's own bookkeeping (handler progress, last-handled spec) goes into annotations with this prefix,
#: so the status stays ours.
KOPF_ANNOTATION_PREFIX: Final = "peerbot.ai"
